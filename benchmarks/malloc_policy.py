"""What glibc's allocation policy does to a subnet's latency (`find --verify` measures under its table's).

`profile` fixes glibc's mmap/trim thresholds before anything allocates (`timing.fix_malloc_thresholds`,
recorded as the table's ``settings.malloc``); a process that loads the model under glibc's default,
dynamic thresholds places the runtime's weight copies elsewhere. Each policy runs in a fresh
process (the setting cannot be undone): load the model, extract each subnet, time ``--copies``
independently allocated copies of it interleaved, as validation does, and report their median.

    python benchmarks/malloc_policy.py [--runtime onnxruntime] [--shapes 22x9x384,22x9x1472] [--copies 6]

Writes benchmarks/results/malloc_policy-<runtime>.csv.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))

from fingerprint import machine  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def measure(runtime_name: str, shapes: list[tuple[int, int, int]], copies: int, fixed: bool) -> list[dict]:
    """In this process: the median over ``copies`` of each shape's decode latency (batch 1, context 128)."""
    import torch

    from amoebasearch.models import load
    from amoebasearch.profile import timing
    from amoebasearch.profile.blocks import Point
    from amoebasearch.profile.programs import Context, model_program
    from amoebasearch.profile.runtimes import get_runtime
    from amoebasearch.profile.validate import subnet_instances
    from amoebasearch.shape import Shape

    rows = []
    with timing.measurement_threads("cpu", 1):
        policy = timing.fix_malloc_thresholds() if fixed else timing.same_malloc_policy(None)  # glibc's own
        model = load("smollm2-135m", dtype=torch.float32).model
        runtime = get_runtime(runtime_name, "cpu", torch.float32)
        ctx = Context(runtime, "cpu", torch.float32)
        point = Point("decode", 1, 128)
        for depth, heads, ffn in shapes:
            subnets = subnet_instances(model, Shape(tuple(range(depth)), heads, ffn), ctx, copies)
            programs = [model_program(subnet, point, ctx) for subnet in subnets]
            stats = timing.measure_interleaved(programs, clock=timing.clock_for("cpu"), warmup=3, repeats=21)
            medians = [s.median_us / 1000 for s in stats]
            rows.append(
                {
                    "policy": policy,
                    "depth": depth,
                    "heads": heads,
                    "ffn": ffn,
                    "copies": copies,
                    "median_ms": round(statistics.median(medians), 3),
                    "fastest_ms": round(min(medians), 3),
                    "slowest_ms": round(max(medians), 3),
                }
            )
            del programs, subnets
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="onnxruntime")
    parser.add_argument("--shapes", default="22x9x384,22x9x1472", help="depth x heads x ffn, comma-separated")
    parser.add_argument("--copies", type=int, default=6)
    parser.add_argument("--policy", choices=["fixed", "default"], help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args(argv)
    shapes = [tuple(int(x) for x in item.split("x")) for item in args.shapes.split(",")]
    if args.policy:
        print(json.dumps(measure(args.runtime, shapes, args.copies, args.policy == "fixed")))
        return 0
    rows = []
    for policy in ("fixed", "default", "fixed", "default"):  # twice each, alternating: the host drifts
        child = [sys.executable, __file__, "--runtime", args.runtime, "--shapes", args.shapes]
        out = subprocess.run([*child, "--copies", str(args.copies), "--policy", policy], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(out.stderr.strip().splitlines()[-1])
        rows += [{"run": len(rows) // len(shapes), **row} for row in json.loads(out.stdout.strip().splitlines()[-1])]
    frame = pd.DataFrame(rows).assign(cpu=machine()["cpu"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"malloc_policy-{args.runtime}.csv"
    frame.to_csv(out_path, index=False)
    print(frame.to_string(index=False))
    fixed = frame[frame["policy"].str.startswith("glibc")].groupby(["depth", "heads", "ffn"])["median_ms"].median()
    default = frame[frame["policy"].str.startswith("default")].groupby(["depth", "heads", "ffn"])["median_ms"].median()
    print(f"\ndefault / fixed thresholds (median of runs):\n{(default / fixed).round(3)}\n-> {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
