"""Calibration metrics a depth search minimises: KL to the full model (default) or perplexity.

KL is the default because it compares the subnet's whole next-token distribution with the full
model's at every position, not just the probability of the one token the text happens to
continue with, so a small calibration set ranks removals more like unseen text does
(benchmarks/depth_metric_diagnosis.py). Perplexity is what the Shortened-LLaMA baseline uses.

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
    """Mean per-token KL(full model || subnet), in nats.

    The full model's next-token probabilities ``p`` are computed once and kept in float16
    ([chunks, seq-1, vocab]: 200 MB for 2K tokens of a 49K vocabulary), with each row's
    ``sum p log p``. A subnet with logits ``z`` then costs one pass over the vocabulary:
    KL = sum p log p - (sum p z - logsumexp(z) sum p), with no log-softmax of the subnet.
    """

    name = "kl"

    def __init__(self, reference_logits: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        probs, neg_entropy = {}, {}
        for logits, chunk_index in reference_logits():
            logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
            p = logp.exp().to(torch.float16)
            # sum p log p with the stored (rounded) p, so that KL(full || full) is 0 up to float error
            rows = (p.float() * logp).sum(dim=(1, 2), dtype=torch.float64)
            for row, index in enumerate(chunk_index.tolist()):
                probs[index], neg_entropy[index] = p[row], rows[row]
        self.probs = torch.stack([probs[i] for i in range(len(probs))])
        self.neg_entropy = torch.stack([neg_entropy[i] for i in range(len(probs))])

    def row_losses(self, logits: torch.Tensor, chunk_index: torch.Tensor) -> torch.Tensor:
        z = logits[:, :-1].float()
        p = self.probs[chunk_index].float()
        cross = (p * z).sum(-1) - torch.logsumexp(z, dim=-1) * p.sum(-1)  # sum p log q, per token
        return (self.neg_entropy[chunk_index] - cross.sum(-1, dtype=torch.float64)).float()

    def tokens_per_row(self) -> int:
        return self.probs.shape[1]

    def finish(self, mean_loss: float) -> float:
        return mean_loss


METRICS = ("kl", "perplexity")
DEFAULT_METRIC = "kl"
DEFAULT_CALIBRATION_TOKENS = 4096  # where KL picked the validation-best single layer in every draw
