"""Score given subnets on a chunk set (held-out evaluation of plans and baselines).

`SubsetScorer` scores depth-only subnets (a set of removed layers) starting from the cached
full-model state just before the first removed layer, so evaluating many layer sets costs only
their differing suffixes. `shape_metric` scores any `Shape` through the elastic forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from amoebasearch.elastic import elastic_logits
from amoebasearch.ordering import Ordering
from amoebasearch.plan.layerwise import LayerRunner
from amoebasearch.plan.metrics import Metric, Perplexity
from amoebasearch.shape import Shape


class SubsetScorer:
    """Metric of the network without ``removed`` layers; memoised per removed set."""

    def __init__(self, model: nn.Module, chunks: torch.Tensor, metric: Metric | None = None, batch_size: int = 4):
        self.runner = LayerRunner(model, chunks, batch_size)
        self.metric = metric if metric is not None else Perplexity(chunks)
        state = self.runner.initial_state()
        self.full_states = [state]  # full_states[r] = residual stream after the first r layers
        for layer in range(self.runner.num_layers):
            state = self.runner.extend([state], layer)[0]
            self.full_states.append(state)
        self.cache: dict[frozenset[int], torch.Tensor] = {}

    @torch.no_grad()
    def chunk_losses(self, removed: tuple[int, ...] | frozenset[int]) -> torch.Tensor:
        """Mean per-token loss of each chunk (before the metric's `finish`), float64 [chunks]."""
        removed = frozenset(removed)
        if removed not in self.cache:
            first = min(removed, default=self.runner.num_layers)
            state = self.full_states[first]
            kept = [i for i in range(first, self.runner.num_layers) if i not in removed]
            losses = []
            for rows in self.runner._batches(len(state)):
                features, logits = self.runner.head(self.runner.run_layers(state[rows], kept))
                index = torch.arange(rows.start, rows.stop)
                losses.append(self.metric.row_losses(logits, index, features).double())
            self.cache[removed] = torch.cat(losses) / self.metric.tokens_per_row()
        return self.cache[removed]

    def __call__(self, removed: tuple[int, ...] | frozenset[int]) -> float:
        """The metric of the network without ``removed`` over all chunks (e.g. perplexity)."""
        return self.metric.finish(float(self.chunk_losses(removed).mean()))


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
