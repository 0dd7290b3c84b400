"""Arguments and look-ups shared by several verbs (the value parsers are `amoebasearch.options`)."""

from __future__ import annotations

import argparse

from amoebasearch.models import DEFAULT_MODEL, MODEL_HELP
from amoebasearch.planfile import PLAN_HELP


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)


def add_plan_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", help=PLAN_HELP)


def plan_from_args(args: argparse.Namespace, config):
    """The plan named by --plan (checked against the model), or the identity plan."""
    from amoebasearch.planfile import Plan

    if getattr(args, "plan", None):
        return Plan.load(args.plan, config)
    return Plan.identity(config)
