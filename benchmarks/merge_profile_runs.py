"""Merge two runs of one table (same model, device, runtime, dtype) point by point.

A run on a machine held for a limited time can end before a wide grid's validation does (H200:
the default grid, batch 1 x context 128, finished with 66 validated subnets; a second run over
batch 1,8 x context 128,2048 measured all 600 rows but validated 36 subnets before it ended).
Each grid point of a table is self-contained: its rows, its validation rows and its calibration
(fitted on that point's calibration subnets) belong to one run. So a point is taken whole from
the first run that has it, and the other run fills in the rest; the sidecar is the primary run's,
with the union of grids and calibrations, the validation summary recomputed, and ``merged_from``
naming which run gave which point.

``--take phase/batch/context`` takes a point from the secondary run even where the primary has
it. The use: a re-validation of an unchanged table (AMD EPYC: `profile --resume
--phases prefill --validate 50` on a copy of the shipped compile table, on a calmer host); its
block rows equal the primary's, so only the validation and calibration change, and the table's
profiling time is not counted twice.

    python benchmarks/merge_profile_runs.py PRIMARY.csv SECONDARY.csv OUT.csv [--take prefill/1/128]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from amoebasearch.profile import load_table
from amoebasearch.profile.predict import calibration_key
from amoebasearch.profile.table import LatencyTable, validation_path
from amoebasearch.profile.validate import summary

POINT = ["phase", "batch", "context"]


def points(frame: pd.DataFrame) -> set[tuple]:
    return set(frame[POINT].itertuples(index=False, name=None))


def take(frame: pd.DataFrame, chosen: set[tuple]) -> pd.DataFrame:
    return frame[[key in chosen for key in frame[POINT].itertuples(index=False, name=None)]]


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two runs' block rows at one point are the same measurement (a copied table)."""
    columns = ["block", "heads", "ffn", "median_us"]
    ordered = [frame[columns].sort_values(columns[:3]).reset_index(drop=True) for frame in (a, b)]
    return ordered[0].equals(ordered[1])


def merge(
    primary: LatencyTable, secondary: LatencyTable, take_points: set[tuple] = frozenset()
) -> tuple[LatencyTable, pd.DataFrame]:
    if primary.signature != secondary.signature or primary.meta["runtime"] != secondary.meta["runtime"]:
        raise SystemExit("merge_profile_runs: the two tables differ in model or runtime: nothing to merge")
    if primary.meta["device"].get("uuid") != secondary.meta["device"].get("uuid"):
        raise SystemExit("merge_profile_runs: the two tables come from different devices: nothing to merge")
    missing = take_points - points(secondary.rows)
    if missing:
        raise SystemExit(f"merge_profile_runs: --take {sorted(missing)}: the secondary run has no such point")
    first = points(primary.rows) - take_points
    second = (points(secondary.rows) - points(primary.rows)) | take_points
    # points whose block rows the secondary measured (not a re-validation of the primary's rows)
    measured = {p for p in second if not same_rows(take(primary.rows, {p}), take(secondary.rows, {p}))}
    rows = pd.concat([take(primary.rows, first), take(secondary.rows, second)], ignore_index=True)
    checks = [pd.read_csv(validation_path(t.path)) for t in (primary, secondary)]
    validation = pd.concat([take(checks[0], first), take(checks[1], second)], ignore_index=True)
    meta = dict(primary.meta)
    filled = {calibration_key(*p) for p in second}
    meta["calibration"] = {
        **{k: v for k, v in primary.meta.get("calibration", {}).items() if k not in filled},
        **{k: v for k, v in secondary.meta.get("calibration", {}).items() if k in filled},
    }
    meta["settings"] = {
        **primary.meta["settings"],
        "grid": [{"phase": p, "batch": b, "context": c} for p, b, c in sorted(first | second)],
        "profile_seconds": primary.meta["settings"]["profile_seconds"]
        + (secondary.meta["settings"]["profile_seconds"] if measured else 0.0),
    }
    meta["merged_from"] = [
        {
            "table": str(t.path),
            "points": sorted(calibration_key(*p) for p in chosen),
            "revalidated": sorted(calibration_key(*p) for p in chosen if t is secondary and p not in measured),
            "versions": t.meta.get("versions"),
            # how its points were measured (the merged sidecar's own settings are the primary's)
            "settings": {k: v for k, v in t.meta["settings"].items() if k != "grid"},
        }
        for t, chosen in ((primary, first), (secondary, second))
    ]
    meta["validation"] = {**primary.meta["validation"], "summary": summary(validation).to_dict("records")}
    if "validation_partial" in secondary.meta:
        meta["secondary_validation_partial"] = secondary.meta["validation_partial"]
    return LatencyTable(rows, meta), validation


def point_argument(text: str) -> tuple[str, int, int]:
    phase, batch, context = text.split("/")
    return phase, int(batch), int(context)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("primary", type=Path)
    parser.add_argument("secondary", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--take",
        action="append",
        default=[],
        type=point_argument,
        metavar="PHASE/BATCH/CONTEXT",
        help="take this point from the secondary run even where the primary has it (repeatable)",
    )
    args = parser.parse_args(argv)
    table, validation = merge(load_table(args.primary), load_table(args.secondary), set(args.take))
    table.save(args.out)
    validation.to_csv(validation_path(args.out), index=False)
    print(summary(validation).to_string(index=False))
    print(f"wrote {args.out} (+ sidecar and validation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
