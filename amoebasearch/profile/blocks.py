"""What the profiler times: the building blocks a `Shape` is made of, as tensor-only modules.

A subnet's forward is embedding -> its kept decoder blocks -> final norm + LM head, plus the
fixed glue of one call (rotary tables, mask logic, Python). The modules here cut the real
Hugging Face model at exactly those seams and take plain tensors (hidden states, rotary
cos/sin, past keys/values), so every runtime can run them: PyTorch eager as they are,
``torch.compile`` compiled, ONNX Runtime after export.

Decoder blocks are timed as a *stack* of ``STACK`` distinct real blocks of the same width,
divided by the stack depth, and all widths of a grid point are timed round-robin: between two
runs of one stack every other stack runs, so each block reads its weights from memory as it
does inside a real subnet (where the LM head alone evicts the last-level cache every step).
The round goes from the cheapest width to the dearest and back, so a stack never runs right
after one far wider than itself (inside a subnet, a block follows blocks of its own width).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from amoebasearch.export import extract
from amoebasearch.models import decoder_layers
from amoebasearch.shape import ModelDims, Shape

STACK = 4  # blocks per timed stack (capped at the model's depth)
PHASES = ("prefill", "decode")


class TensorCache:
    """The one method of a Hugging Face KV cache that attention calls, over one layer's past tensors.

    ``update`` appends the new keys/values to the given past (a ``cat``, like ``DynamicCache``)
    without keeping them, so every timed call sees the same context length. One object per
    layer, so the layer index is never read: compiled blocks then need no per-index graphs.
    """

    def __init__(self, past_keys: torch.Tensor | None, past_values: torch.Tensor | None) -> None:
        self.past_keys, self.past_values = past_keys, past_values

    def update(self, keys: torch.Tensor, values: torch.Tensor, *args, **kwargs):
        if self.past_keys is None:
            return keys, values
        return torch.cat([self.past_keys, keys], dim=-2), torch.cat([self.past_values, values], dim=-2)


class Embedding(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.embed = model.model.embed_tokens

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids)


class Head(nn.Module):
    """Final norm over all positions, LM head on the last one (what generation needs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.norm = model.model.norm
        self.lm_head = model.lm_head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden)[:, -1:, :])


class BlockStack(nn.Module):
    """Decoder blocks in sequence; past keys/values as stacked tensors (blocks, B, kv, N, d)."""

    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, hidden, cos, sin, past_keys=None, past_values=None):
        for index, layer in enumerate(self.layers):
            if past_keys is None:
                cache = TensorCache(None, None)
            else:
                cache = TensorCache(past_keys[index], past_values[index])
            hidden = layer(hidden, position_embeddings=(cos, sin), cache=cache, attention_mask=None)
        return hidden


class Decoder(nn.Module):
    """A whole (extracted) model with tensor-only inputs: one prefill or decode step -> last logits.

    Used where a runtime needs a traceable graph (ONNX); PyTorch runtimes call the Hugging Face
    model itself with a real ``DynamicCache``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.embedding = Embedding(model)
        self.rotary = model.model.rotary_emb
        self.stack = BlockStack(decoder_layers(model))
        self.head = Head(model)

    def forward(self, ids, past_keys=None, past_values=None):
        hidden = self.embedding(ids)
        start = 0 if past_keys is None else past_keys.shape[-2]
        positions = torch.arange(start, start + ids.shape[1], device=ids.device).unsqueeze(0)
        cos, sin = self.rotary(hidden, positions)
        hidden = self.stack(hidden, cos, sin, past_keys, past_values)
        return self.head(hidden)


@dataclass(frozen=True)
class Point:
    """One grid point: phase, batch size and context length (prompt length for prefill)."""

    phase: str
    batch: int
    context: int

    @property
    def new_tokens(self) -> int:
        return self.context if self.phase == "prefill" else 1

    @property
    def past(self) -> int:
        return 0 if self.phase == "prefill" else self.context


def random_ids(config, point: Point, generator: torch.Generator, device) -> torch.Tensor:
    """Random non-zero token ids (id 0 is often padding, which some kernels short-cut)."""
    return torch.randint(1, config.vocab_size, (point.batch, point.new_tokens), generator=generator).to(device)


def random_hidden(dims: ModelDims, point: Point, generator: torch.Generator, dtype, device) -> torch.Tensor:
    return torch.randn(point.batch, point.new_tokens, dims.hidden, generator=generator).to(device, dtype)


def random_past(dims: ModelDims, blocks: int, point: Point, generator, dtype, device):
    """Random past keys and values for ``blocks`` layers at the point's context (None for prefill)."""
    if point.past == 0:
        return None, None
    shape = (blocks, point.batch, dims.num_kv_heads, point.past, dims.head_dim)
    return (
        torch.randn(shape, generator=generator).to(device, dtype),
        torch.randn(shape, generator=generator).to(device, dtype),
    )


def rotary_tables(model: nn.Module, hidden: torch.Tensor, point: Point):
    positions = torch.arange(point.past, point.past + point.new_tokens, device=hidden.device).unsqueeze(0)
    return model.model.rotary_emb(hidden, positions)


def share_embeddings(subnet: nn.Module, model: nn.Module) -> nn.Module:
    """Point an extracted subnet's embedding, final norm and LM head at the parent's (no copies).

    They are never sliced, so many subnets held at once (interleaved timing) share one copy.
    """
    subnet.model.embed_tokens = model.model.embed_tokens
    subnet.model.norm = model.model.norm
    subnet.lm_head = model.lm_head
    return subnet


def stack_model(model: nn.Module, heads: int, ffn: int, first_layer: int = 0, depth: int | None = None) -> nn.Module:
    """An extracted model holding ``depth`` consecutive real blocks at width (heads, ffn)."""
    dims = ModelDims.from_config(model.config)
    depth = depth or min(STACK, dims.num_layers)
    layers = tuple(range(first_layer, first_layer + depth))
    return share_embeddings(extract(model, Shape(layers, heads, ffn)), model)


def width_options(dims: ModelDims, ffn_step: int) -> list[tuple[int, int]]:
    """Every (heads, ffn) width the shape space allows."""
    from amoebasearch.shape import ShapeSpace

    space = ShapeSpace(dims, ffn_step=ffn_step)
    return [(h, f) for h in space.head_options for f in space.ffn_options]
