"""Search quality and speed of `find` on SmolLM2-135M with the measured CPU table.

For budgets at 30/50/70/90% of the full model's predicted latency, compare Optuna (TPE) with
the exhaustive optimum over the whole discrete shape space and with random search given the
same number of trials. Random search is pure random (Optuna's RandomSampler): unlike TPE in
`find` it is not seeded with the shapes on the budget's boundary and does no local refinement.
The exhaustive pass evaluates every shape once (held-out perplexity through the elastic forward
of the plan) and is cached in an Optuna journal, so reruns are fast.

Two questions a user asks again are measured too, over the same exhaustive qualities:
- a sweep of 10 new budgets after one multi-objective run (`find --pareto`, 40 trials): how many
  new evaluations each budget costs when the quality model fitted on the cache picks them (the
  default) and when the sampler runs its 60 trials (`--explore`), and whether each answer is the
  exhaustive optimum (search_budget_sweep.csv);
- the whole `amoebasearch find` command repeated with the same request: its wall time once the
  study holds the answer (find_repeat.csv; the first, cold run evaluates with the real model).

The shipped result used benchmarks/results/plan-dp-importance-512tok.json (`amoebasearch plan
--tokens 512 --max-remove 15`: DP depth + importance width); the exhaustive pass over its 1,152
shapes takes 13.5 min on an idle 2-core CPU (the CSV's ``exhaustive_eval_s`` says what it took
for the committed run, on cores shared with other work).

Usage: python benchmarks/search_quality.py --plan plan.json [--table profiles/....csv]
       [--eval-tokens 512] [--trials-share 0.1] [--seeds 3] [--parts samplers,sweep,repeat]
Writes benchmarks/results/search_quality.csv and .png, search_budget_sweep.csv, find_repeat.csv.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
from fingerprint import machine
from tqdm import tqdm

from amoebasearch.data import plan_split
from amoebasearch.elastic import elastic_logits
from amoebasearch.models import load, model_signature
from amoebasearch.planfile import Plan
from amoebasearch.plots import Curve, plot_fronts, save_png
from amoebasearch.profile.predict import point_model
from amoebasearch.profile.table import load_table
from amoebasearch.quality import HeldOutPerplexity
from amoebasearch.search.cache import QualityCache, cache_study_name
from amoebasearch.search.storage import open_storage
from amoebasearch.search.study import Candidate, pareto_front, search
from amoebasearch.shape import ShapeSpace

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_TABLE = Path("profiles/smollm2-135m-cpu-amd-epyc-t1-eager-float32.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True)
    parser.add_argument("--table", default=str(DEFAULT_TABLE))
    parser.add_argument("--phase", default="decode")
    parser.add_argument("--eval-tokens", type=int, default=512)
    parser.add_argument("--trials-share", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cache", default="build/search_quality.journal")
    parser.add_argument("--parts", default="samplers,sweep,repeat", help="which parts to run (comma-separated)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = load("smollm2-135m")
    plan = Plan.load(args.plan, loaded.model.config)
    table = load_table(args.table, model_signature(loaded.model.config))
    point = point_model(table, args.phase, 1, 128)
    space = ShapeSpace(loaded.dims, plan.ordering)
    latency = {shape: point.predict(shape) / 1000.0 for shape in space}

    calib = plan.calibration
    split = plan_split(loaded.tokenizer, calib, args.eval_tokens)
    evaluate = HeldOutPerplexity(elastic_logits(loaded.model, plan.ordering), split.held_out)
    settings = {"metric": "ppl", "eval_tokens": args.eval_tokens, "seq_len": calib.get("seq_len", 256)}
    cache = QualityCache(open_storage(args.cache), cache_study_name(model_signature(loaded.model.config), settings))

    start = time.perf_counter()
    for shape in tqdm(list(space), desc="exhaustive quality"):
        cache.quality(shape, evaluate)
    exhaustive_s = time.perf_counter() - start
    quality = {shape: cache.get(shape) for shape in space}

    full_ms = latency[space.largest()]
    info = machine()
    if "samplers" in parts:
        samplers(args, space, latency, quality, full_ms, table, {**info, "exhaustive_eval_s": round(exhaustive_s, 1)})
    if "sweep" in parts:
        budget_sweep(space, latency, quality, full_ms, args.seeds, info)
    if "repeat" in parts:
        repeated_command(args, info)


def samplers(args, space, latency, quality, full_ms, table, info) -> None:
    """TPE and random search against the exhaustive optimum at four budgets."""
    trials = max(1, round(args.trials_share * len(space)))
    rows = []
    for share in (0.3, 0.5, 0.7, 0.9):
        budget = share * full_ms
        feasible = [s for s in space if latency[s] <= budget]
        if not feasible:  # below the plan's shallowest subnet: `find` refuses it, so do we
            print(f"budget {share:.0%} of full ({budget:.1f} ms) is below the fastest subnet: skipped")
            continue
        optimum = min(quality[s] for s in feasible)
        for sampler in ("tpe", "random"):
            for seed in range(args.seeds):
                seen: set = set()

                def counted(shape, seen=seen):
                    seen.add(shape)
                    return quality[shape]

                t0 = time.perf_counter()
                memory = QualityCache(optuna.storages.InMemoryStorage(), "q")
                best = search(
                    space, lambda s: latency[s], counted, memory, budget, trials=trials,
                    sampler=sampler, seed=seed, progress=False,
                ).best  # fmt: skip
                rows.append(
                    {
                        "budget_share": share,
                        "budget_ms": round(budget, 3),
                        "sampler": sampler,
                        "seed": seed,
                        "trials": trials,
                        "evaluations": len(seen),
                        "evaluation_share": len(seen) / len(space),
                        "best_ppl": best.quality,
                        "optimum_ppl": optimum,
                        "gap_pct": (best.quality - optimum) / optimum * 100,
                        "search_s": time.perf_counter() - t0,
                    }
                )
    frame = pd.DataFrame(rows)
    for key, value in info.items():
        frame[key] = value
    RESULTS.mkdir(exist_ok=True)
    frame.to_csv(RESULTS / "search_quality.csv", index=False)
    summary = frame.groupby(["budget_share", "sampler"]).agg(
        gap_pct_median=("gap_pct", "median"),
        gap_pct_max=("gap_pct", "max"),
        evaluations_median=("evaluations", "median"),
        search_s_median=("search_s", "median"),
    )
    print(summary.to_string(float_format="%.3f"))
    print(f"space {len(space)} shapes, {trials} trials each; exhaustive pass {info['exhaustive_eval_s']:.0f}s")

    everything = [Candidate(s, latency[s], quality[s]) for s in space]
    front = pareto_front(everything)
    fig = plot_fronts(
        [Curve("exhaustive Pareto front", [c.latency_ms for c in front], [c.quality for c in front])],
        title=f"SmolLM2-135M, {table.meta['device']['name']} {table.meta['runtime']['name']} ({args.phase})",
    )
    save_png(fig, RESULTS / "search_quality.png")
    print(f"median TPE gap {statistics.median(frame[frame.sampler == 'tpe'].gap_pct):.3f}%")


def warm_cache(known: dict) -> QualityCache:
    """An in-memory quality cache holding ``known`` (shape -> quality) as measured earlier."""
    cache = QualityCache(optuna.storages.InMemoryStorage(), "q")
    for shape, value in known.items():
        cache.put(shape, value)
    return cache


SWEEP_SHARES = [0.45 + 0.05 * i for i in range(10)]  # of the full model's predicted latency


def budget_sweep(space, latency, quality, full_ms, seeds, info, pareto_trials=40, trials=60) -> None:
    """One `find --pareto` fills the cache; then 10 new budgets, each a new study, one after the
    other as a user would ask them, guided by the quality model or by the sampler's trials."""
    rows = []
    for seed in range(seeds):
        first = warm_cache({})
        front = search(space, lambda s: latency[s], lambda s: quality[s], first, full_ms + 0.1, trials=pareto_trials,
                       seed=seed, multi_objective=True, progress=False)  # fmt: skip
        known = {shape: quality[shape] for shape in space if first.get(shape) is not None}
        for strategy in ("quality model", "sampler trials"):
            cache = warm_cache(known)
            for share in SWEEP_SHARES:
                budget = share * full_ms
                optimum = min(quality[s] for s in space if latency[s] <= budget)
                t0 = time.perf_counter()
                result = search(space, lambda s: latency[s], lambda s: quality[s], cache, budget, trials=trials,
                                seed=seed, guide=strategy == "quality model", progress=False)  # fmt: skip
                rows.append(
                    {
                        "seed": seed,
                        "pareto_evaluations": front.evaluations,
                        "strategy": strategy,
                        "budget_share": round(share, 2),
                        "budget_ms": round(budget, 3),
                        "evaluations": result.evaluations,
                        "at_optimum": result.best.quality == optimum,
                        "gap_pct": (result.best.quality - optimum) / optimum * 100,
                        "search_s": round(time.perf_counter() - t0, 3),
                    }
                )
    frame = pd.DataFrame(rows)
    for key, value in info.items():
        frame[key] = value
    frame.to_csv(RESULTS / "search_budget_sweep.csv", index=False)
    summary = frame.groupby(["strategy", "seed"]).agg(
        evaluations=("evaluations", "sum"), at_optimum=("at_optimum", "sum"), pareto=("pareto_evaluations", "first")
    )
    print(summary.to_string())


def repeated_command(args, info, repeats: int = 5) -> None:
    """Wall time of the whole `amoebasearch find` command: once cold, then the same request again."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="find-repeat-") as out:
        command = [
            sys.executable, "-m", "amoebasearch", "find", "--budget", "30ms", "--plan", args.plan,
            "--profile", args.table, "--eval-tokens", str(args.eval_tokens), "--trials", "20", "--out", out, "--json",
        ]  # fmt: skip
        for run in range(repeats + 1):
            t0 = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t0
            report = json.loads(done.stdout)
            rows.append(
                {
                    "run": "cold" if run == 0 else "repeat",
                    "command_s": round(wall, 2),
                    "find_s": report["wall_s"],
                    "new_trials": report["new_trials"],
                    "evaluations": report["evaluations"],
                    "best": json.dumps(report["best"]["shape"], sort_keys=True),
                }
            )
    frame = pd.DataFrame(rows)
    for key, value in info.items():
        frame[key] = value
    frame.to_csv(RESULTS / "find_repeat.csv", index=False)
    repeat = frame[frame["run"] == "repeat"]
    print(f"cold {frame['command_s'].iloc[0]:.1f}s; repeated: median {repeat['command_s'].median():.2f}s "
          f"(max {repeat['command_s'].max():.2f}s), {repeat['evaluations'].sum()} new evaluations")  # fmt: skip


if __name__ == "__main__":
    main()
