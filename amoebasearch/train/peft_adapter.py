"""One shape of a trained supernet as a standard peft LoRA adapter on its sliced base model.

A plain-LoRA supernet (``train --no-smol``) already is a peft LoRA; its adapter for a shape is
that LoRA sliced like the base weights.

For a fixed shape the SMoL mixture is a fixed sum: the gate's top-k LoRAs (plus the shared one),
weighted by the gate, ``scale·Σ_j w_j B_j A_j``. Stacking them rank-wise gives one LoRA of rank
``k·r``: ``A = [A_1; …; A_k]`` and ``B = [w_1 B_1 | … | w_k B_k]`` with peft's scaling
``lora_alpha / (k·r)`` equal to SMoL's ``alpha / r``. Sliced with the shape's rows and columns
(exactly as the base weights are), it is an ordinary adapter that
``PeftModel.from_pretrained(sliced_base, adapter_dir)`` loads and `merge_and_unload` folds into
the merged export's weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from amoebasearch import atomic
from amoebasearch.elastic import lora_parts, width_indices
from amoebasearch.export import SHAPE_FILE, check_export_dir, extract
from amoebasearch.models import decoder_layers, projections
from amoebasearch.shape import Shape
from amoebasearch.train.smol import Route, SMoLLinear, SMoLModel

ADAPTER_DIR = "adapter"  # inside an `export --adapter` directory, beside the sliced base model


def collapsed_lora(
    layer: nn.Module, route: Route, out_index: torch.Tensor | None, in_index: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [k·r, in], B [out, k·r]) of ``route``'s LoRAs in ``layer`` (an `SMoLLinear`, or a plain
    LoRA's peft layer: k = 1, weight 1), sliced, gate weights folded into B."""
    if isinstance(layer, SMoLLinear):
        a, b = layer._sliced_loras(route, out_index, in_index)  # (k, r, in), (k, out, r)
    else:
        a, b = layer.lora_A["default"].weight[None], layer.lora_B["default"].weight[None]
        a = a if in_index is None else a.index_select(2, in_index.to(a.device))
        b = b if out_index is None else b.index_select(1, out_index.to(b.device))
    k, rank = a.shape[0], a.shape[1]
    weighted = b * route.weight.to(b.dtype).view(k, 1, 1)
    return a.reshape(k * rank, a.shape[2]), weighted.permute(1, 0, 2).reshape(b.shape[1], k * rank)


@torch.no_grad()
def shape_adapter(smol: SMoLModel, shape: Shape, base: nn.Module | None = None) -> nn.Module:
    """A peft ``PeftModel``: ``shape``'s sliced base model (``base``, wrapped in place, or a fresh
    `extract`) with the shape's collapsed SMoL mixture as one LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    if base is None:
        base = extract(smol.base, shape, smol.ordering)  # SMoLLinear holds the base weight: no LoRA in it
    route = smol.route(shape)  # no gate noise: the deterministic choice for this shape
    source_layers, target_layers = decoder_layers(smol.base), decoder_layers(base)
    module_names = {id(module): name for name, module in base.named_modules()}
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for position, index in enumerate(shape.layers):
        slices = width_indices(index, shape, smol.ordering, smol.dims)
        targets = projections(target_layers[position])
        for role, layer in projections(source_layers[index]).items():
            if isinstance(layer, SMoLLinear) or lora_parts(layer, None, None):
                tensors[module_names[id(targets[role])]] = collapsed_lora(layer, route, *slices.get(role, (None, None)))
    rank = len(route.index) * smol.config.rank
    config = LoraConfig(
        r=rank,
        lora_alpha=smol.config.scale * rank,
        target_modules=sorted({name.rsplit(".", 1)[-1] for name in tensors}),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    model.peft_config["default"].base_model_name_or_path = None  # the sliced base is the adapter's parent folder
    wrapped = model.base_model.model
    for name, (a, b) in tensors.items():
        module = wrapped.get_submodule(name)
        module.lora_A["default"].weight.copy_(a)
        module.lora_B["default"].weight.copy_(b)
    return model.eval()


def save_adapter_export(smol: SMoLModel, shape: Shape, out: str | Path, tokenizer: Any = None, flag="--out") -> Path:
    """Write ``out``: ``shape``'s sliced base model (a plain Hugging Face directory, as `save_subnet`
    writes) and, in ``out/adapter``, its SMoL mixture as a peft LoRA adapter. Atomic as a whole."""
    out = check_export_dir(out, flag)
    base = extract(smol.base, shape, smol.ordering)
    with atomic.directory(out) as tmp:
        base.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        atomic.write_json(tmp / SHAPE_FILE, base.config.amoebasearch["shape"])
        shape_adapter(smol, shape, base).save_pretrained(str(tmp / ADAPTER_DIR))
    return out
