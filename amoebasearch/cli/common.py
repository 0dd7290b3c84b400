"""Arguments and look-ups shared by several verbs."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

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


def positive_int_up_to(maximum: int, why: str) -> Callable[[str], int]:
    """`positive_int` with a ceiling, for counts whose cost grows with them (``why`` says how)."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"{value:,} is over {maximum:,}: {why}")
        return value

    return parse


def finite_float(text: str, minimum: float = 0.0, inclusive: bool = True) -> float:
    """A finite number at or above ``minimum`` (above it, unless ``inclusive``): nan and inf
    would reach the trainer or the timing harness and fail far from the flag that caused them."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    if value < minimum or (value == minimum and not inclusive):
        bound = "at least" if inclusive else "above"
        raise argparse.ArgumentTypeError(f"{value:g} must be {bound} {minimum:g}")
    return value


def positive_float(text: str) -> float:
    return finite_float(text, 0.0, inclusive=False)


def non_negative_float(text: str) -> float:
    return finite_float(text, 0.0)


def add_plan_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", help="plan JSON from `amoebasearch plan` (default: identity ordering)")


def plan_from_args(args: argparse.Namespace, config):
    """The plan named by --plan (checked against the model), or the identity plan."""
    from amoebasearch.planfile import Plan

    if getattr(args, "plan", None):
        return Plan.load(args.plan, config)
    return Plan.identity(config)
