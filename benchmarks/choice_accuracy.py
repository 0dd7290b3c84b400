"""Multiple-choice accuracy of SmolLM2-135M subnets on the default cloze task (`find --metric accuracy`).

The task is the one `find` builds with no --data: 200 seeded items from the embedded KJV chapters
that no calibration chunk of the plan touched; a 48-word context, the true next 12 words and 3
equally long spans of other chapters (chance 25 %). Each shape is scored through the plan's
elastic forward exactly as `find` does (`QualitySource`), next to its held-out perplexity.

Usage: python benchmarks/choice_accuracy.py --plan benchmarks/results/plan-dp-importance-512tok.json
Writes benchmarks/results/choice_accuracy.csv and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pandas as pd
from fingerprint import machine

from amoebasearch.elastic import elastic_logits
from amoebasearch.planfile import Plan
from amoebasearch.search.find import FindRequest, QualitySource
from amoebasearch.shape import ShapeSpace

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = [(30, 9, 1536), (24, 9, 1536), (24, 6, 1024), (20, 9, 1536), (20, 6, 768), (15, 9, 1536), (15, 3, 512)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True)
    parser.add_argument("--eval-items", type=int, default=200)
    parser.add_argument("--eval-tokens", type=int, default=2048)
    args = parser.parse_args()

    from amoebasearch.models import load

    loaded = load("smollm2-135m")
    plan = Plan.load(args.plan, loaded.model.config)
    space = ShapeSpace(loaded.dims, plan.ordering)
    logits_fn = elastic_logits(loaded.model, plan.ordering)
    sources = {}
    for metric in ("accuracy", "ppl"):
        request = FindRequest(budget_ms=1.0, metric=metric, eval_items=args.eval_items, eval_tokens=args.eval_tokens)
        source = QualitySource(request, plan)
        start = time.perf_counter()
        sources[metric] = source.evaluator(logits_fn, loaded.tokenizer)
        print(f"{metric}: task built in {time.perf_counter() - start:.1f}s")
    items = sources["accuracy"].items
    context = statistics.mean(len(item.context) for item in items)
    ending = statistics.mean(len(e) for item in items for e in item.endings)
    print(f"{len(items)} items, mean context {context:.1f} tokens, mean ending {ending:.1f} tokens")

    rows = []
    for depth, heads, ffn in SHAPES:
        shape = space.shape(depth, heads, ffn)
        start = time.perf_counter()
        accuracy = sources["accuracy"](shape)
        accuracy_s = time.perf_counter() - start
        start = time.perf_counter()
        ppl = sources["ppl"](shape)
        ppl_s = time.perf_counter() - start
        row = {"depth": depth, "heads": heads, "ffn": ffn, "params_share": round(shape_share(shape, space), 3)}
        row.update(accuracy=accuracy, accuracy_s=round(accuracy_s, 1), ppl=round(ppl, 3), ppl_s=round(ppl_s, 1))
        rows.append(row)
        print(row, flush=True)
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False))
    RESULTS.mkdir(exist_ok=True)
    frame.to_csv(RESULTS / "choice_accuracy.csv", index=False)
    meta = {"plan": args.plan, "items": len(items), "mean_context_tokens": round(context, 1)}
    meta.update(mean_ending_tokens=round(ending, 1), eval_tokens=args.eval_tokens, machine=machine(), rows=rows)
    (RESULTS / "choice_accuracy.json").write_text(json.dumps(meta, indent=1) + "\n")


def shape_share(shape, space) -> float:
    """Decoder parameters kept, as a share of the full model's (attention ~ heads, FFN ~ channels)."""
    dims = space.dims
    attention = 2 * dims.hidden * dims.head_dim * (shape.heads + dims.num_kv_heads)
    full_attention = 2 * dims.hidden * dims.head_dim * (dims.num_heads + dims.num_kv_heads)
    return (
        shape.depth
        * (attention + 3 * dims.hidden * shape.ffn)
        / (dims.num_layers * (full_attention + 3 * dims.hidden * dims.ffn))
    )


if __name__ == "__main__":
    main()
