"""`amoebasearch export`: write one subnet as a standalone Hugging Face model directory."""

from __future__ import annotations

import argparse

from amoebasearch.cli.common import add_model_argument, add_plan_argument, plan_from_args, positive_int
from amoebasearch.errors import UsageError
from amoebasearch.export import extract, save_subnet
from amoebasearch.models import load, load_config
from amoebasearch.ordering import Ordering
from amoebasearch.shape import ModelDims, Shape


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "export",
        help="write a subnet as a Hugging Face model directory",
        description="Give the shape as a JSON file (--shape) or as --depth/--heads/--ffn; "
        "omitted dimensions stay at the full model's size.",
    )
    add_model_argument(parser)
    add_plan_argument(parser)
    parser.add_argument("--shape", help="shape JSON file with keys layers, heads, ffn")
    parser.add_argument("--depth", type=positive_int, help="number of decoder layers to keep")
    parser.add_argument("--heads", type=positive_int, help="query heads per layer (a multiple of the KV heads)")
    parser.add_argument("--ffn", type=positive_int, help="FFN channels per layer")
    parser.add_argument("--out", required=True, help="output directory (written atomically)")
    parser.set_defaults(run=run)


def shape_from_args(args: argparse.Namespace, dims: ModelDims, ordering: Ordering) -> Shape:
    """The shape named on the command line, validated against the model."""
    by_dims = any(v is not None for v in (args.depth, args.heads, args.ffn))
    if args.shape and by_dims:
        raise UsageError("give either --shape FILE or --depth/--heads/--ffn, not both")
    if args.shape:
        return Shape.load(args.shape).validate(dims)
    if not by_dims:
        raise UsageError("no shape given: pass --shape FILE or at least one of --depth, --heads, --ffn")
    depth = args.depth if args.depth is not None else dims.num_layers
    if depth > dims.num_layers:
        raise UsageError(f"--depth {depth} exceeds the model's {dims.num_layers} layers")
    heads = args.heads if args.heads is not None else dims.num_heads
    ffn = args.ffn if args.ffn is not None else dims.ffn
    return Shape(ordering.layers_for_depth(depth), heads, ffn).validate(dims)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.model)
    dims = ModelDims.from_config(config)
    ordering = plan_from_args(args, config).ordering
    shape = shape_from_args(args, dims, ordering)  # validate before the (slow) weight load
    loaded = load(args.model)
    subnet = extract(loaded.model, shape, ordering)
    out = save_subnet(subnet, args.out, loaded.tokenizer)
    params = sum(p.numel() for p in subnet.parameters())
    print(f"exported {shape} ({params:,} parameters) to {out}")
    return 0
