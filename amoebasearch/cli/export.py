"""`amoebasearch export`: write one subnet as a standalone Hugging Face model directory, or as one
GGUF file that llama.cpp serves (``--format gguf``)."""

from __future__ import annotations

import argparse
import sys

from amoebasearch.cli.common import add_model_argument, add_plan_argument, plan_from_args
from amoebasearch.errors import UsageError
from amoebasearch.export import check_export_dir, extract, save_export
from amoebasearch.models import DEFAULT_MODEL, load, load_config
from amoebasearch.options import positive_int
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
    add_format_arguments(parser)
    parser.add_argument(
        "--supernet", help="supernet directory from `amoebasearch train`: export with the shape's LoRAs merged"
    )
    parser.add_argument(
        "--adapter",
        action="store_true",
        help="with --supernet: write the sliced base model unmerged, plus the shape's LoRAs as one standard peft "
        "adapter in OUT/adapter (PeftModel.from_pretrained(base, 'OUT/adapter'))",
    )
    parser.set_defaults(run=run)


def add_format_arguments(parser: argparse.ArgumentParser) -> None:
    """``--format`` and ``--quant``, shared by `export` and `find --export`."""
    from amoebasearch.export_gguf import QUANTS

    parser.add_argument(
        "--format",
        choices=("hf", "gguf"),
        default="hf",
        help="hf: a Hugging Face model directory (default); gguf: one GGUF file with the tokenizer and chat "
        "template, for llama.cpp",
    )
    parser.add_argument(
        "--quant",
        choices=QUANTS,
        help="GGUF weight format (default q8_0; find: its llamacpp table's); quantised by llama.cpp's own quantiser",
    )


def check_format(args: argparse.Namespace) -> None:
    if args.quant and args.format != "gguf":
        raise UsageError("--quant sets the weights of a GGUF export: add --format gguf, or drop --quant")


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
    check_format(args)
    if args.adapter and (not args.supernet or args.format != "hf"):
        raise UsageError("--adapter writes a trained supernet's LoRAs for peft: add --supernet DIR, keep --format hf")
    check_export_dir(args.out)  # before seconds of model loading, not after
    if args.supernet:
        return run_supernet(args)
    config = load_config(args.model)
    dims = ModelDims.from_config(config)
    ordering = plan_from_args(args, config).ordering
    shape = shape_from_args(args, dims, ordering)  # validate before the (slow) weight load
    loaded = load(args.model)
    subnet = extract(loaded.model, shape, ordering)
    out = save_export(subnet, args.out, loaded.tokenizer, args.format, args.quant)
    params = sum(p.numel() for p in subnet.parameters())
    print(f"exported {shape} ({params:,} parameters) to {out}")
    return 0


def run_supernet(args: argparse.Namespace) -> int:
    """Export from a trained supernet: its base model and plan, the shape's active LoRAs merged."""
    from amoebasearch.train.supernet import load_supernet

    if args.plan:
        raise UsageError("--plan does not apply with --supernet: the supernet carries its own plan.json")
    model = args.model if args.model != DEFAULT_MODEL else None  # default: the supernet's recorded base
    supernet = load_supernet(args.supernet, model)
    shape = shape_from_args(args, supernet.loaded.dims, supernet.plan.ordering)
    if shape not in supernet.space:
        print(f"note: {shape} lies outside the shape space the supernet was trained on", file=sys.stderr)
    if args.adapter:
        from amoebasearch.train.peft_adapter import ADAPTER_DIR, save_adapter_export

        out = save_adapter_export(supernet.smol, shape, args.out, supernet.loaded.tokenizer)
        print(f"exported {shape}: sliced base model in {out}, its LoRAs as a peft adapter in {out / ADAPTER_DIR}")
        return 0
    subnet = supernet.export(shape)
    out = save_export(subnet, args.out, supernet.loaded.tokenizer, args.format, args.quant)
    params = sum(p.numel() for p in subnet.parameters())
    loras = subnet.config.amoebasearch["supernet"]["loras"]
    print(f"exported {shape} ({params:,} parameters, LoRAs {loras} merged) to {out}")
    return 0
