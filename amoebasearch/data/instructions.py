"""Instruction data: Alpaca-style records (``instruction`` / optional ``input`` / ``output``) become
`InstructionExample`s, a prompt built from a template (or the tokenizer's chat template) and the
response span that fine-tuning learns; tokenised, they are `Tokenised` sequences that `collate`
pads into batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from amoebasearch.data.records import check_nonempty, load_records
from amoebasearch.data.tokens import encode_text
from amoebasearch.errors import UsageError

ALPACA_KEYS = ("instruction", "output")

# The Stanford Alpaca prompt templates (with and without an input field).
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_TEMPLATE_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

IGNORE_INDEX = -100  # label value that torch's cross_entropy skips (prompt tokens, padding)


@dataclass(frozen=True)
class InstructionExample:
    """One instruction-tuning record: the model reads ``prompt`` and learns to produce ``response``.

    ``message`` is the user's turn itself (instruction, then any input); tokenizers with a chat
    template encode that through the template instead of ``prompt`` (`prompt_ids`).
    """

    prompt: str
    response: str
    message: str | None = None


def is_alpaca(record: Any) -> bool:
    return isinstance(record, dict) and all(key in record for key in ALPACA_KEYS)


def alpaca_example(record: dict[str, Any], template: str = ALPACA_TEMPLATE, template_no_input: str | None = None):
    """The prompt/response pair of one Alpaca record; records without ``input`` use the short template."""
    template_no_input = template_no_input if template_no_input is not None else ALPACA_TEMPLATE_NO_INPUT
    extra = str(record.get("input") or "").strip()
    chosen = template if extra else template_no_input
    instruction = str(record["instruction"]).strip()
    prompt = chosen.format(instruction=instruction, input=extra)
    message = f"{instruction}\n\n{extra}" if extra else instruction
    return InstructionExample(prompt=prompt, response=str(record["output"]).strip(), message=message)


def read_instructions(
    path: str | Path, template: str = ALPACA_TEMPLATE, template_no_input: str | None = None
) -> list[InstructionExample]:
    """Alpaca-style records (JSON list or JSONL with instruction / optional input / output)."""
    path = Path(path)
    check_nonempty(path)
    if path.suffix not in (".json", ".jsonl"):
        raise UsageError(f"instruction data {path} must be a .json or .jsonl file of Alpaca records")
    records = load_records(path)
    for i, record in enumerate(records):
        if not is_alpaca(record):
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise UsageError(
                f"{path} record {i} has keys {keys}: an Alpaca record needs keys 'instruction' and 'output' "
                "(and optional 'input')"
            )
    if not records:
        raise UsageError(f"instruction data {path} holds no records")
    return [alpaca_example(record, template, template_no_input) for record in records]


def prompt_ids(example: InstructionExample, tokenizer: Any) -> list[int]:
    """The prompt as the model is served: the user's turn through the tokenizer's own chat template,
    up to the assistant's header, where it has one (an instruct model fine-tuned on the Alpaca text
    would learn a format its users never send); the Alpaca prompt otherwise."""
    if example.message is not None and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": example.message}]
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(encoded["input_ids"])
    return encode_text(tokenizer, example.prompt)


def encode_instruction(example: InstructionExample, tokenizer: Any, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels for one example: labels are ``IGNORE_INDEX`` over the prompt, so only the
    response span (plus EOS) is learned. Truncated to ``max_len`` from the right.
    """
    prompt = prompt_ids(example, tokenizer)
    response = encode_text(tokenizer, example.response)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        response = response + [eos]
    ids = (prompt + response)[:max_len]
    labels = ([IGNORE_INDEX] * len(prompt) + response)[:max_len]
    return ids, labels


@dataclass(frozen=True)
class Tokenised:
    """One training sequence: token ids and labels (IGNORE_INDEX where no loss is taken)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def collate(batch: list[Tokenised], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence of the batch; padding is masked out and carries no loss."""
    width = max(len(item.input_ids) for item in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
