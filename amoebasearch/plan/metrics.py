"""Calibration metrics a depth search minimises: KL to the full model (default) or perplexity.

KL is the default because it compares the subnet's whole next-token distribution with the full
model's at every position, not just the probability of the one token the text happens to
continue with, so a small calibration set ranks removals more like unseen text does
(benchmarks/depth_metric_diagnosis.py). Perplexity is what the Shortened-LLaMA baseline uses.

A metric scores logits row by row, so the layer runner can batch several candidate subnets in
one pass and still credit each row to its candidate. Both metrics need each position's
``logsumexp`` over the vocabulary; it is taken over the whole contiguous logits tensor and then
sliced: reducing the sliced (strided) view measured several times slower on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
import torch.nn.functional as F


class Metric(Protocol):
    name: str

    def row_losses(
        self, logits: torch.Tensor, chunk_index: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-row summed loss over the row's scored tokens; logits [b, S, V], chunk_index [b].

        ``features`` [b, S, d] are the final-normed hidden states the LM head maps to ``logits``,
        where the caller has them; `KLToFull` needs them.
        """

    def tokens_per_row(self) -> int: ...

    def finish(self, mean_loss: float) -> float:
        """Turn the mean per-token loss into the reported value (lower is better)."""


class Perplexity:
    """exp(mean next-token negative log-likelihood) over the calibration chunks."""

    name = "perplexity"

    def __init__(self, chunks: torch.Tensor) -> None:
        self.targets = chunks[:, 1:]

    def row_losses(
        self, logits: torch.Tensor, chunk_index: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits = logits.float()
        targets = self.targets[chunk_index].unsqueeze(-1)
        nll = next_token_logsumexp(logits) - logits[:, :-1].gather(-1, targets).squeeze(-1)
        return nll.sum(dim=1)

    def tokens_per_row(self) -> int:
        return self.targets.shape[1]

    def finish(self, mean_loss: float) -> float:
        return math.exp(mean_loss)


class KLToFull:
    """Mean per-token KL(full model || subnet), in nats.

    With ``p`` the full model's next-token probabilities and ``z = W h + b`` a subnet's logits
    (``W``, ``b`` the LM head, ``h`` the final-normed hidden state), per position
    ``KL = sum p log p - sum p z + logsumexp(z) sum p`` and ``sum p z = (W^T p) . h + p . b``, where
    only ``h`` depends on the subnet. So the reference pass keeps, per position,
    ``sum p log p - p . b``, ``sum p`` and ``u = W^T p`` (a
    hidden-size vector: 9 MB for 4K tokens instead of 400 MB of probabilities), and a subnet then
    costs its logsumexp plus one dot product per position: no pass of ``p`` over the vocabulary.
    """

    name = "kl"

    def __init__(
        self, reference_logits: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]], head: torch.nn.Linear
    ) -> None:
        projected, mass, neg_entropy = {}, {}, {}
        weight = head.weight.detach().float()
        bias = None if head.bias is None else head.bias.detach().float()
        for logits, chunk_index in reference_logits():
            logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
            p = logp.exp()
            rows_u = p @ weight  # [b, S-1, d]
            rows_mass = p.sum(-1, dtype=torch.float64)
            rows_neg_entropy = (p * logp).sum(dim=(1, 2), dtype=torch.float64)
            if bias is not None:  # the bias part of sum p z does not depend on the subnet
                rows_neg_entropy = rows_neg_entropy - (p @ bias).sum(-1, dtype=torch.float64)
            for row, index in enumerate(chunk_index.tolist()):
                projected[index], mass[index], neg_entropy[index] = rows_u[row], rows_mass[row], rows_neg_entropy[row]
        order = range(len(projected))
        self.projected = torch.stack([projected[i] for i in order])
        self.mass = torch.stack([mass[i] for i in order])
        self.neg_entropy = torch.stack([neg_entropy[i] for i in order])

    def row_losses(
        self, logits: torch.Tensor, chunk_index: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        if features is None:
            raise ValueError("KLToFull needs the final-normed hidden states the logits came from (features=)")
        cross_pz = (self.projected[chunk_index] * features[:, :-1].float()).sum(-1, dtype=torch.float64)
        lse = next_token_logsumexp(logits.float()).double()
        cross = cross_pz - lse * self.mass[chunk_index]  # sum p log q, per position
        return (self.neg_entropy[chunk_index] - cross.sum(-1)).float()

    def tokens_per_row(self) -> int:
        return self.projected.shape[1]

    def finish(self, mean_loss: float) -> float:
        return mean_loss


def next_token_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over the vocabulary at every position that predicts a next token: [b, S-1]."""
    return torch.logsumexp(logits, dim=-1)[:, :-1]


METRICS = ("kl", "perplexity")
DEFAULT_METRIC = "kl"
DEFAULT_CALIBRATION_TOKENS = 2048  # with --split-ends, lowest held-out perplexity at all 15 depths (depth_selection.py)
