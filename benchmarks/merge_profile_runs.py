"""Merge two runs of one table (same model, device, runtime, dtype) point by point.

A lease on a lent GPU can end before a wide grid's validation does (stop 22, H200: the default
grid, batch 1 x context 128, finished with 66 validated subnets; a second run over batch 1,8 x
context 128,2048 measured all 600 rows but validated 36 subnets before the device time ran out).
Each grid point of a table is self-contained: its rows, its validation rows and its calibration
(fitted on that point's calibration subnets) belong to one run. So a point is taken whole from
the first run that has it, and the other run fills in the rest; the sidecar is the primary run's,
with the union of grids and calibrations, the validation summary recomputed, and ``merged_from``
naming which run gave which point.

    python benchmarks/merge_profile_runs.py PRIMARY.csv SECONDARY.csv OUT.csv
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


def merge(primary: LatencyTable, secondary: LatencyTable) -> tuple[LatencyTable, pd.DataFrame]:
    if primary.signature != secondary.signature or primary.meta["runtime"] != secondary.meta["runtime"]:
        raise SystemExit("merge_profile_runs: the two tables differ in model or runtime: nothing to merge")
    if primary.meta["device"].get("uuid") != secondary.meta["device"].get("uuid"):
        raise SystemExit("merge_profile_runs: the two tables come from different devices: nothing to merge")
    first, second = points(primary.rows), points(secondary.rows) - points(primary.rows)
    rows = pd.concat([primary.rows, take(secondary.rows, second)], ignore_index=True)
    checks = [pd.read_csv(validation_path(t.path)) for t in (primary, secondary)]
    validation = pd.concat([take(checks[0], first), take(checks[1], second)], ignore_index=True)
    meta = dict(primary.meta)
    filled = {calibration_key(*p) for p in second}
    meta["calibration"] = {
        **{k: v for k, v in secondary.meta.get("calibration", {}).items() if k in filled},
        **primary.meta.get("calibration", {}),
    }
    meta["settings"] = {
        **primary.meta["settings"],
        "grid": [{"phase": p, "batch": b, "context": c} for p, b, c in sorted(first | second)],
        "profile_seconds": primary.meta["settings"]["profile_seconds"] + secondary.meta["settings"]["profile_seconds"],
    }
    meta["merged_from"] = [
        {
            "table": str(t.path),
            "points": sorted(calibration_key(*p) for p in chosen),
            "versions": t.meta.get("versions"),
        }
        for t, chosen in ((primary, first), (secondary, second))
    ]
    meta["validation"] = {**primary.meta["validation"], "summary": summary(validation).to_dict("records")}
    if "validation_partial" in secondary.meta:
        meta["secondary_validation_partial"] = secondary.meta["validation_partial"]
    return LatencyTable(rows, meta), validation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("primary", type=Path)
    parser.add_argument("secondary", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    table, validation = merge(load_table(args.primary), load_table(args.secondary))
    table.save(args.out)
    validation.to_csv(validation_path(args.out), index=False)
    print(summary(validation).to_string(index=False))
    print(f"wrote {args.out} (+ sidecar and validation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
