"""Run a full model at any `Shape` in place: masked-forward for evaluation and training.

No weights are copied. Inside ``use_shape(model, shape)`` the model's decoder stack is the kept
blocks only (a skipped block passes the residual stream through untouched), and each kept
block's q/o and gate/up/down projections read only the rows/columns of the kept heads and FFN
channels. Everything else is the family's own Hugging Face forward, so ``model(...)``,
``model.generate(...)`` and KV caches work unchanged. ``export.extract`` slices the same indices
physically; ``width_indices`` is the one place that decides them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from amoebasearch.models import decoder_layers, projections
from amoebasearch.ordering import Ordering
from amoebasearch.shape import ModelDims, Shape

# (out_index, in_index) per projection role; None means "all of that dimension".
Slices = dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]


def width_indices(layer: int, shape: Shape, ordering: Ordering, dims: ModelDims) -> Slices:
    """Which weight rows/columns of ``layer``'s projections the shape keeps.

    Query heads shrink inside every KV group (k/v keep all groups, so GQA stays valid);
    FFN channels shrink gate/up rows and down columns together.
    """
    slices: Slices = {}
    if shape.heads < dims.num_heads:
        rows = ordering.query_rows(layer, shape.heads_per_group(dims), dims.head_dim)
        slices["q"] = (rows, None)
        slices["o"] = (None, rows)
    if shape.ffn < dims.ffn:
        channels = torch.tensor(ordering.ffn_channels(layer, shape.ffn), dtype=torch.long)
        slices["gate"] = (channels, None)
        slices["up"] = (channels, None)
        slices["down"] = (None, channels)
    return slices


def slice_linear_weight(linear: nn.Linear, out_index: torch.Tensor | None, in_index: torch.Tensor | None):
    """The (weight, bias) of ``linear`` restricted to the given output rows and input columns."""
    weight, bias = linear.weight, linear.bias
    if out_index is not None:
        out_index = out_index.to(weight.device)
        weight = weight.index_select(0, out_index)
        bias = bias.index_select(0, out_index) if bias is not None else None
    if in_index is not None:
        weight = weight.index_select(1, in_index.to(weight.device))
    return weight, bias


def _sliced_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight, bias = slice_linear_weight(self, *self.amoeba_slice)
    return F.linear(x, weight, bias)


def lora_parts(linear: nn.Module, out_index: torch.Tensor | None, in_index: torch.Tensor | None):
    """A peft LoRA layer's plain linears with the slice each takes (the base both, every adapter's
    A its input columns, B its output rows); empty for any other module."""
    if not hasattr(linear, "base_layer") or not isinstance(getattr(linear, "lora_A", None), nn.ModuleDict):
        return []
    parts = [(linear.base_layer, out_index, in_index)]
    for name in linear.lora_A:
        parts += [(linear.lora_A[name], None, in_index), (linear.lora_B[name], out_index, None)]
    return parts


def set_linear_slice(linear: nn.Module, out_index: torch.Tensor | None, in_index: torch.Tensor | None) -> None:
    """Make ``linear`` compute only the given rows/columns until `clear_linear_slice`.

    Adapters (SMoL) read ``linear.amoeba_slice`` to slice their own matrices consistently; a peft
    LoRA layer is sliced through its parts (`lora_parts`), so its own forward stays peft's.
    """
    linear.amoeba_slice = (out_index, in_index)
    for part, rows, columns in lora_parts(linear, out_index, in_index):
        set_linear_slice(part, rows, columns)
    if not isinstance(linear, nn.Linear) or type(linear).forward is not nn.Linear.forward:
        return  # a wrapper layer reads amoeba_slice itself
    linear.forward = MethodType(_sliced_forward, linear)


def clear_linear_slice(linear: nn.Module) -> None:
    for part, _, _ in lora_parts(linear, None, None):
        clear_linear_slice(part)
    linear.__dict__.pop("forward", None)
    linear.__dict__.pop("amoeba_slice", None)


def active_shape(model: nn.Module) -> Shape | None:
    """The shape set by an enclosing `use_shape`, or None when the full model runs."""
    return getattr(model, "amoeba_shape", None)


@contextlib.contextmanager
def use_shape(model: nn.Module, shape: Shape, ordering: Ordering | None = None) -> Iterator[nn.Module]:
    """Temporarily turn ``model`` into the subnet ``shape`` (no weight copies); restores on exit."""
    config = model.config
    dims = ModelDims.from_config(config)
    shape.validate(dims)
    ordering = ordering if ordering is not None else Ordering.identity(dims)
    inner = model.model
    full_layers = decoder_layers(model)
    saved: dict[str, Any] = {
        "num_hidden_layers": config.num_hidden_layers,
        "layer_types": getattr(config, "layer_types", None),
    }
    kept = [full_layers[i] for i in shape.layers]
    touched: list[nn.Module] = []
    try:
        inner.layers = nn.ModuleList(kept)
        config.num_hidden_layers = shape.depth
        if saved["layer_types"] is not None:
            config.layer_types = [saved["layer_types"][i] for i in shape.layers]
        for position, (index, block) in enumerate(zip(shape.layers, kept, strict=True)):
            # The KV cache is indexed by position in the running stack, as in the exported model.
            block.self_attn.layer_idx = position
            block.self_attn.num_key_value_groups = shape.heads_per_group(dims)
            linears = projections(block)
            for role, (out_index, in_index) in width_indices(index, shape, ordering, dims).items():
                set_linear_slice(linears[role], out_index, in_index)
                touched.append(linears[role])
        model.amoeba_shape = shape
        yield model
    finally:
        for linear in touched:
            clear_linear_slice(linear)
        for index, block in enumerate(full_layers):
            block.self_attn.layer_idx = index
            block.self_attn.num_key_value_groups = dims.heads_per_group
        inner.layers = full_layers
        config.num_hidden_layers = saved["num_hidden_layers"]
        if saved["layer_types"] is not None:
            config.layer_types = saved["layer_types"]
        model.__dict__.pop("amoeba_shape", None)


def model_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of one cache-free forward. A 4D additive ``attention_mask`` (a custom mask, used by
    transformers as given) is cast to the model's dtype, as the attention kernels require.
    """
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.is_floating_point():
        attention_mask = attention_mask.to(next(model.parameters()).dtype)
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).logits


def elastic_logits(model: nn.Module, ordering: Ordering | None = None):
    """``logits(shape, input_ids, attention_mask=None, position_ids=None)`` of ``model`` run in place
    as ``shape`` (no cache, no copies).
    """

    def logits(shape: Shape, input_ids: torch.Tensor, attention_mask=None, position_ids=None) -> torch.Tensor:
        with use_shape(model, shape, ordering):
            return model_logits(model, input_ids, attention_mask, position_ids)

    return logits
