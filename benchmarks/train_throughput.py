"""Training throughput of `amoebasearch train`'s loop: tokens per second, per variant and device.

Runs the real fine-tuning loop (sandwich sampling, SMoL, in-place distillation, AdamW, bf16
autocast on CUDA) on full-length sequences, so every step does the same work, and reports the
median step time after ``--warmup`` steps:

    python benchmarks/train_throughput.py                                   # CPU: 6 steps, batch 2, seq 128
    python benchmarks/train_throughput.py --device cuda --batch 8 --seq-len 256 --steps 24 --tag=-gpu
    python benchmarks/train_throughput.py --model .gpu/smollm2-135m --random-weights ...  # config only
    python benchmarks/train_throughput.py --dispatch --rank 8 --ffn-step 32 --steps 14 --tag=-dispatch

Throughput depends on shapes, not on weight or token values, so ``--random-weights`` builds the
real architecture from ``config.json`` (where the 98 MB weights are not at hand, e.g. a remote GPU)
and sequences are seeded random token ids, every token labelled (the loss is over all of them,
as for plain text). ``--dispatch`` swaps in SmolLM2's 30 layers at a width where FLOPs vanish, so
the step time is what the loop costs to dispatch its ops: the bound of a step on a large GPU
(an H100 ran 1.2 s steps of ~7 TFLOP). ``tokens/s`` counts each sequence once; ``subnet
tokens/s`` counts it once per sampled shape (K forward and backward passes per step).

Writes benchmarks/results/train_throughput{tag}.csv and .json (settings, machine).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from fingerprint import machine

from amoebasearch import atomic, models
from amoebasearch.data.instructions import Tokenised
from amoebasearch.models import ModelDims
from amoebasearch.planfile import Plan
from amoebasearch.profile.timing import summarize
from amoebasearch.shape import ShapeSpace
from amoebasearch.train import SMoLConfig, SMoLModel, TrainConfig, train

RESULTS = Path(__file__).parent / "results"
VARIANTS = {  # (LoRAs, top-k, distill, balance), as `train` and its ablation switches build them
    "full": (5, 2, True, True),
    "no-smol": (1, 1, True, True),
}


def random_sequences(count: int, length: int, vocab: int, seed: int) -> list[Tokenised]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (count, length), generator=generator).tolist()
    return [Tokenised(tuple(row), tuple(row)) for row in ids]


def dispatch_model(seed: int) -> tuple[torch.nn.Module, ModelDims]:
    """SmolLM2's depth and head layout at a width where FLOPs vanish (72 hidden, 192 FFN), so a
    step's time is the loop's cost of dispatching ops: what bounds a step on a large GPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=72, intermediate_size=192, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config), ModelDims.from_config(config)


def run_variant(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    if args.dispatch:
        model, dims = dispatch_model(args.seed)
    else:
        loaded = models.random_weights(args.model, seed=args.seed) if args.random_weights else models.load(args.model)
        model, dims = loaded.model, loaded.dims
    plan = Plan.identity(model.config)
    space = ShapeSpace(dims, plan.ordering, ffn_step=args.ffn_step, min_depth=min(args.min_depth, dims.num_layers))
    loras, top_k, distill, balance = VARIANTS[name]
    torch.manual_seed(args.seed)
    model = SMoLModel(
        model.to(device),
        SMoLConfig(num_loras=loras, top_k=top_k, rank=args.rank, alpha=2.0 * args.rank),
        plan.ordering,
    )
    data = random_sequences(args.steps * args.batch, args.seq_len, model.base.config.vocab_size, args.seed)
    config = TrainConfig(
        steps=args.steps, batch=args.batch, sandwich=args.sandwich, seed=args.seed, save_every=args.steps,
        distill=distill, balance=balance,
    )  # fmt: skip
    ends: list[float] = []

    def on_step(step: int, losses: list[float]) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ends.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"throughput-{name}-") as out:
        train(model, space, data, config, out, progress=False, on_step=on_step)
    # the warm-up steps are left out, and the last, which also writes the checkpoint
    steps = [b - a for a, b in zip([started, *ends[:-1]], ends, strict=True)][args.warmup : -1]
    summary = summarize(steps)  # seconds here: the summary is unit-free
    step_s = summary.median_us
    tokens = args.batch * args.seq_len
    return {
        "variant": name,
        "device": str(device),
        "timed_steps": len(steps),
        "median_step_s": round(step_s, 4),
        "p90_over_p10": round(summary.spread, 3),
        "tokens_per_step": tokens,
        "tokens_per_s": round(tokens / step_s, 1),
        "subnet_tokens_per_s": round(tokens * args.sandwich / step_s, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--random-weights", action="store_true", help="architecture from config.json, seeded weights")
    parser.add_argument("--dispatch", action="store_true", help="a 30-layer, 72-wide model: the loop's dispatch cost")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--sandwich", type=int, default=4)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--ffn-step", type=int, default=64)
    parser.add_argument("--min-depth", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="full")
    parser.add_argument("--tag", default="", help="suffix of the result files (e.g. -gpu)")
    args = parser.parse_args()
    if args.steps < args.warmup + 2:
        parser.error(f"--steps {args.steps} must be at least --warmup + 2 (the last, checkpointing step is not timed)")
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: pick from {', '.join(VARIANTS)}")

    import pandas as pd

    device = torch.device(args.device)
    rows = []
    for name in args.variants.split(","):
        rows.append(run_variant(name, args, device))
        print(
            f"{name}: {rows[-1]['tokens_per_s']:.0f} tokens/s ({rows[-1]['subnet_tokens_per_s']:.0f} subnet tokens/s), "
            f"median step {rows[-1]['median_step_s']:.3f} s over {rows[-1]['timed_steps']} steps",
            flush=True,
        )
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"train_throughput{args.tag}"
    atomic.write_text(Path(f"{stem}.csv"), table.to_csv(index=False))
    info = machine(device)
    meta = {"settings": vars(args), "machine": info, "rows": rows}
    atomic.write_text(Path(f"{stem}.json"), json.dumps(meta, indent=1) + "\n")
    print(f"wrote {stem}.csv/.json")


if __name__ == "__main__":
    main()
