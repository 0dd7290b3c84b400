"""Score given subnets on a chunk set (held-out evaluation of plans and baselines).

`SubsetScorer` scores depth-only subnets (a set of removed layers) starting from the cached
full-model state just before the first removed layer, so evaluating many layer sets costs only
their differing suffixes. `shape_metric` scores any `Shape` through the elastic forward.
"""

from __future__ import annotations

import torch
from torch import nn

from amoebasearch.plan.layerwise import LayerRunner
from amoebasearch.quality import Metric, Perplexity


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
