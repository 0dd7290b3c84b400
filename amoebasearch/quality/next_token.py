"""Next-token quality of a shape: the metrics `plan` minimises (perplexity, KL to the full model)
and the held-out measures `train` and `find` report (perplexity of text chunks, response
perplexity of instruction pairs).

A metric scores logits row by row, so the layer runner can batch several candidate subnets in
one pass and still credit each row to its candidate. Both calibration metrics need each
position's ``logsumexp`` over the vocabulary; it is taken over the whole contiguous logits tensor
and then sliced: reducing the sliced (strided) view measured several times slower on the CPU.

``logits_fn(shape, input_ids)`` is all a held-out measure needs: a trained supernet runs its SMoL
forward, a plan-only model the base model's elastic forward (`amoebasearch.elastic.elastic_logits`).
Both also take an optional custom 4D ``attention_mask`` and ``position_ids``, which the
multiple-choice evaluator (`amoebasearch.quality.choice`) uses to score all endings in one row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from amoebasearch.data import IGNORE_INDEX
from amoebasearch.data.instructions import Tokenised, collate
from amoebasearch.elastic import elastic_logits
from amoebasearch.ordering import Ordering
from amoebasearch.shape import Shape

# ---------------------------------------------------------------- calibration metrics (plan)


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


# ---------------------------------------------------------------- held-out measures (train, find)


class LogitsFn(Protocol):
    def __call__(
        self,
        shape: Shape,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


@torch.no_grad()
def logits_metric(
    logits_fn: Callable[[Shape, torch.Tensor], torch.Tensor],
    shape: Shape,
    chunks: torch.Tensor,
    metric: Metric | None = None,
    batch_size: int = 4,
) -> float:
    """The metric (default perplexity) of ``shape`` on ``chunks``, from any ``logits_fn(shape, ids)``:
    the elastic forward of a plan, or a trained supernet's SMoL forward.
    """
    metric = metric if metric is not None else Perplexity(chunks)
    total = 0.0
    for start in range(0, len(chunks), batch_size):
        index = torch.arange(start, min(start + batch_size, len(chunks)))
        total += float(metric.row_losses(logits_fn(shape, chunks[index]), index).sum())
    return metric.finish(total / (len(chunks) * metric.tokens_per_row()))


def shape_metric(
    model: nn.Module, shape: Shape, ordering: Ordering, chunks: torch.Tensor, metric: Metric | None = None, batch_size=4
) -> float:
    """The metric of ``shape`` under ``ordering`` on ``chunks``, via the elastic forward."""
    return logits_metric(elastic_logits(model, ordering), shape, chunks, metric, batch_size)


class HeldOutPerplexity:
    """exp(mean next-token NLL) of a shape over fixed held-out chunks ([n, seq_len] token ids)."""

    def __init__(self, logits_fn: LogitsFn, chunks: torch.Tensor, batch: int = 4) -> None:
        self.logits_fn = logits_fn
        self.chunks = chunks
        self.batch = batch

    def __call__(self, shape: Shape) -> float:
        return logits_metric(self.logits_fn, shape, self.chunks, batch_size=self.batch)


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


def model_perplexity(model: nn.Module, shape: Shape, data: list[Tokenised], batch: int = 8, pad_id: int = 0) -> float:
    """`response_perplexity` of a model's shape (e.g. a SMoL supernet), in eval mode (no gate noise,
    no dropout), on the device its parameters are on."""
    was_training = model.training
    model.eval()
    try:
        return response_perplexity(model, shape, data, batch, pad_id, next(model.parameters()).device)
    finally:
        model.train(was_training)


class InstructionPerplexity:
    """exp(mean NLL of the response tokens) of a shape over fixed instruction pairs, each prompt in
    the chat template the model is served with (`amoebasearch.data.prompt_ids`)."""

    def __init__(self, logits_fn: LogitsFn, pairs: list[Tokenised], pad_id: int, batch: int = 8) -> None:
        self.logits_fn = logits_fn
        self.pairs = pairs
        self.pad_id = pad_id
        self.batch = batch

    def __call__(self, shape: Shape) -> float:
        return response_perplexity(self.logits_fn, shape, self.pairs, self.batch, self.pad_id)
