"""Budget margins: how much faster than the budget a subnet must be *predicted* to run so that it
still meets the budget when *measured*.

The search picks the best shape whose predicted latency fits the budget, which puts it right on
the budget's edge, so any under-prediction (the predictor's error, the host's drift) makes the
deployed subnet miss. The table's validation file holds exactly the evidence needed: held-out
subnets timed end to end against the calibrated prediction. ``auto`` searches under
``budget / (1 + q)``, where ``q`` is the ``quantile`` of how far the measured latency ran over
the prediction on those held-out subnets at the requested point (never negative), so the chosen
subnet meets its budget as often as the validated subnets met their predictions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from amoebasearch.errors import UsageError
from amoebasearch.profile.accuracy import point_rows
from amoebasearch.profile.table import LatencyTable, read_validation, validation_path

QUANTILE = 0.95
MIN_ROWS = 10  # fewer held-out subnets than this say too little about a 95th percentile
_PERCENT = re.compile(r"^\s*(?P<value>\d+(?:\.\d*)?|\.\d+)\s*%?\s*$")


@dataclass(frozen=True)
class Margin:
    """``fraction`` of the budget reserved for prediction error, and where it came from."""

    fraction: float
    source: str

    def search_budget(self, budget_ms: float) -> float:
        return budget_ms / (1.0 + self.fraction)


def parse_margin(text: str) -> str | float:
    """``auto`` or a fraction: ``3``, ``3%`` and ``0.5%`` are percentages of the budget."""
    if str(text).strip().lower() == "auto":
        return "auto"
    match = _PERCENT.match(str(text))
    if not match or float(match["value"]) >= 100:
        raise UsageError(f"margin {text!r} is not understood: write auto, or a percentage below 100 such as 3%")
    return float(match["value"]) / 100.0


def overrun_quantile(rows: pd.DataFrame, quantile: float = QUANTILE) -> float:
    """The ``quantile`` of measured / predicted - 1 over ``rows``, floored at 0."""
    overrun = rows["measured_us"] / rows["predicted_us"] - 1.0
    return max(0.0, float(overrun.quantile(quantile)))


def validated_margin(
    validation: pd.DataFrame, phase: str, batch: int, context: int, quantile: float = QUANTILE
) -> float | None:
    """The margin for one point; None when fewer than ``MIN_ROWS`` held-out rows were validated there."""
    rows = point_rows(validation, phase, batch, context)
    return overrun_quantile(rows, quantile) if len(rows) >= MIN_ROWS else None


def budget_hit_rates(rows: pd.DataFrame, quantile: float = QUANTILE) -> dict[str, float]:
    """How often a subnet predicted exactly at a budget meets it when measured, without a margin
    and with the ``auto`` margin, judged honestly: the held-out rows are split in two halves by
    subnet, each half's margin comes from the other half, and every subnet is scored once."""
    rows = rows.sort_values("subnet")
    halves = [rows.iloc[0::2], rows.iloc[1::2]]
    met, margins = 0, []
    for scored, other in (halves, halves[::-1]):
        margin = overrun_quantile(other, quantile)
        margins.append(margin)
        met += int((scored["measured_us"] <= scored["predicted_us"] * (1.0 + margin)).sum())
    return {
        "met_no_margin": float((rows["measured_us"] <= rows["predicted_us"]).mean()),
        "met_auto_margin": met / len(rows),
        "auto_margin_pct": 100.0 * overrun_quantile(rows, quantile),
        "cross_margin_pct": 100.0 * sum(margins) / len(margins),
    }


def budget_margin(requested: str | float, table: LatencyTable, phase: str, batch: int, context: int) -> Margin:
    """The margin ``find`` applies: a fixed fraction, or ``auto`` from the table's validation."""
    if requested != "auto":
        return Margin(float(requested), "given with --margin")
    path = validation_path(table.path) if table.path else None
    if path is None or not path.is_file():
        return Margin(0.0, "none: the table has no validation file (profile it with --validate N)")
    fraction = validated_margin(read_validation(path), phase, batch, context)
    if fraction is None:
        return Margin(0.0, f"none: fewer than {MIN_ROWS} held-out subnets validated at this point in {path.name}")
    return Margin(fraction, f"{QUANTILE:.0%} of held-out overruns in {path.name}")
