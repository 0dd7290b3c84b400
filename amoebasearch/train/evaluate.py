"""Held-out perplexity of one shape of a supernet (the quality number train benchmarks and search use)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from amoebasearch.data import IGNORE_INDEX
from amoebasearch.shape import Shape
from amoebasearch.train.instruct import Tokenised, collate
from amoebasearch.train.smol import SMoLModel


@torch.no_grad()
def perplexity(model: SMoLModel, shape: Shape, data: list[Tokenised], batch: int = 8, pad_id: int = 0) -> float:
    """exp(mean next-token cross-entropy over labelled tokens), token-weighted across batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for first in range(0, len(data), batch):
            rows = collate(data[first : first + batch], pad_id)
            rows = {k: v.to(device) for k, v in rows.items()}
            logits = model(shape, rows["input_ids"], rows["attention_mask"])[:, :-1].float()
            labels = rows["labels"][:, 1:]
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            total += float(loss)
            count += int((labels != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return math.exp(total / max(count, 1))
