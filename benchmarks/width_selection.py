"""Width ranking quality on the real SmolLM2-135M and real text (the KJV corpus).

Held-out perplexity of the full-depth model at a uniform FFN width (all heads kept) and at a
uniform query-head count (all FFN channels kept), with heads/channels ranked by activation-aware
importance (ours), L1 weight magnitude, and random (mean of seeds). Scores come from the
calibration chunks; perplexity from disjoint held-out chunks.

Writes benchmarks/results/width_selection.{csv,png,json}; the JSON holds timing and the machine.
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
from amoebasearch.ordering import Ordering
from amoebasearch.plan.width import importance_scores, magnitude_scores, random_scores
from amoebasearch.plots import save_png
from amoebasearch.quality import shape_metric
from amoebasearch.shape import Shape

RESULTS = Path(__file__).resolve().parent / "results"
FFN_RATIOS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-tokens", type=int, default=1024)
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=3, help="random baseline seeds")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(2)
    RESULTS.mkdir(parents=True, exist_ok=True)

    loaded = load()
    model, dims = loaded.model, loaded.dims
    split = calibration_split(loaded.tokenizer, None, args.seq_len, args.calib_tokens, args.eval_tokens, seed=0)
    layers = tuple(range(dims.num_layers))

    start = time.perf_counter()
    scores = {"importance": importance_scores(model, split.calibration, args.batch_size)}
    importance_s = time.perf_counter() - start
    scores["magnitude"] = magnitude_scores(model)
    for seed in range(args.seeds):
        scores[f"random-{seed}"] = random_scores(dims, seed)
    orderings = {
        name: Ordering({dims.num_layers: layers}, s.head_order(dims), s.ffn_order()).validate(dims)
        for name, s in scores.items()
    }

    def ppl(name: str, heads: int, ffn: int) -> float:
        return shape_metric(
            model, Shape(layers, heads, ffn), orderings[name], split.held_out, batch_size=args.batch_size
        )

    full = ppl("importance", dims.num_heads, dims.ffn)
    rows = []
    settings = [("ffn", r, dims.num_heads, int(round(r * dims.ffn))) for r in FFN_RATIOS]
    settings += [
        ("heads", k / dims.heads_per_group, dims.num_kv_heads * k, dims.ffn) for k in range(1, dims.heads_per_group)
    ]
    for axis, ratio, heads, ffn in settings:
        for name in orderings:
            rows.append(
                {
                    "axis": axis,
                    "ratio": ratio,
                    "heads": heads,
                    "ffn": ffn,
                    "method": name,
                    "heldout_ppl": ppl(name, heads, ffn),
                }
            )
        seeds = [r["heldout_ppl"] for r in rows[-len(orderings) :] if r["method"].startswith("random-")]
        rows.append(
            {
                "axis": axis,
                "ratio": ratio,
                "heads": heads,
                "ffn": ffn,
                "method": "random",
                "heldout_ppl": statistics.mean(seeds),
            }
        )
        pd.DataFrame(rows).to_csv(RESULTS / "width_selection.csv", index=False)
        print(f"  {axis} {ratio:.3f} done", end="\r")

    frame = pd.DataFrame(rows)
    frame.to_csv(RESULTS / "width_selection.csv", index=False)
    methods = ["importance", "magnitude", "random"]
    summary = {"full_model_heldout_ppl": full, "importance_scoring_s": round(importance_s, 2), **split.settings}
    print(f"\nheld-out perplexity (full model {full:.2f})")
    for axis in ("ffn", "heads"):
        wide = frame[(frame.axis == axis) & frame.method.isin(methods)].pivot(
            index="ratio", columns="method", values="heldout_ppl"
        )[methods]
        wide["best"] = wide.idxmin(axis=1)
        summary[f"importance_lowest_{axis}"] = f"{int((wide['best'] == 'importance').sum())}/{len(wide)} ratios"
        print(f"\nvs {axis} ratio:")
        print(wide.round(2).to_string())
    (RESULTS / "width_selection.json").write_text(
        json.dumps({"summary": summary, "machine": machine()}, indent=1) + "\n"
    )
    print(json.dumps(summary, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, axis, label in [
        (axes[0], "ffn", "FFN width ratio (all heads)"),
        (axes[1], "heads", "query-head ratio (all FFN)"),
    ]:
        part = frame[frame.axis == axis]
        for name, style in [("importance", "o-"), ("magnitude", "s--"), ("random", "x:")]:
            line = part[part.method == name]
            ax.plot(line.ratio, line.heldout_ppl, style, label=name if name != "importance" else "importance (ours)")
        ax.axhline(full, color="grey", lw=0.8, label="full model")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out perplexity (log)")
        ax.legend()
    fig.suptitle(f"SmolLM2-135M width selection, KJV ({split.settings['calibration_tokens']} calibration tokens)")
    fig.tight_layout()
    save_png(fig, RESULTS / "width_selection.png")


if __name__ == "__main__":
    main()
