"""Does the order the profiler times its block stacks in change what it measures?

A decoder block inside a real subnet always follows blocks of its own width. The profiler times
every width as a stack of `STACK` blocks, all widths round-robin; the first block of a stack
follows whatever stack ran before it. This benchmark measures, at one grid point of the real
SmolLM2-135M (eager, one pinned core):

- ``in_subnet_us``: the truth, one block's latency inside a real subnet: Hugging Face subnets
  of depth 4 and 22 at the width, run end to end, round-robin (like a validation group); the
  slope (t22 - t4) / 18.
- ``plain_us``: the stacks of every width, ordered by cost, each round cheapest to dearest
  (so the dearest stack is followed by the cheapest one at every round's wrap-around).
- ``there_and_back_us``: the same stacks, every other round in reverse (what `profile` does).

Error columns are relative to the in-subnet slope. Stacks are medians of three instances each
(as `profile` times them); the in-subnet subnets are one instance each.

    python benchmarks/stack_order.py [--phase decode] [--context 128]

Writes benchmarks/results/stack_order-<phase>.csv and .json (fingerprint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))

from fingerprint import machine  # noqa: E402

from amoebasearch.export import extract  # noqa: E402
from amoebasearch.models import load  # noqa: E402
from amoebasearch.profile import timing  # noqa: E402
from amoebasearch.profile.blocks import Point, share_embeddings, width_options  # noqa: E402
from amoebasearch.profile.profiler import decoder_rows  # noqa: E402
from amoebasearch.profile.programs import Context, model_program  # noqa: E402
from amoebasearch.profile.runtimes import get_runtime  # noqa: E402
from amoebasearch.shape import ModelDims, Shape  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PROBES = [(3, 64), (3, 512), (6, 64), (6, 1024), (9, 512), (9, 1536)]
DEPTHS = (4, 22)


def in_subnet(model, ctx: Context, point: Point) -> dict[tuple[int, int], float]:
    programs, keys = [], []
    for heads, ffn in PROBES:
        for depth in DEPTHS:
            subnet = share_embeddings(extract(model, Shape(tuple(range(depth)), heads, ffn)), model)
            programs.append(model_program(subnet, point, ctx))
            keys.append((heads, ffn, depth))
    stats = dict(zip(keys, timing.measure_interleaved(programs, clock=timing.clock_for("cpu")), strict=True))
    low, high = DEPTHS
    return {(h, f): (stats[(h, f, high)].median_us - stats[(h, f, low)].median_us) / (high - low) for h, f in PROBES}


def stacks(model, ctx: Context, point: Point, widths, there_and_back: bool) -> dict[tuple[int, int], float]:
    """Per-block time of every width, timed exactly as `profile` times it (or one way)."""
    settings = {"clock": timing.clock_for("cpu"), "warmup": 3, "repeats": 21, "instances": 3}
    rows = decoder_rows(model, ctx, point, widths, settings, there_and_back=there_and_back)
    return {(r["heads"], r["ffn"]): r["median_us"] for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=("prefill", "decode"), default="decode")
    parser.add_argument("--context", type=int, default=128)
    args = parser.parse_args()
    timing.fix_malloc_thresholds()
    os.sched_setaffinity(0, [max(os.sched_getaffinity(0))])
    torch.set_num_threads(1)
    point = Point(args.phase, 1, args.context)
    model = load().model
    ctx = Context(get_runtime("eager", "cpu", torch.float32), "cpu", torch.float32, seed=0)
    dims = ModelDims.from_config(model.config)
    widths = width_options(dims, 64)  # decoder_rows orders them by cost itself
    truth = in_subnet(model, ctx, point)
    plain = stacks(model, ctx, point, widths, there_and_back=False)
    there_and_back = stacks(model, ctx, point, widths, there_and_back=True)
    rows = [
        {
            "heads": h,
            "ffn": f,
            "in_subnet_us": round(truth[(h, f)]),
            "plain_us": round(plain[(h, f)]),
            "there_and_back_us": round(there_and_back[(h, f)]),
            "plain_error_pct": round((plain[(h, f)] / truth[(h, f)] - 1) * 100, 1),
            "there_and_back_error_pct": round((there_and_back[(h, f)] / truth[(h, f)] - 1) * 100, 1),
        }
        for h, f in PROBES
    ]
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False))
    RESULTS.mkdir(parents=True, exist_ok=True)
    frame.to_csv(RESULTS / f"stack_order-{args.phase}.csv", index=False)
    (RESULTS / f"stack_order-{args.phase}.json").write_text(
        json.dumps({"machine": machine(), "point": vars(args)}, indent=1) + "\n"
    )
    print(f"wrote {RESULTS / f'stack_order-{args.phase}.csv'}")


if __name__ == "__main__":
    main()
