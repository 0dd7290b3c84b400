"""Materialise a `Shape` as a standalone Hugging Face model with physically sliced weights, and
save it as an export folder: a Hugging Face model directory, or one GGUF file (``export_gguf``).

The elastic forward (``elastic.use_shape``) and this module slice the same indices
(``elastic.width_indices``), so the exported model's logits equal the elastic forward's.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amoebasearch import atomic
from amoebasearch.elastic import slice_linear_weight, width_indices
from amoebasearch.errors import UsageError
from amoebasearch.models import decoder_layers, model_signature, projections
from amoebasearch.ordering import Ordering
from amoebasearch.shape import ModelDims, Shape
from amoebasearch.userfiles import check_output_path

SHAPE_FILE = "amoebasearch-shape.json"  # marks an export: the shape it was cut to


def subnet_config(config: Any, shape: Shape) -> Any:
    """The config of the exported subnet: fewer layers, heads and FFN channels; same head_dim."""
    dims = ModelDims.from_config(config)
    new = copy.deepcopy(config)
    new.num_hidden_layers = shape.depth
    new.num_attention_heads = shape.heads
    new.intermediate_size = shape.ffn
    new.head_dim = dims.head_dim  # must be explicit: hidden_size // heads no longer holds
    if getattr(config, "layer_types", None) is not None:
        new.layer_types = [config.layer_types[i] for i in shape.layers]
    if getattr(config, "max_window_layers", None) is not None:
        new.max_window_layers = min(config.max_window_layers, shape.depth)
    return new


@torch.no_grad()
def extract(model: nn.Module, shape: Shape, ordering: Ordering | None = None) -> nn.Module:
    """A new model of the same family holding only the shape's weights (sliced copies)."""
    dims = ModelDims.from_config(model.config)
    shape.validate(dims)
    ordering = ordering if ordering is not None else Ordering.identity(dims)
    config = subnet_config(model.config, shape)
    reference = next(model.parameters())
    # built where the parent lives (a subnet of a GPU model is a GPU model), in its dtype
    with torch.device(reference.device):
        subnet = type(model)(config).to(dtype=reference.dtype)
    subnet.eval()

    source_layers = decoder_layers(model)
    target_layers = decoder_layers(subnet)
    for position, index in enumerate(shape.layers):
        source, target = source_layers[index], target_layers[position]
        slices = width_indices(index, shape, ordering, dims)
        source_linears, target_linears = projections(source), projections(target)
        for role, linear in source_linears.items():
            weight, bias = slice_linear_weight(linear, *slices.get(role, (None, None)))
            target_linears[role].weight.copy_(weight)
            if bias is not None:
                target_linears[role].bias.copy_(bias)
        target.input_layernorm.load_state_dict(source.input_layernorm.state_dict())
        target.post_attention_layernorm.load_state_dict(source.post_attention_layernorm.state_dict())

    subnet.model.embed_tokens.load_state_dict(model.model.embed_tokens.state_dict())
    subnet.model.norm.load_state_dict(model.model.norm.state_dict())
    if not getattr(config, "tie_word_embeddings", False):
        subnet.lm_head.load_state_dict(model.lm_head.state_dict())
    subnet.config.amoebasearch = {
        "shape": shape.to_dict(),
        "parent_signature": model_signature(model.config),
    }
    return subnet


def check_export_dir(out_dir: str | Path, flag: str = "--out") -> Path:
    """Refuse an export directory `save_subnet` would refuse, before the caller loads a model for it."""
    out = Path(out_dir)
    check_output_path(out, flag, folder=True)
    if out.is_dir() and any(out.iterdir()) and not (out / SHAPE_FILE).is_file():
        raise UsageError(
            f"{flag} {out} is a non-empty directory that no earlier export wrote: choose a new or empty path"
        )
    atomic.check_replaceable(out)
    return out


def save_subnet(subnet: nn.Module, out_dir: str | Path, tokenizer: Any = None, flag: str = "--out") -> Path:
    """Write a loadable checkpoint directory atomically (temp dir + rename).

    An existing ``out_dir`` is replaced only when empty or an earlier export (it holds
    `SHAPE_FILE`): any other folder, a Hugging Face model included, may hold the user's own files.
    """
    out = check_export_dir(out_dir, flag)
    with atomic.directory(out) as tmp:
        subnet.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        atomic.write_json(tmp / SHAPE_FILE, subnet.config.amoebasearch["shape"])
    return out


def save_export(
    subnet: nn.Module, out: str | Path, tokenizer: Any, fmt: str = "hf", quant: str | None = None, flag="--out"
):
    """The export of ``subnet`` as ``fmt``: a Hugging Face model directory (returned), or ("gguf")
    one GGUF file at ``quant`` (default q8_0) in that directory (its path returned)."""
    if fmt == "gguf":
        if tokenizer is None:
            raise UsageError("a GGUF export carries the tokenizer, and this model has none: pass a model with one")
        return save_gguf(subnet, out, tokenizer, quant or "q8_0", flag=flag)
    return save_subnet(subnet, out, tokenizer, flag=flag)


def save_gguf(subnet: nn.Module, out_dir: str | Path, tokenizer: Any, quant: str, flag: str = "--out") -> Path:
    """An export folder (replaced atomically, as `save_subnet` does) holding the subnet as one
    GGUF file at ``quant`` and the shape it was cut to; returns the GGUF's path."""
    from amoebasearch.export_gguf import gguf_name, write_gguf
    from amoebasearch.llamacpp import default_threads

    out = check_export_dir(out_dir, flag)
    with atomic.directory(out) as tmp:
        write_gguf(subnet, tokenizer, tmp / gguf_name(quant), quant, threads=default_threads())
        atomic.write_json(tmp / SHAPE_FILE, subnet.config.amoebasearch["shape"])
    return out / gguf_name(quant)
