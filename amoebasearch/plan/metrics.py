"""Calibration metrics a depth search minimises: perplexity (default) or KL to the full model.

A metric scores logits row by row, so the layer runner can batch several candidate subnets in
one pass and still credit each row to its candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
import torch.nn.functional as F


class Metric(Protocol):
    name: str

    def row_losses(self, logits: torch.Tensor, chunk_index: torch.Tensor) -> torch.Tensor:
        """Per-row summed loss over the row's scored tokens; logits [b, S, V], chunk_index [b]."""

    def tokens_per_row(self) -> int: ...

    def finish(self, mean_loss: float) -> float:
        """Turn the mean per-token loss into the reported value (lower is better)."""


class Perplexity:
    """exp(mean next-token negative log-likelihood) over the calibration chunks."""

    name = "perplexity"

    def __init__(self, chunks: torch.Tensor) -> None:
        self.targets = chunks[:, 1:]

    def row_losses(self, logits: torch.Tensor, chunk_index: torch.Tensor) -> torch.Tensor:
        targets = self.targets[chunk_index]
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none")
        return nll.view(targets.shape).sum(dim=1)

    def tokens_per_row(self) -> int:
        return self.targets.shape[1]

    def finish(self, mean_loss: float) -> float:
        return math.exp(mean_loss)


class KLToFull:
    """Mean per-token KL(full model || subnet), in nats. The full model's log-probabilities are kept
    in float16 ([chunks, seq-1, vocab]): 200 MB for 2K tokens of a 49K vocabulary.
    """

    name = "kl"

    def __init__(self, reference_logits: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        parts = {}
        for logits, chunk_index in reference_logits():
            logp = F.log_softmax(logits[:, :-1].float(), dim=-1).to(torch.float16)
            for row, index in enumerate(chunk_index.tolist()):
                parts[index] = logp[row]
        self.reference = torch.stack([parts[i] for i in range(len(parts))])

    def row_losses(self, logits: torch.Tensor, chunk_index: torch.Tensor) -> torch.Tensor:
        ref = self.reference[chunk_index].float()
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
        return (ref.exp() * (ref - logp)).sum(dim=(1, 2))

    def tokens_per_row(self) -> int:
        return self.reference.shape[1]

    def finish(self, mean_loss: float) -> float:
        return mean_loss


METRICS = ("perplexity", "kl")
