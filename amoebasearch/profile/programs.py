"""Timed programs: a building block or a whole subnet, bound to a runtime, a grid point and inputs.

A program is the ``(run, make_input, reset)`` triple the timing harness expects. ``make_input``
draws fresh random activations each call (outside the timed region); past keys/values are drawn
once per program at the point's context length; ``reset`` crops a real KV cache back after a
decode step so every repeat decodes at the same context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from amoebasearch.models import decoder_layers
from amoebasearch.profile.blocks import (
    BlockStack,
    Decoder,
    Embedding,
    Head,
    Point,
    random_hidden,
    random_ids,
    random_past,
    rotary_tables,
)
from amoebasearch.profile.runtime_base import Runtime
from amoebasearch.shape import ModelDims

Program = tuple[Callable[[Any], Any], Callable[[], Any], Callable[[], Any] | None]


class Context:
    """Where and how programs run: runtime, device, dtype and a seeded generator for inputs."""

    def __init__(self, runtime: Runtime, device: str, dtype: torch.dtype, seed: int = 0) -> None:
        self.runtime, self.device, self.dtype = runtime, device, dtype
        self.generator = torch.Generator().manual_seed(seed)


def embedding_program(model: nn.Module, point: Point, ctx: Context) -> Program:
    make = lambda: (random_ids(model.config, point, ctx.generator, ctx.device),)  # noqa: E731
    return ctx.runtime.program(Embedding(model), make()), make, None


def head_program(model: nn.Module, point: Point, ctx: Context) -> Program:
    dims = ModelDims.from_config(model.config)
    make = lambda: (random_hidden(dims, point, ctx.generator, ctx.dtype, ctx.device),)  # noqa: E731
    return ctx.runtime.program(Head(model), make()), make, None


def stack_program(stack: nn.Module, point: Point, ctx: Context) -> Program:
    """All decoder blocks of the (extracted) model ``stack``, without embedding or head."""
    dims = ModelDims.from_config(stack.config)
    layers = decoder_layers(stack)
    probe = random_hidden(dims, point, ctx.generator, ctx.dtype, ctx.device)
    cos, sin = rotary_tables(stack, probe, point)
    past_k, past_v = random_past(dims, len(layers), point, ctx.generator, ctx.dtype, ctx.device)

    def make() -> tuple:
        return (random_hidden(dims, point, ctx.generator, ctx.dtype, ctx.device), cos, sin, past_k, past_v)

    return ctx.runtime.program(BlockStack(layers), make()), make, None


def model_program(model: nn.Module, point: Point, ctx: Context) -> Program:
    """One end-to-end step of a whole model in the runtime (prefill of N tokens or one decode step)."""
    if getattr(ctx.runtime, "engine_level", False):
        return ctx.runtime.engine_program(model, point, ctx.generator)
    if ctx.runtime.native_hf:
        return _hf_program(model, point, ctx)
    dims = ModelDims.from_config(model.config)
    past_k, past_v = random_past(dims, dims.num_layers, point, ctx.generator, ctx.dtype, ctx.device)

    def make() -> tuple:
        return (random_ids(model.config, point, ctx.generator, ctx.device), past_k, past_v)

    return ctx.runtime.program(Decoder(model), make()), make, None


def _hf_program(model: nn.Module, point: Point, ctx: Context) -> Program:
    """The Hugging Face forward itself with a real ``DynamicCache`` (what an eager user runs)."""
    from transformers import DynamicCache

    state: dict[str, Any] = {}
    if point.phase == "decode":
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            prompt = Point("prefill", point.batch, point.context)
            model(random_ids(model.config, prompt, ctx.generator, ctx.device), cache=cache, use_cache=True)
        state["cache"] = cache

    def make() -> tuple:
        ids = random_ids(model.config, point, ctx.generator, ctx.device)
        cache = state["cache"] if point.phase == "decode" else DynamicCache(config=model.config)
        return ids, cache

    def run(args: tuple) -> Any:
        ids, cache = args
        with torch.inference_mode():
            return model(ids, cache=cache, use_cache=True, logits_to_keep=1).logits

    reset = (lambda: state["cache"].crop(-1)) if point.phase == "decode" else None
    return run, make, reset
