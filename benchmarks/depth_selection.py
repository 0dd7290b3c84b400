"""Depth selection quality and DP speed on the real SmolLM2-135M and real text (the KJV corpus).

For every number of removed layers m = 1..max_remove, the held-out perplexity of the layer set
chosen by DP (ours) and by the baselines a user would pick instead: ShortGPT block influence
(bi), Shortened-LLaMA one-shot perplexity (ppl), drop-last-N (last) and random (mean of seeds).
All methods see the same calibration chunks; calibration and held-out chunks are disjoint. The
DP minimises KL to the full model on 2,048 calibration tokens and keeps the best prefix per ending
(`plan`'s defaults: --split-ends); held-out perplexity is measured on 8,192 tokens. KL ranked
single-layer removals best on a separate validation set that never overlaps this held-out set
(docs/design.md); the ppl baseline keeps its own criterion, calibration perplexity.

Also times the DP (the KL reference pass included) and estimates the naive DP (both candidates
of every cell re-run through the whole network) from the measured cost of one full evaluation
times its exact evaluation count.

Writes benchmarks/results/depth_selection.{csv,png,json}; the JSON holds timing and the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from fingerprint import machine

from amoebasearch.data import calibration_split
from amoebasearch.models import load
from amoebasearch.plan.depth import (
    by_scores,
    dp_depth,
    drop_last,
    from_table,
    naive_dp_evaluations,
    random_removal,
)
from amoebasearch.plan.evaluate import SubsetScorer
from amoebasearch.plan.layerwise import LayerRunner
from amoebasearch.plan.select import METRICS, ModelEvaluator, block_influence, make_metric, removal_metric
from amoebasearch.plots import save_png
from amoebasearch.quality import Perplexity

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_METRIC = "kl"  # ranks single-layer removals best on unseen text (docs/design.md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-tokens", type=int, default=2048)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--max-remove", type=int, default=15)
    parser.add_argument("--metric", choices=METRICS, default=DEFAULT_METRIC, help="the DP's calibration metric")
    parser.add_argument("--beam", type=int, default=1, help="layer sets kept per DP cell")
    parser.add_argument(
        "--split-ends", action=argparse.BooleanOptionalAction, default=True, help="DP beam per ending (plan's default)"
    )
    parser.add_argument(
        "--baselines-from",
        help="an earlier depth_selection.csv on the same split: reuse its baseline rows (they do not depend on the DP)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="random baseline seeds")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(2)
    RESULTS.mkdir(parents=True, exist_ok=True)

    loaded = load()
    model = loaded.model
    split = calibration_split(loaded.tokenizer, None, args.seq_len, args.calib_tokens, args.eval_tokens, seed=0)
    num_layers, max_remove = loaded.dims.num_layers, args.max_remove
    print(f"calibration {split.settings['calibration_tokens']} tokens, held-out {split.settings['held_out_tokens']}")

    # -- DP (timed) and the cost of one naive evaluation
    runner = LayerRunner(model, split.calibration, args.batch_size)
    start = time.perf_counter()
    evaluator = ModelEvaluator(runner, make_metric(args.metric, runner))  # KL: includes the reference pass
    progress = lambda t: print(f"  DP row {t.rows_done - 1}", end="\r", flush=True)  # noqa: E731
    table = dp_depth(evaluator, num_layers, max_remove, on_row=progress, beam=args.beam, split_ends=args.split_ends)
    dp_wall = time.perf_counter() - start
    dp_work = runner.full_evaluations()
    eval_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        evaluator.evaluate(frozenset())
        eval_times.append(time.perf_counter() - t0)
    per_eval = statistics.median(eval_times)
    # the naive DP runs both candidates of every kept entry through the whole network: for the paper's
    # DP that count is exact; with split ends every scored "remove" candidate has one "keep" twin
    naive_evals = 2 * table.evaluations if args.split_ends else naive_dp_evaluations(num_layers, max_remove)
    timing = {
        "dp_wall_s": round(dp_wall, 1),
        "dp_candidate_evaluations": table.evaluations,
        "dp_work_in_full_evaluations": round(dp_work, 1),
        "full_evaluation_s": round(per_eval, 3),
        "naive_dp_evaluations": naive_evals,
        "naive_dp_estimated_s": round(naive_evals * per_eval, 1),
        "speedup_vs_naive": round(naive_evals * per_eval / dp_wall, 2),
        "num_layers": num_layers,
        "max_remove": max_remove,
        "dp_metric": args.metric,
        "dp_beam": args.beam,
        "dp_split_ends": args.split_ends,
        **split.settings,
    }
    print(f"\nDP: {dp_wall:.0f} s; naive DP estimate {naive_evals} x {per_eval:.2f} s = {naive_evals * per_eval:.0f} s")

    # -- baselines on the same calibration chunks (or their rows from an earlier run on the same split)
    earlier = reusable_rows(args.baselines_from, split.settings) if args.baselines_from else None
    selections = {"dp": from_table(table)}
    if earlier is None:
        selections["bi"] = by_scores("bi", block_influence(runner), max_remove)
        selections["ppl"] = by_scores("ppl", removal_metric(runner, Perplexity(split.calibration)), max_remove)
        selections["last"] = drop_last(num_layers, max_remove)
    randoms = [random_removal(num_layers, max_remove, seed) for seed in range(args.seeds)] if earlier is None else []

    # -- held-out (and calibration) perplexity of every selection
    held_out = SubsetScorer(model, split.held_out, batch_size=args.batch_size)
    calib = SubsetScorer(model, split.calibration, batch_size=args.batch_size)
    rows = [] if earlier is None else earlier.to_dict("records")
    full_heldout, full_calib = held_out(()), calib(())
    rows = [row for row in rows if row["method"] != "full"]
    rows.append(
        {
            "method": "full",
            "removed": 0,
            "depth": num_layers,
            "heldout_ppl": full_heldout,
            "calib_ppl": full_calib,
            "layers_removed": "",
        }
    )
    for m in range(1, max_remove + 1):
        for name, selection in selections.items():
            removed = selection.removal[m]
            rows.append(
                {
                    "method": name,
                    "removed": m,
                    "depth": num_layers - m,
                    "heldout_ppl": held_out(removed),
                    "calib_ppl": calib(removed),
                    "layers_removed": " ".join(map(str, removed)),
                }
            )
        if earlier is not None:
            continue
        seed_ppl = [held_out(r.removal[m]) for r in randoms]
        for seed, value in enumerate(seed_ppl):
            rows.append(
                {
                    "method": f"random-{seed}",
                    "removed": m,
                    "depth": num_layers - m,
                    "heldout_ppl": value,
                    "calib_ppl": None,
                    "layers_removed": " ".join(map(str, randoms[seed].removal[m])),
                }
            )
        rows.append(
            {
                "method": "random",
                "removed": m,
                "depth": num_layers - m,
                "heldout_ppl": statistics.mean(seed_ppl),
                "calib_ppl": None,
                "layers_removed": f"mean of {args.seeds} seeds",
            }
        )
        pd.DataFrame(rows).to_csv(RESULTS / "depth_selection.csv", index=False)
        print(f"  evaluated m={m}", end="\r")

    frame = pd.DataFrame(rows).sort_values(["removed", "method"], kind="stable")
    frame.to_csv(RESULTS / "depth_selection.csv", index=False)
    wide = frame[frame.method.isin(["dp", "bi", "ppl", "last", "random"])].pivot(
        index="removed", columns="method", values="heldout_ppl"
    )
    wide = wide[["dp", "bi", "ppl", "last", "random"]]
    wide["best"] = wide.idxmin(axis=1)
    others = wide[["bi", "ppl", "last", "random"]].min(axis=1)
    timing["dp_lowest_heldout_at"] = f"{int((wide.dp < others).sum())}/{len(wide)} depths"
    timing["dp_tied_lowest_heldout_at"] = f"{int((wide.dp == others).sum())}/{len(wide)} depths"
    timing["full_model_heldout_ppl"] = full_heldout
    (RESULTS / "depth_selection.json").write_text(json.dumps({"timing": timing, "machine": machine()}, indent=1) + "\n")

    print(f"\nheld-out perplexity (full model {full_heldout:.2f}), layers removed of {num_layers}:")
    print(wide.round(2).to_string())
    print(json.dumps(timing, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, style in [("dp", "o-"), ("bi", "s--"), ("ppl", "^--"), ("last", "v:"), ("random", "x:")]:
        ax.plot(wide.index, wide[name], style, label=name if name != "dp" else "DP (ours)")
    ax.axhline(full_heldout, color="grey", lw=0.8, label="full model")
    ax.set_yscale("log")
    ax.set_xlabel(f"layers removed (of {num_layers})")
    ax.set_ylabel("held-out perplexity (log)")
    ax.set_title(f"SmolLM2-135M depth selection, KJV ({split.settings['calibration_tokens']} calibration tokens)")
    ax.legend()
    fig.tight_layout()
    save_png(fig, RESULTS / "depth_selection.png")


def reusable_rows(path: str, settings: dict) -> pd.DataFrame:
    """The non-DP rows of an earlier run, refused unless it used the same split (its JSON sidecar)."""
    earlier = json.loads(Path(path).with_suffix(".json").read_text())["timing"]
    keys = ("data", "seq_len", "calibration_tokens", "held_out_tokens", "seed", "corpus_tokens")
    if any(earlier.get(k) != settings.get(k) for k in keys):
        raise SystemExit(f"{path} was measured on another split: rerun without --baselines-from")
    frame = pd.read_csv(path)
    return frame[frame.method != "dp"]


if __name__ == "__main__":
    main()
