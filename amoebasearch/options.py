"""Config fields that are also command-line flags, and the parsers of the values users type.

A config dataclass declares a flag beside the field it sets, once::

    steps: int = option(1000, type=positive_int, help="optimizer steps (default 1000)")

`amoebasearch.cli.options` adds one argparse argument per such field (``--steps``) and builds the
dataclass back from the parsed flags, so a new option is one new field. The library declares and
never parses: `cli` alone builds parsers. The value parsers are argparse types; they raise
`argparse.ArgumentTypeError`, whose message argparse prints after the flag's name.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, dataclass, field
from typing import Any

FLAG = "amoebasearch.flag"  # the metadata key of a field's `Flag`


@dataclass(frozen=True)
class Flag:
    """How a config field reads as a flag. ``help`` is argparse's (``%%`` for a percent sign)."""

    help: str
    name: str | None = None  # default: --field-name
    type: Callable[[str], Any] | None = None
    choices: Sequence[Any] | None = None
    metavar: str | None = None
    nargs: str | None = None
    negatable: bool = False  # --name / --no-name; unset (None) when neither is given
    unset: bool = False  # the flag defaults to None, so a verb can tell "not given" from the field's default


def option(
    default: Any = MISSING,
    *,
    help: str,
    name: str | None = None,
    type: Callable[[str], Any] | None = None,
    choices: Sequence[Any] | None = None,
    metavar: str | None = None,
    nargs: str | None = None,
    negatable: bool = False,
    unset: bool = False,
    default_factory: Callable[[], Any] | Any = MISSING,
) -> Any:
    """A dataclass field that is also a flag. A bool field is a switch: ``--name`` sets it when its
    default is False; a True default needs a ``name`` such as ``--no-distill``, which clears it. An
    ``unset`` flag that is not given leaves the field at its default (the verb may derive one)."""
    if default is True and name is None and not negatable:
        raise TypeError("a switch that clears a True field needs its name, such as --no-distill")
    flag = Flag(help, name, type, choices, metavar, nargs, negatable, unset)
    return field(default=default, default_factory=default_factory, metadata={FLAG: flag})


def flag_of(config_field: Field) -> Flag | None:
    """The `Flag` a field was declared with, or None for a field that is no flag."""
    return config_field.metadata.get(FLAG)


def flag_name(config_field: Field) -> str:
    """``--field-name``, or the name the field's flag was given."""
    flag = flag_of(config_field)
    return (flag and flag.name) or "--" + config_field.name.replace("_", "-")


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


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], list]:
    """A comma-separated grid axis: an empty item is a typo (refused), a repeated one is dropped
    (a point is measured once); no item at all ("" or ",") is an empty list, which the verb names."""

    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",")]
        if not any(items):
            return []
        if "" in items:
            raise argparse.ArgumentTypeError(f"{text!r} has an empty item: write values like 1,8")
        try:
            values = [kind(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__}") from None
        return list(dict.fromkeys(values))

    return parse
