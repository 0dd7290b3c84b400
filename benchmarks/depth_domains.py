"""Depth selection across kinds of text: does each method's layer set hold on text it never saw?

For every calibration domain (`domains.py`: KJV prose, the Python Language Reference, ShareGPT
chat), each depth method chooses the removed layers for 1..max_remove on that domain's
calibration chunks, exactly as ``amoebasearch plan --method M`` would. Every chosen set is then
scored by held-out perplexity on each domain's held-out chunks, drawn from documents no
calibration chunk touched: the same domain (the user's own text) and the other two (cross-domain
rows). ``validated`` is the plan's generalising selection (`amoebasearch.plan.validated`);
``dp`` the DP on all calibration chunks; ``bi`` ShortGPT block influence; ``ppl``
Shortened-LLaMA one-shot perplexity; ``last`` drops the last layers.

    python benchmarks/depth_domains.py [--domains kjv,python-docs,sharegpt] [--methods validated,bi,ppl,last]
        [--max-remove 8] [--calib-tokens 2048] [--eval-tokens 2048] [--calib-seq-len 64] [--tag=-name]

Writes benchmarks/results/depth_selection-domains{tag}.csv (columns calibrated_on, domain,
method, removed, depth, heldout_ppl, layers_removed) after every calibration domain, and .json
with each method's wall time per domain, per-depth winners and the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from domains import DOMAINS, domain_split
from fingerprint import machine

from amoebasearch import atomic
from amoebasearch.cli.profile import comma_list
from amoebasearch.models import load
from amoebasearch.plan.depth import DEPTH_METHODS
from amoebasearch.plan.evaluate import SubsetScorer
from amoebasearch.plan.select import default_split_ends, select_depth

RESULTS = Path(__file__).resolve().parent / "results"


def winners(frame: pd.DataFrame) -> dict:
    """Per calibration domain and scored domain: depths each method is lowest at (ties count for
    every tied method), and whether ``validated`` is never above ``bi`` and ``ppl``."""
    out = {}
    for (calibrated_on, domain), group in frame.groupby(["calibrated_on", "domain"]):
        wide = group.pivot(index="removed", columns="method", values="heldout_ppl")
        lowest = wide.min(axis=1)
        entry = {f"lowest_{m}": int((wide[m] <= lowest * (1 + 1e-9)).sum()) for m in wide.columns}
        entry["depths"] = len(wide)
        if {"validated", "bi", "ppl"} <= set(wide.columns):
            above = wide.validated > wide[["bi", "ppl"]].min(axis=1) * (1 + 1e-9)
            entry["validated_never_above_bi_and_ppl"] = not above.any()
            entry["validated_above_baselines_at"] = [int(m) for m in wide.index[above]]
        out[f"{calibrated_on}->{domain}"] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=comma_list(str), default=list(DOMAINS))
    parser.add_argument("--methods", type=comma_list(str), default=["validated", "bi", "ppl", "last"])
    parser.add_argument("--max-remove", type=int, default=8)
    parser.add_argument("--calib-tokens", type=int, default=2048)
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per held-out chunk")
    parser.add_argument("--calib-seq-len", type=int, help="tokens per calibration chunk (default --seq-len)")
    parser.add_argument(
        "--in-stream-order",
        action="store_true",
        help="calibration chunks in document-stream order: validated selection's fit and validation "
        "halves then come from different documents",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--split-ends", action=argparse.BooleanOptionalAction, help="the DP's split ends (default: plan's, per method)"
    )
    parser.add_argument(
        "--search-dtype", choices=("bfloat16", "float32"), default="bfloat16", help="plan's default bfloat16"
    )
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    unknown = [m for m in args.methods if m not in DEPTH_METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}: choose from {', '.join(DEPTH_METHODS)}")
    loaded = load()
    model, tokenizer = loaded.model, loaded.tokenizer
    splits = {
        d: domain_split(
            tokenizer, d, args.seq_len, args.calib_tokens, args.eval_tokens, 0, args.calib_seq_len, args.in_stream_order
        )
        for d in args.domains
    }
    scorers = {d: SubsetScorer(model, held, batch_size=args.batch_size) for d, (_, held, _) in splits.items()}
    csv_path = RESULTS / f"depth_selection-domains{args.tag}.csv"
    rows, walls = [], {}
    for calibrated_on, (calibration, _, _) in splits.items():
        for method in args.methods:
            started = time.perf_counter()
            selection = select_depth(
                model,
                calibration,
                method,
                max_remove=args.max_remove,
                batch_size=args.batch_size,
                split_ends=default_split_ends(method) if args.split_ends is None else args.split_ends,
                dtype=getattr(torch, args.search_dtype),
            )
            walls.setdefault(calibrated_on, {})[method] = round(time.perf_counter() - started, 1)
            print(f"{calibrated_on}: {method} in {walls[calibrated_on][method]} s", flush=True)
            for domain, scorer in scorers.items():
                for m in range(1, args.max_remove + 1):
                    removed = selection.removal[m]
                    rows.append(
                        {
                            "calibrated_on": calibrated_on,
                            "domain": domain,
                            "method": method,
                            "removed": m,
                            "depth": loaded.dims.num_layers - m,
                            "heldout_ppl": scorer(removed),
                            "layers_removed": " ".join(map(str, removed)),
                            "chosen_from": selection.chosen_from.get(m, method),
                            **{f"estimate_{k}": v for k, v in selection.validation.get(m, {}).items()},
                        }
                    )
        atomic.write_text(csv_path, pd.DataFrame(rows).to_csv(index=False))
    frame = pd.DataFrame(rows)
    full = {d: scorer(()) for d, scorer in scorers.items()}
    summary = {
        "settings": {**vars(args), "splits": {d: s for d, (_, _, s) in splits.items()}},
        "full_model_heldout_ppl": full,
        "wall_s": walls,
        "winners": winners(frame),
        "machine": machine(),
    }
    atomic.write_text(csv_path.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    for key, entry in summary["winners"].items():
        print(key, entry)
    print(f"wrote {csv_path} and .json")


if __name__ == "__main__":
    main()
