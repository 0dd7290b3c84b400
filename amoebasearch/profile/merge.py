"""Merge two runs of one latency table (same model, device, runtime, dtype) point by point.

A grid point is self-contained: its block rows, its validation rows and its calibration (fitted on
that point's calibration subnets) belong to one run. So each point is taken whole from the first
run that has it and the other run fills in the rest; the merged sidecar is the primary's, with the
union of grids and calibrations, the validation summary recomputed, and ``merged_from`` naming
which run gave which point. Uses: a run that ended before a wide grid's validation did, finished
by a second run; a re-validation of unchanged block rows, taken in with ``take``.
"""

from __future__ import annotations

from collections.abc import Collection

import pandas as pd

from amoebasearch.errors import UsageError
from amoebasearch.profile.predict import calibration_key
from amoebasearch.profile.table import LatencyTable
from amoebasearch.profile.validate import summary

POINT = ["phase", "batch", "context"]
Point = tuple[str, int, int]


def points(frame: pd.DataFrame) -> set[Point]:
    """The grid points (phase, batch, context) that rows of a table or validation cover."""
    return set(frame[POINT].itertuples(index=False, name=None))


def at_points(frame: pd.DataFrame, chosen: Collection[Point]) -> pd.DataFrame:
    return frame[[key in chosen for key in frame[POINT].itertuples(index=False, name=None)]]


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two runs' block rows at one point are the same measurement (a copied table)."""
    columns = ["block", "heads", "ffn", "median_us"]
    ordered = [frame[columns].sort_values(columns[:3]).reset_index(drop=True) for frame in (a, b)]
    return ordered[0].equals(ordered[1])


def merge_runs(
    primary: LatencyTable,
    primary_validation: pd.DataFrame,
    secondary: LatencyTable,
    secondary_validation: pd.DataFrame,
    take: Collection[Point] = frozenset(),
) -> tuple[LatencyTable, pd.DataFrame]:
    """The merged table and its validation rows: each point from ``primary`` where it has it, else
    from ``secondary``; a point in ``take`` comes from ``secondary`` even where ``primary`` has it.

    A taken point whose block rows equal the primary's is a re-validation: ``merged_from`` lists it
    as ``revalidated`` and its profiling time is not counted twice.
    """
    if primary.signature != secondary.signature or primary.meta["runtime"] != secondary.meta["runtime"]:
        raise UsageError("the two tables differ in model or runtime: nothing to merge")
    if primary.meta["device"].get("uuid") != secondary.meta["device"].get("uuid"):
        raise UsageError("the two tables come from different devices: nothing to merge")
    take = set(take)
    if missing := take - points(secondary.rows):
        raise UsageError(f"cannot take {sorted(missing)}: the secondary run has no such point")
    first = points(primary.rows) - take
    second = (points(secondary.rows) - points(primary.rows)) | take
    measured = {p for p in second if not same_rows(at_points(primary.rows, {p}), at_points(secondary.rows, {p}))}

    rows = pd.concat([at_points(primary.rows, first), at_points(secondary.rows, second)], ignore_index=True)
    validation = pd.concat(
        [at_points(primary_validation, first), at_points(secondary_validation, second)], ignore_index=True
    )
    filled = {calibration_key(*p) for p in second}
    settings = primary.meta["settings"]
    meta = {
        **primary.meta,
        "calibration": {
            **{k: v for k, v in primary.meta.get("calibration", {}).items() if k not in filled},
            **{k: v for k, v in secondary.meta.get("calibration", {}).items() if k in filled},
        },
        "settings": {
            **settings,
            "grid": [{"phase": p, "batch": b, "context": c} for p, b, c in sorted(first | second)],
            "profile_seconds": settings["profile_seconds"]
            + (secondary.meta["settings"]["profile_seconds"] if measured else 0.0),
        },
        "merged_from": [
            {
                "table": str(table.path),
                "points": sorted(calibration_key(*p) for p in chosen),
                "revalidated": sorted(calibration_key(*p) for p in chosen if table is secondary and p not in measured),
                "versions": table.meta.get("versions"),
                # how its points were measured (the merged sidecar's own settings are the primary's)
                "settings": {k: v for k, v in table.meta["settings"].items() if k != "grid"},
            }
            for table, chosen in ((primary, first), (secondary, second))
        ],
        "validation": {**primary.meta["validation"], "summary": summary(validation).to_dict("records")},
    }
    if "validation_partial" in secondary.meta:
        meta["secondary_validation_partial"] = secondary.meta["validation_partial"]
    return LatencyTable(rows, meta), validation
