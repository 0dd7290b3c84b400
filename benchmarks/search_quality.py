"""Search quality and speed of `find` on SmolLM2-135M with the measured CPU table.

For budgets at 30/50/70/90% of the full model's predicted latency, compare Optuna (TPE) with
the exhaustive optimum over the whole discrete shape space and with random search given the
same number of trials. Random search is pure random (Optuna's RandomSampler): unlike TPE in
`find` it is not seeded with the shapes on the budget's boundary and does no local refinement.
The exhaustive pass evaluates every shape once (held-out perplexity through the elastic forward
of the plan) and is cached in an Optuna journal, so reruns are fast.

The shipped result used benchmarks/results/plan-dp-importance-512tok.json (`amoebasearch plan
--tokens 512 --max-remove 15`: DP depth + importance width); the exhaustive pass over its 1,152
shapes takes 13.5 min on an idle 2-core CPU (the CSV's ``exhaustive_eval_s`` says what it took
for the committed run, on cores shared with other work).

Usage: python benchmarks/search_quality.py --plan plan.json [--table profiles/....csv]
       [--eval-tokens 512] [--trials-share 0.1] [--seeds 3]
Writes benchmarks/results/search_quality.csv and .png.
"""

from __future__ import annotations

import argparse
import statistics
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
    args = parser.parse_args()

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
    for key, value in machine().items():
        frame[key] = value
    frame["exhaustive_eval_s"] = round(exhaustive_s, 1)
    RESULTS.mkdir(exist_ok=True)
    frame.to_csv(RESULTS / "search_quality.csv", index=False)
    summary = frame.groupby(["budget_share", "sampler"]).agg(
        gap_pct_median=("gap_pct", "median"),
        gap_pct_max=("gap_pct", "max"),
        evaluations_median=("evaluations", "median"),
        search_s_median=("search_s", "median"),
    )
    print(summary.to_string(float_format="%.3f"))
    print(f"space {len(space)} shapes, {trials} trials each; exhaustive pass {exhaustive_s:.0f}s")

    everything = [Candidate(s, latency[s], quality[s]) for s in space]
    front = pareto_front(everything)
    fig = plot_fronts(
        [Curve("exhaustive Pareto front", [c.latency_ms for c in front], [c.quality for c in front])],
        title=f"SmolLM2-135M, {table.meta['device']['name']} {table.meta['runtime']['name']} ({args.phase})",
    )
    save_png(fig, RESULTS / "search_quality.png")
    print(f"median TPE gap {statistics.median(frame[frame.sampler == 'tpe'].gap_pct):.3f}%")


if __name__ == "__main__":
    main()
