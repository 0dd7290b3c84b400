"""Arguments and look-ups shared by several verbs."""

from __future__ import annotations

import argparse

from amoebasearch.models import DEFAULT_MODEL


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"embedded model name or Hugging Face checkpoint directory (default: {DEFAULT_MODEL})",
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def add_plan_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", help="plan JSON from `amoebasearch plan` (default: identity ordering)")


def plan_from_args(args: argparse.Namespace, config):
    """The plan named by --plan (checked against the model), or the identity plan."""
    from amoebasearch.planfile import Plan

    if getattr(args, "plan", None):
        return Plan.load(args.plan, config)
    return Plan.identity(config)
