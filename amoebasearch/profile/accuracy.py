"""How accurate a measured table's predictions are on its held-out subnets, and the bar they
must meet before they are trusted as they are.

The profiler publishes, per grid point, held-out subnets timed end to end beside their calibrated
prediction. This module turns those rows into the figures the project reports (share within
+-5 % and +-10 %, MAPE) and judges them against one bar, so that ``profile`` (its closing
summary), ``find`` (a warning before it prices a point that misses) and
``benchmarks/latency_predictor.py`` (the published scores) can never disagree on what "met"
means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from amoebasearch.profile.table import LatencyTable, read_validation, validation_path


@dataclass(frozen=True)
class AccuracyBar:
    """The project's bar for a measured table, per grid point, over held-out subnets."""

    min_subnets: int = 50
    within_5pct: float = 0.95
    within_10pct: float = 0.99
    mape_pct: float = 2.0

    def shortfalls(self, stats: Mapping) -> list[str]:
        """What in ``stats`` (``n``, ``within_5pct``, ``within_10pct``, ``mape_pct``) falls short;
        empty when the point meets the bar."""
        out = []
        if stats["n"] < self.min_subnets:
            out.append(f"{stats['n']} held-out subnets (bar {self.min_subnets})")
        if stats["within_5pct"] < self.within_5pct:
            out.append(f"{_share(stats['within_5pct'])} within +-5% (bar {self.within_5pct:.0%})")
        if stats["within_10pct"] < self.within_10pct:
            out.append(f"{_share(stats['within_10pct'])} within +-10% (bar {self.within_10pct:.0%})")
        if stats["mape_pct"] > self.mape_pct:
            out.append(f"MAPE {stats['mape_pct']:.2f}% (bar {self.mape_pct:g}%)")
        return out

    def met(self, stats: Mapping) -> bool:
        return not self.shortfalls(stats)


BAR = AccuracyBar()


def _share(value: float) -> str:
    """A share in whole per cent, rounded down, so a miss never reads as the bar (94.9 % is "94%")."""
    return f"{math.floor(value * 100 + 1e-9)}%"


def at_point(validation: pd.DataFrame, phase: str, batch: int, context: int) -> pd.DataFrame:
    """The validation rows of one table point, calibration and held-out alike."""
    return validation[
        (validation["phase"] == phase) & (validation["batch"] == batch) & (validation["context"] == context)
    ]


def point_rows(validation: pd.DataFrame, phase: str, batch: int, context: int) -> pd.DataFrame:
    """The held-out validation rows of one table point."""
    rows = at_point(validation, phase, batch, context)
    return rows[rows["split"] == "heldout"]


def accuracy(rows: pd.DataFrame) -> dict[str, float]:
    """``n``, share within +-5 % and +-10 % and MAPE of ``predicted_us`` against ``measured_us``."""
    error = ((rows["predicted_us"] - rows["measured_us"]) / rows["measured_us"] * 100).abs()
    return {
        "n": len(rows),
        "within_5pct": float((error <= 5).mean()),
        "within_10pct": float((error <= 10).mean()),
        "mape_pct": float(error.mean()),
    }


def validation_warning(table: LatencyTable, phase: str, batch: int, context: int) -> str | None:
    """What a user of a *measured* table should read before trusting its prices at one point
    whose validation misses the bar; None when it meets it, and when nothing was validated there
    (`find` reports that with its margin: "no validation file")."""
    if table.estimated or table.path is None:
        return None  # an estimated table carries its own warning
    path = validation_path(Path(table.path))
    if not path.is_file():
        return None
    rows = point_rows(read_validation(path), phase, batch, context)
    shortfalls = BAR.shortfalls(accuracy(rows)) if len(rows) else []
    if not shortfalls:
        return None
    return (
        f"warning: {Path(table.path).name}'s predictions miss the accuracy bar at {phase} batch {batch} "
        f"context {context} ({'; '.join(shortfalls)}): measured latencies may stray from them by more than "
        "+-5%; the auto margin allows for what validation saw, or re-profile with --validate 50 on a calm host"
    )
