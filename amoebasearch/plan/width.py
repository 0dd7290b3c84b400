"""Width shrinking: rank each layer's query heads (within every KV group) and FFN channels.

A width keeps a prefix of the ranking, so narrower shapes are nested in wider ones by
construction. Three scorers share one interface (per-layer score tensors, higher = keep):

- ``importance`` (ours, activation-aware): the Frobenius norm of a unit's contribution to the
  block output on calibration data. For FFN channel j that is exactly ‖a_j‖·‖W_down[:, j]‖
  (a_j = the channel's activation over all tokens, a rank-one outer product); for a query head
  it is ‖o_h W_o[:, h]ᵀ‖ computed from the head's attention output o_h.
- ``magnitude``: the L1 norm of the weights that belong to the unit (Li et al., 2017).
- ``random``: a seeded permutation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from amoebasearch.errors import UsageError
from amoebasearch.models import decoder_layers, projections
from amoebasearch.shape import ModelDims

WIDTH_METHODS = ("importance", "magnitude", "random")


@dataclass
class WidthScores:
    """Per-layer unit scores: ``heads[layer]`` has one entry per query head, ``ffn[layer]`` per channel."""

    method: str
    heads: list[torch.Tensor]
    ffn: list[torch.Tensor]

    def head_order(self, dims: ModelDims) -> tuple[tuple[tuple[int, ...], ...], ...]:
        """[layer][kv_group] -> local head ids, most important first (stable on ties)."""
        per_group = dims.heads_per_group
        return tuple(
            tuple(_ranking(scores.view(dims.num_kv_heads, per_group)[group]) for group in range(dims.num_kv_heads))
            for scores in self.heads
        )

    def ffn_order(self) -> tuple[tuple[int, ...], ...]:
        return tuple(_ranking(scores) for scores in self.ffn)

    def group_scores(self, dims: ModelDims) -> list[list[float]]:
        """Whole-KV-group importance (sum of its heads), reported for inspection: shapes keep every
        KV group, because k/v projections are shared by the group's query heads."""
        return [[float(s) for s in scores.view(dims.num_kv_heads, -1).sum(dim=1)] for scores in self.heads]


def _ranking(scores: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.argsort(scores, descending=True, stable=True))


# ---------------------------------------------------------------- scorers


def ffn_contribution(activation_sq: torch.Tensor, down_weight: torch.Tensor) -> torch.Tensor:
    """‖a_j‖ · ‖W_down[:, j]‖ = Frobenius norm of channel j's rank-one contribution."""
    return activation_sq.sqrt() * down_weight.float().norm(dim=0)


@torch.no_grad()
def importance_scores(model: nn.Module, chunks: torch.Tensor, batch_size: int = 4) -> WidthScores:
    """Activation-aware scores from one full-model pass over ``chunks`` (hooks on o/down inputs)."""
    dims = ModelDims.from_config(model.config)
    layers = decoder_layers(model)
    ffn_sq = [torch.zeros(dims.ffn, dtype=torch.float64) for _ in layers]
    head_sq = [torch.zeros(dims.num_heads, dtype=torch.float64) for _ in layers]
    handles = []
    for index, layer in enumerate(layers):
        linears = projections(layer)
        o_weight = linears["o"].weight.float().view(dims.hidden, dims.num_heads, dims.head_dim)

        def on_down(_module, args, index=index):
            x = args[0].float().flatten(0, -2)
            ffn_sq[index] += x.pow(2).sum(dim=0).double()

        def on_o(_module, args, index=index, o_weight=o_weight):
            x = args[0].float().flatten(0, -2).view(-1, dims.num_heads, dims.head_dim)
            # contribution of head h to the block output: x_h @ W_o[:, h]^T, [tokens, hidden]
            contribution = torch.einsum("thd,ohd->hto", x, o_weight)
            head_sq[index] += contribution.pow(2).sum(dim=(1, 2)).double()

        handles.append(linears["down"].register_forward_pre_hook(on_down))
        handles.append(linears["o"].register_forward_pre_hook(on_o))
    try:
        for start in range(0, len(chunks), batch_size):
            model.model(input_ids=chunks[start : start + batch_size], use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    ffn = [
        ffn_contribution(sq.float(), projections(layer)["down"].weight)
        for sq, layer in zip(ffn_sq, layers, strict=True)
    ]
    heads = [sq.float().sqrt() for sq in head_sq]
    return WidthScores("importance", heads, ffn)


@torch.no_grad()
def magnitude_scores(model: nn.Module) -> WidthScores:
    """L1 weight magnitude of each unit: q rows + o columns per head; gate/up rows + down column per channel."""
    dims = ModelDims.from_config(model.config)
    heads, ffn = [], []
    for layer in decoder_layers(model):
        p = projections(layer)
        q = p["q"].weight.abs().view(dims.num_heads, dims.head_dim, -1).sum(dim=(1, 2))
        o = p["o"].weight.abs().view(-1, dims.num_heads, dims.head_dim).sum(dim=(0, 2))
        heads.append((q + o).float())
        ffn.append(
            (p["gate"].weight.abs().sum(1) + p["up"].weight.abs().sum(1) + p["down"].weight.abs().sum(0)).float()
        )
    return WidthScores("magnitude", heads, ffn)


def random_scores(dims: ModelDims, seed: int = 0) -> WidthScores:
    generator = torch.Generator().manual_seed(seed)
    heads = [torch.rand(dims.num_heads, generator=generator) for _ in range(dims.num_layers)]
    ffn = [torch.rand(dims.ffn, generator=generator) for _ in range(dims.num_layers)]
    return WidthScores("random", heads, ffn)


def select_width(
    model: nn.Module, chunks: torch.Tensor, method: str = "importance", seed: int = 0, batch_size: int = 4
) -> WidthScores:
    """Unit scores by ``method`` (importance, magnitude, random)."""
    if method == "importance":
        return importance_scores(model, chunks, batch_size)
    if method == "magnitude":
        return magnitude_scores(model)
    if method == "random":
        return random_scores(ModelDims.from_config(model.config), seed)
    raise UsageError(f"unknown width method {method!r}: choose one of {', '.join(WIDTH_METHODS)}")
