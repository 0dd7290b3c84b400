"""Text to token ids: one text, a stream of documents, fixed-length chunks, and the padding id."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch


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
