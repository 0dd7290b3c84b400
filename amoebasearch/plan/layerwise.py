"""Run a decoder stack one block at a time on fixed calibration chunks, keeping hidden states.

Depth search asks the same question many times: "how good is the network whose first ``n``
layers are these, and whose remaining layers are all kept?". Holding the hidden state after the
first ``n`` layers lets each question start at layer ``n`` instead of at the embeddings. A state
is simply the residual stream [chunks, seq, hidden] after some prefix of (kept) blocks.

Blocks are called with the exact keyword arguments the family's own forward passes them
(captured once by pre-hooks on a one-chunk forward), so rotary embeddings, masks and
sliding windows stay the family's business. Captured with batch 1, they broadcast to any batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from amoebasearch.models import decoder_layers
from amoebasearch.quality import Metric


def capture_layer_kwargs(model: nn.Module, chunk: torch.Tensor) -> list[dict[str, Any]]:
    """The keyword arguments each decoder block receives in a normal forward of one chunk."""
    layers = decoder_layers(model)
    captured: list[dict[str, Any]] = [{} for _ in layers]
    handles = []
    for index, layer in enumerate(layers):

        def hook(_module, _args, kwargs, index=index):
            captured[index] = dict(kwargs)

        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model.model(input_ids=chunk.view(1, -1), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


class LayerRunner:
    """Block-by-block execution of ``model`` on ``chunks`` ([n, seq] token ids), in micro-batches
    of ``batch_size`` chunks. Counts the blocks and LM-head passes it runs, so searches can report
    their cost in full-network evaluations.
    """

    def __init__(self, model: nn.Module, chunks: torch.Tensor, batch_size: int = 4) -> None:
        self.model = model
        self.chunks = chunks
        self.batch_size = max(1, batch_size)
        self.layers = decoder_layers(model)
        self.num_layers = len(self.layers)
        self.layer_kwargs = capture_layer_kwargs(model, chunks[0])
        self.block_runs = 0  # chunk-blocks executed
        self.head_runs = 0  # chunk-head passes executed

    def _batches(self, rows: int) -> Iterator[slice]:
        for start in range(0, rows, self.batch_size):
            yield slice(start, min(start + self.batch_size, rows))

    @torch.no_grad()
    def initial_state(self) -> torch.Tensor:
        """The embeddings: the residual stream before any block."""
        embed = self.model.model.embed_tokens
        return torch.cat([embed(self.chunks[rows]) for rows in self._batches(len(self.chunks))])

    @torch.no_grad()
    def run_layers(self, hidden: torch.Tensor, layers: range | list[int]) -> torch.Tensor:
        """Apply blocks ``layers`` in order to a micro-batch of states."""
        for index in layers:
            hidden = self.layers[index](hidden, **self.layer_kwargs[index])
            self.block_runs += hidden.shape[0]
        return hidden

    @torch.no_grad()
    def extend(self, states: list[torch.Tensor], layer: int) -> list[torch.Tensor]:
        """Each state advanced through one more block."""
        return [
            torch.cat([self.run_layers(state[rows], [layer]) for rows in self._batches(len(state))]) for state in states
        ]

    @torch.no_grad()
    def prefix_state(self, kept: list[int]) -> torch.Tensor:
        """The state after running only the blocks ``kept`` (ascending) from the embeddings."""
        state = self.initial_state()
        return torch.cat([self.run_layers(state[rows], kept) for rows in self._batches(len(state))])

    @torch.no_grad()
    def head(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(final-normed hidden states, logits): the features the LM head reads and what it outputs."""
        self.head_runs += hidden.shape[0]
        features = self.model.model.norm(hidden)
        return features, self.model.lm_head(features)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)[1]

    @torch.no_grad()
    def score(self, states: list[torch.Tensor], start: int, metric: Metric) -> list[float]:
        """The metric of each state continued through blocks ``start``..L-1 (all kept).

        All candidates' chunks are stacked and cut into micro-batches together, so a batch can
        hold rows of several candidates; each row's loss is credited back to its candidate.
        """
        if not states:
            return []
        stacked = torch.cat(states)
        count = len(self.chunks)
        owner = torch.arange(len(stacked)) // count
        chunk_index = torch.arange(len(stacked)) % count
        totals = torch.zeros(len(states), dtype=torch.float64)
        for rows in self._batches(len(stacked)):
            hidden = self.run_layers(stacked[rows], range(start, self.num_layers))
            features, logits = self.head(hidden)
            losses = metric.row_losses(logits, chunk_index[rows], features)
            totals.index_add_(0, owner[rows], losses.double())
        denominator = count * metric.tokens_per_row()
        return [metric.finish(float(total) / denominator) for total in totals]

    def full_logits(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(logits, chunk indices) of the full model, micro-batch by micro-batch."""
        state = self.initial_state()
        for rows in self._batches(len(state)):
            hidden = self.run_layers(state[rows], range(self.num_layers))
            yield self.logits(hidden), torch.arange(rows.start, rows.stop)

    def full_evaluations(self) -> float:
        """Work done so far in units of one full-network pass over all chunks (blocks + head)."""
        blocks, heads = self.block_runs / len(self.chunks), self.head_runs / len(self.chunks)
        return (blocks + heads * self.head_cost_in_blocks()) / (self.num_layers + self.head_cost_in_blocks())

    def head_cost_in_blocks(self) -> float:
        """The LM head's FLOPs in units of one block's (large for small models with big vocabularies)."""
        block = sum(p.numel() for p in self.layers[0].parameters())
        return self.model.lm_head.weight.numel() / block
