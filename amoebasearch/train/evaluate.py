"""Response perplexity over instruction pairs: the quality number of a supernet's shapes on data
shaped like its training data (`train` benchmarks, `find --metric instruct`, the demo's table)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from amoebasearch.data import IGNORE_INDEX
from amoebasearch.shape import Shape
from amoebasearch.train.instruct import Tokenised, collate
from amoebasearch.train.smol import SMoLModel


@torch.no_grad()
def response_perplexity(
    logits_fn: Callable[[Shape, torch.Tensor], torch.Tensor],
    shape: Shape,
    data: list[Tokenised],
    batch: int = 8,
    pad_id: int = 0,
    device: torch.device | str = "cpu",
) -> float:
    """exp(mean next-token cross-entropy over labelled tokens), token-weighted across batches.

    Rows are right-padded, so a causal model's logits at real positions never see the padding and
    no attention mask is needed; padding carries no label.
    """
    total, count = 0.0, 0
    for first in range(0, len(data), batch):
        rows = collate(data[first : first + batch], pad_id)
        logits = logits_fn(shape, rows["input_ids"].to(device))[:, :-1].float()
        labels = rows["labels"][:, 1:].to(device)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += float(loss)
        count += int((labels != IGNORE_INDEX).sum())
    return math.exp(total / max(count, 1))


def perplexity(model: SMoLModel, shape: Shape, data: list[Tokenised], batch: int = 8, pad_id: int = 0) -> float:
    """`response_perplexity` of a SMoL model's shape, in eval mode (no gate noise, no dropout)."""
    was_training = model.training
    model.eval()
    try:
        return response_perplexity(model, shape, data, batch, pad_id, next(model.parameters()).device)
    finally:
        model.train(was_training)
