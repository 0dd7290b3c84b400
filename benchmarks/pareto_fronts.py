"""Pareto fronts of SmolLM2-135M on every shipped latency table, with depth-only, width-only and
baseline-selection fronts: the data behind notebooks/pareto_fronts.ipynb and the README figure.

Quality: held-out perplexity (512 tokens of the embedded corpus, disjoint from calibration) of
every shape of a DP/importance plan through the elastic forward, i.e. the plan-only supernet
before fine-tuning. The exhaustive pass is shared with `search_quality.py` (same Optuna journal,
same cache key), so it costs nothing when that benchmark ran first (13.5 min otherwise). The
baselines (ShortGPT block influence, drop-last) are depth-only curves at full width, evaluated
on the same held-out chunks after selecting layers on the same calibration chunks.

Usage: python benchmarks/pareto_fronts.py --plan benchmarks/results/plan-dp-importance-512tok.json
       python benchmarks/pareto_fronts.py --qualities benchmarks/results/shape_qualities.csv
(the second re-draws the fronts from qualities already measured, e.g. after the shipped tables changed)
Writes benchmarks/results/shape_qualities.csv (the qualities CSV of `amoebasearch.fronts`),
pareto_fronts.csv/.png (per device), pareto_selection.csv/.png (CPU eager table) and
latency_table-cpu-eager.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna
import pandas as pd
from fingerprint import machine
from tqdm import tqdm

from amoebasearch import fronts
from amoebasearch.data import plan_split
from amoebasearch.elastic import elastic_logits
from amoebasearch.models import load, model_signature
from amoebasearch.ordering import Ordering
from amoebasearch.plan.select import select_depth
from amoebasearch.planfile import Plan
from amoebasearch.plots import plot_fronts, plot_latency_table, save_png
from amoebasearch.profile.predict import phase_predictors, table_space
from amoebasearch.quality import METRIC_LABELS, HeldOutPerplexity
from amoebasearch.search.cache import QualityCache, cache_study_name
from amoebasearch.search.storage import open_storage
from amoebasearch.shape import ShapeSpace

RESULTS = Path(__file__).resolve().parent / "results"
CPU_TABLE = Path("profiles/smollm2-135m-cpu-amd-epyc-t1-eager-float32.csv")
BASELINES = ("bi", "last")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--plan", help="evaluate every shape of this plan (and the baselines)")
    source.add_argument("--qualities", help="re-draw from a shape_qualities.csv this script wrote")
    parser.add_argument("--profiles", default="profiles")
    parser.add_argument("--eval-tokens", type=int, default=512)
    parser.add_argument("--cache", default="build/search_quality.journal")
    parser.add_argument("--phase", default="decode")
    args = parser.parse_args()

    if args.qualities:
        frame = fronts.read_qualities(args.qualities)
    else:
        frame = evaluate_qualities(args)
        RESULTS.mkdir(exist_ok=True)
        fronts.write_qualities(frame, RESULTS / "shape_qualities.csv")
    draw(frame, args)


def evaluate_qualities(args: argparse.Namespace) -> pd.DataFrame:
    """Held-out perplexity of every shape of the plan and of the baselines' full-width depths."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = load("smollm2-135m")
    config, dims = loaded.model.config, loaded.dims
    signature = model_signature(config)
    plan = Plan.load(args.plan, config)
    calib = plan.calibration
    split = plan_split(loaded.tokenizer, calib, args.eval_tokens)
    storage = open_storage(args.cache)
    settings = {"metric": "ppl", "eval_tokens": args.eval_tokens, "seq_len": calib.get("seq_len", 256)}

    space = ShapeSpace(dims, plan.ordering)
    main_cache = QualityCache(storage, cache_study_name(signature, settings))  # search_quality.py's cache
    evaluate = HeldOutPerplexity(elastic_logits(loaded.model, plan.ordering), split.held_out)
    records = [(s, main_cache.quality(s, evaluate)) for s in tqdm(list(space), desc="plan shapes")]
    selection = f"{plan.depth_method}+{plan.width_method}"
    frames = [fronts.qualities_frame(records, selection, "ppl", "smollm2-135m", signature)]

    max_remove = int(calib.get("max_remove", dims.num_layers // 2))
    for method in BASELINES:
        depth = select_depth(loaded.model, split.calibration, method, max_remove=max_remove)
        ordering = Ordering(depth.layer_sets(dims.num_layers), plan.ordering.head_order, plan.ordering.ffn_order)
        baseline = ShapeSpace(dims, ordering)
        cache = QualityCache(storage, cache_study_name(f"{signature}-{method}", settings))
        evaluate = HeldOutPerplexity(elastic_logits(loaded.model, ordering), split.held_out)
        full_width = [baseline.shape(d, dims.num_heads, dims.ffn) for d in baseline.depths]
        rows = [(s, cache.quality(s, evaluate)) for s in tqdm(full_width, desc=f"{method} depths")]
        frames.append(fronts.qualities_frame(rows, method, "ppl", "smollm2-135m", signature))
    return pd.concat(frames, ignore_index=True)


def draw(frame: pd.DataFrame, args: argparse.Namespace) -> None:
    """Per-device fronts on every table in ``--profiles`` and the selection fronts on this CPU's."""
    point = (args.phase, 1, 128)
    tables = fronts.tables_for(frame, args.profiles, *point)
    by_device = fronts.device_fronts(frame, tables, *point)
    reference = next(t for t in tables if Path(t.path).name == CPU_TABLE.name)
    by_selection = fronts.selection_fronts(frame, reference, *point)
    label = METRIC_LABELS["ppl"]
    where = f"{args.phase}, batch 1, context 128; plan-only supernet (before fine-tuning)"
    for name, curves, title in (
        ("pareto_fronts", by_device, f"SmolLM2-135M Pareto fronts per device ({where})"),
        ("pareto_selection", by_selection, f"SmolLM2-135M on {fronts.table_label(reference)} ({where})"),
    ):
        points = fronts.curves_frame(curves)
        for key, value in machine().items():
            points[key] = value
        points.to_csv(RESULTS / f"{name}.csv", index=False)
        save_png(plot_fronts(curves, quality_label=label, title=title), RESULTS / f"{name}.png")
    save_png(
        plot_latency_table(phase_predictors(reference), table_space(reference), title=fronts.table_label(reference)),
        RESULTS / "latency_table-cpu-eager.png",
    )

    summary = pd.DataFrame(
        [
            {
                "curve": c.label + (" (estimated)" if c.estimated else ""),
                "points": len(c.latency_ms),
                "fastest_ms": min(c.latency_ms),
                "slowest_ms": max(c.latency_ms),
                "ppl_at_fastest": c.quality[0],
                "ppl_at_slowest": c.quality[-1],
            }
            for c in by_device + by_selection
        ]
    )
    print(summary.to_string(index=False, float_format="%.3f"))
    print(f"{len(frame)} shapes with a quality; wrote {RESULTS}/pareto_*.csv/png")


if __name__ == "__main__":
    main()
