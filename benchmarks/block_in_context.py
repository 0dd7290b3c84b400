"""What one decoder block costs inside a whole subnet, against the table's stack-of-four row.

A table prices a block as a stack of `blocks.STACK` distinct blocks of one width, timed and
divided by the stack depth. Inside an extracted subnet the same block may cost differently (a
whole ONNX graph is one session, with its own fusions and memory plan). This times, in one
interleaved group, subnets of several depths at a few widths (each as independently allocated
instances, as validation does), fits latency = intercept + slope x depth per width, and compares
the slope (a block's cost in context) and the intercept (everything else) with the table's
decoder row and fixed rows. A ratio that differs between widths is a composition error no
calibration of the form ``scale x composed + offset`` can take out.

    python benchmarks/block_in_context.py [--runtime onnxruntime] [--phase decode] [--rounds 3]

Writes benchmarks/results/block_in_context-<runtime>-<phase>.csv.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))

from fingerprint import machine  # noqa: E402

from amoebasearch.models import load  # noqa: E402
from amoebasearch.profile import timing  # noqa: E402
from amoebasearch.profile.blocks import Point  # noqa: E402
from amoebasearch.profile.fingerprint import device_fingerprint, device_slug  # noqa: E402
from amoebasearch.profile.predict import build_lookup  # noqa: E402
from amoebasearch.profile.programs import Context, model_program  # noqa: E402
from amoebasearch.profile.runtimes import get_runtime  # noqa: E402
from amoebasearch.profile.table import load_table, table_name  # noqa: E402
from amoebasearch.profile.validate import subnet_instances  # noqa: E402
from amoebasearch.shape import Shape  # noqa: E402

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results"
WIDTHS = [(3, 256), (3, 1280), (9, 256), (9, 1280)]
DEPTHS = [4, 16, 28]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="onnxruntime")
    parser.add_argument("--phase", default="decode", choices=["decode", "prefill"])
    parser.add_argument("--rounds", type=int, default=3, help="independent groups, each from fresh instances")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args(argv)

    with timing.measurement_threads("cpu", 1):
        timing.fix_malloc_thresholds()
        loaded = load("smollm2-135m", dtype=torch.float32)
        model = loaded.model.eval()
        table_path = (
            ROOT
            / "profiles"
            / (table_name(loaded.name, device_slug(device_fingerprint("cpu")), args.runtime, "float32") + ".csv")
        )
        table = load_table(table_path, None)
        point = Point(args.phase, 1, 128)
        priced = build_lookup(table, calibrated=False)[(point.phase, point.batch, point.context)]
        ctx = Context(get_runtime(args.runtime, "cpu", torch.float32), "cpu", torch.float32, seed=0)
        clock = timing.clock_for("cpu")
        cells = [(w, d) for w in WIDTHS for d in DEPTHS]
        samples: dict[tuple, list[float]] = {cell: [] for cell in cells}
        for round_index in range(args.rounds):
            programs, owners = [], []
            for (heads, ffn), depth in cells:
                shape = Shape(tuple(range(depth)), heads, ffn)
                for subnet in subnet_instances(model, shape, ctx, args.instances):
                    programs.append(model_program(subnet, point, ctx))
                    owners.append(((heads, ffn), depth))
            stats = timing.measure_interleaved(programs, clock=clock, warmup=3, repeats=args.repeats)
            for owner, stat in zip(owners, stats, strict=True):
                samples[owner].append(stat.median_us)
            del programs
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    rows = []
    for width in WIDTHS:
        depth = np.array(DEPTHS, dtype=float)
        latency = np.array([statistics.median(samples[(width, d)]) for d in DEPTHS])
        slope, intercept = np.polyfit(depth, latency, 1)
        fit_error = np.abs(intercept + slope * depth - latency) / latency * 100
        rows.append(
            {
                "heads": width[0],
                "ffn": width[1],
                **{f"measured_d{d}_us": round(v, 1) for d, v in zip(DEPTHS, latency, strict=True)},
                "slope_us": round(slope, 1),
                "table_block_us": round(priced.block_us[width], 1),
                "slope_over_table": round(slope / priced.block_us[width], 4),
                "intercept_us": round(intercept, 1),
                "table_fixed_us": round(priced.fixed_us, 1),
                "linear_fit_max_error_pct": round(float(fit_error.max()), 2),
            }
        )
    frame = pd.DataFrame(rows)
    pd.set_option("display.width", 220)
    print(frame.to_string(index=False))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"block_in_context-{args.runtime}-{args.phase}.csv"
    frame.to_csv(out, index=False)
    meta = machine()
    print(f"wrote {out} ({meta['cpu']}, {args.rounds} rounds x {args.instances} instances, table {table_path.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
