"""`amoebasearch info`: the model summary and the size of its shape space."""

from __future__ import annotations

import argparse
import json

from amoebasearch.cli.common import add_model_argument
from amoebasearch.models import describe, load
from amoebasearch.options import positive_int
from amoebasearch.shape import ShapeSpace


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("info", help="print the model summary and its shape space")
    add_model_argument(parser)
    parser.add_argument("--ffn-step", type=positive_int, default=64, help="FFN width granularity (default 64)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    loaded = load(args.model)
    summary = describe(loaded)
    space = ShapeSpace(loaded.dims, ffn_step=args.ffn_step)
    summary["shape_space"] = {**space.to_dict(), "size": len(space)}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    for key, value in summary.items():
        if key != "shape_space":
            print(f"{key:>12}: {value:,}" if isinstance(value, int) else f"{key:>12}: {value}")
    print(
        f"{'shape space':>12}: {len(space):,} shapes = {len(space.depths)} depths x "
        f"{len(space.head_options)} head options {list(space.head_options)} x "
        f"{len(space.ffn_options)} FFN options ({space.ffn_options[0]}..{space.ffn_options[-1]} step {args.ffn_step})"
    )
    return 0
