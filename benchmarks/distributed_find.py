"""A cold `find` run by 1 and by 2 worker processes on one study, and what N workers would give.

Each worker is one process pinned to one thread (one core here stands for one machine), all on
one Optuna storage (a journal file here; tests/test_postgres.py runs workers on PostgreSQL). The
2-worker run splits the same number of trials between the workers, as N machines sharing one
study do. From the 1-worker run the script separates what every worker pays once (start-up:
imports and loading the model), the quality evaluations (per shape) and the rest of the search
(sampler, storage, pricing: per trial), then projects the wall time of N workers:

    T(N) = start-up + (evaluations × per-evaluation × (1 + duplicated share) + trials × per-trial) / N

where the duplicated share is what the 2-worker run evaluated twice (two workers asked for the
same new shape at once), and the parallel part never drops below one evaluation.
The same formula is written for an 8B-class model by scaling per-evaluation and model-loading
cost with the parameter count (same hardware throughput per parameter; coordination unchanged).

Usage: python benchmarks/distributed_find.py --plan plan.json [--table profiles/....csv]
       [--trials 40] [--eval-tokens 512]
Writes benchmarks/results/distributed_find-<cpu>-<date>.csv (the runs) and
distributed_find-<cpu>-<date>-projection.csv.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from fingerprint import machine

from amoebasearch.models import load
from amoebasearch.profile.fingerprint import device_fingerprint, device_slug

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_TABLE = Path("profiles/smollm2-135m-cpu-amd-epyc-t1-eager-float32.csv")
WORKERS = (1, 2, 4, 8, 16, 32)
TARGET_PARAMETERS = 8.0e9  # an 8B-class model


def run_workers(args: argparse.Namespace, workers: int, storage: str) -> dict:
    """``workers`` `find` processes on one study, ``args.trials`` split between them; the wall time
    until the last one finishes and what each reported."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="distributed-find-") as scratch:
        command = [
            sys.executable, "-m", "amoebasearch", "find", "--budget", args.budget, "--plan", args.plan,
            "--profile", args.table, "--eval-tokens", str(args.eval_tokens), "--trials", str(args.trials // workers),
            "--study", "distributed", "--storage", storage, "--json",
        ]  # fmt: skip
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                [*command, "--out", str(Path(scratch) / f"w{i}")], stdout=subprocess.PIPE, env=env, text=True
            )
            for i in range(workers)
        ]
        reports = [json.loads(p.communicate()[0]) for p in procs]
        wall = time.perf_counter() - start
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker failed: {[p.returncode for p in procs]}")
    evaluations = sum(r["evaluations"] for r in reports)
    distinct = max(r["cached_shapes"] for r in reports)
    return {
        "workers": workers,
        "wall_s": round(wall, 2),
        "trials": max(r["trials"] for r in reports),
        "evaluations": evaluations,
        "distinct_shapes": distinct,
        "duplicated_share": round(evaluations / distinct - 1.0, 4) if distinct else 0.0,
        "evaluation_s": round(sum(r["evaluation_s"] for r in reports), 2),
        "find_s": round(max(r["wall_s"] for r in reports), 2),
        "best": json.dumps(reports[0]["best"]["shape"], sort_keys=True),
    }


def model_load_s(repeats: int = 3) -> tuple[float, int]:
    """Median seconds to load the embedded model at one thread, and its parameter count."""
    torch.set_num_threads(1)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loaded = load()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], sum(p.numel() for p in loaded.model.parameters())


def projection(one: dict, two: dict, load_s: float, parameters: int) -> pd.DataFrame:
    """Projected wall time and speed-up of N workers, each on a machine of its own, for the
    measured model and an 8B-class one; the share of shapes two workers evaluated twice (measured
    with 2) is charged to every N above 1."""
    evaluate_s = (one["evaluation_s"] - load_s) / one["evaluations"]  # the first evaluation loaded the model
    per_trial_s = (one["find_s"] - one["evaluation_s"]) / one["trials"]
    startup_s = one["wall_s"] - one["find_s"] + load_s
    scale = TARGET_PARAMETERS / parameters
    rows = []
    for model, factor in (("measured", 1.0), ("8B-class", scale)):
        serial = startup_s + load_s * (factor - 1.0)
        parallel = one["evaluations"] * evaluate_s * factor + one["trials"] * per_trial_s
        single = serial + parallel
        for n in WORKERS:
            duplicated = 0.0 if n == 1 else two["duplicated_share"] * one["evaluations"] * evaluate_s * factor
            wall = serial + max((parallel + duplicated) / n, evaluate_s * factor)  # a shape is not split
            rows.append(
                {
                    "model": model,
                    "parameters": parameters if factor == 1.0 else int(TARGET_PARAMETERS),
                    "workers": n,
                    "startup_s": round(serial, 2),
                    "evaluate_s_per_shape": round(evaluate_s * factor, 3),
                    "search_s_per_trial": round(per_trial_s, 4),
                    "evaluation_share": round(one["evaluations"] * evaluate_s * factor / single, 4),
                    "projected_wall_s": round(wall, 1),
                    "projected_speedup": round(single / wall, 2),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True)
    parser.add_argument("--table", default=str(DEFAULT_TABLE))
    parser.add_argument("--budget", default="30ms")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--eval-tokens", type=int, default=512)
    args = parser.parse_args()

    load_s, parameters = model_load_s()
    runs = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory(prefix="distributed-storage-") as scratch:  # a cold cache per run
            runs.append(run_workers(args, workers, str(Path(scratch) / "study.journal")))
            print(runs[-1])
    frame = pd.DataFrame(runs)
    frame["storage"] = "journal"
    frame["model_load_s"] = round(load_s, 2)
    frame["speedup"] = round(frame["wall_s"].iloc[0] / frame["wall_s"], 2)
    info = machine()
    for key, value in info.items():
        frame[key] = value
    stem = f"distributed_find-{device_slug(device_fingerprint('cpu'))}-{datetime.date.today().isoformat()}"
    RESULTS.mkdir(exist_ok=True)
    frame.to_csv(RESULTS / f"{stem}.csv", index=False)
    projected = projection(runs[0], runs[1], load_s, parameters)
    projected.to_csv(RESULTS / f"{stem}-projection.csv", index=False)
    print(frame[["workers", "wall_s", "evaluations", "distinct_shapes", "evaluation_s", "speedup"]].to_string())
    print(projected.to_string())


if __name__ == "__main__":
    main()
