"""`Ordering`: which layers, heads and FFN channels a shape keeps.

Stage 1 (``plan``) fills an ordering from calibration data; before that, the identity ordering
keeps the first layers, heads and channels. Orderings are *nested* by construction: a width keeps
a prefix of the importance ranking, so a narrower subnet is always a subset of a wider one.
Depth is different: the DP picks a layer set per depth, which need not be nested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from amoebasearch.dims import ModelDims
from amoebasearch.errors import UsageError


@dataclass(frozen=True)
class Ordering:
    """Per-depth layer sets and per-layer importance rankings of heads (within each KV group)
    and FFN channels. Rankings are most-important-first; kept units are re-sorted by index so
    exported weights keep the original relative order.
    """

    layer_sets: dict[int, tuple[int, ...]]
    head_order: tuple[tuple[tuple[int, ...], ...], ...]  # [layer][kv_group] -> local head ids
    ffn_order: tuple[tuple[int, ...], ...]  # [layer] -> channel ids

    @classmethod
    def identity(cls, dims: ModelDims) -> Ordering:
        group = tuple(range(dims.heads_per_group))
        return cls(
            layer_sets={d: tuple(range(d)) for d in range(1, dims.num_layers + 1)},
            head_order=tuple(tuple(group for _ in range(dims.num_kv_heads)) for _ in range(dims.num_layers)),
            ffn_order=tuple(tuple(range(dims.ffn)) for _ in range(dims.num_layers)),
        )

    def has_depth(self, depth: int) -> bool:
        return depth in self.layer_sets

    def layers_for_depth(self, depth: int) -> tuple[int, ...]:
        if depth not in self.layer_sets:
            known = sorted(self.layer_sets)
            covered = f"it covers depths {known[0]}..{known[-1]}" if known else "it has none"
            raise UsageError(f"the plan has no layer set for depth {depth}: {covered}")
        return self.layer_sets[depth]

    def query_heads(self, layer: int, heads_per_group: int) -> list[int]:
        """Global query-head indices kept in ``layer``, grouped by KV group, ascending."""
        per_group = len(self.head_order[layer][0])
        kept = []
        for group, ranking in enumerate(self.head_order[layer]):
            kept.extend(group * per_group + local for local in sorted(ranking[:heads_per_group]))
        return kept

    def ffn_channels(self, layer: int, ffn: int) -> list[int]:
        """FFN channel indices kept in ``layer``, ascending."""
        return sorted(self.ffn_order[layer][:ffn])

    def query_rows(self, layer: int, heads_per_group: int, head_dim: int) -> torch.Tensor:
        """Row indices of q_proj (= column indices of o_proj) for the kept query heads."""
        heads = torch.tensor(self.query_heads(layer, heads_per_group), dtype=torch.long)
        return (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)

    def validate(self, dims: ModelDims) -> Ordering:
        """Check the ordering belongs to a model of these dimensions (every ranking a permutation)."""
        if len(self.head_order) != dims.num_layers or len(self.ffn_order) != dims.num_layers:
            raise UsageError(
                f"the plan ranks {len(self.ffn_order)} layers but the model has {dims.num_layers}: "
                "make a plan for this model with `amoebasearch plan`"
            )
        for layer in range(dims.num_layers):
            groups = self.head_order[layer]
            if len(groups) != dims.num_kv_heads or any(sorted(g) != list(range(dims.heads_per_group)) for g in groups):
                raise UsageError(f"the plan's head ranking for layer {layer} does not match the model's heads")
            if sorted(self.ffn_order[layer]) != list(range(dims.ffn)):
                raise UsageError(f"the plan's FFN ranking for layer {layer} is not a permutation of {dims.ffn}")
        if dims.num_layers not in self.layer_sets:  # every plan keeps the full model as its deepest subnet
            raise UsageError(
                f"the plan has no layer set for the full depth {dims.num_layers}: "
                "regenerate it with `amoebasearch plan`"
            )
        for depth, layers in self.layer_sets.items():
            if (
                len(layers) != depth
                or list(layers) != sorted(set(layers))
                or not all(0 <= i < dims.num_layers for i in layers)
            ):
                raise UsageError(f"the plan's layer set for depth {depth} is invalid: {list(layers)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer_sets": {str(d): list(layers) for d, layers in sorted(self.layer_sets.items())},
            "head_order": [[list(g) for g in layer] for layer in self.head_order],
            "ffn_order": [list(layer) for layer in self.ffn_order],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Ordering:
        try:
            return cls(
                layer_sets={int(d): tuple(int(i) for i in layers) for d, layers in data["layer_sets"].items()},
                head_order=tuple(tuple(tuple(int(h) for h in g) for g in layer) for layer in data["head_order"]),
                ffn_order=tuple(tuple(int(c) for c in layer) for layer in data["ffn_order"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UsageError(
                f"malformed ordering in plan ({type(err).__name__}: {err}): regenerate it with `amoebasearch plan`"
            ) from None
