"""Merge two runs of one table (same model, device, runtime, dtype) point by point.

The command-line shell of `amoebasearch.profile.merge.merge_runs`, which says what is taken from
which run. The shipped H200 CUDA-graph table is two runs merged so (the default grid with all 66
subnets validated, and batch 1,8 x context 128,2048, whose validation a second run finished);
the AMD EPYC compile and onnxruntime tables each take one re-validated or re-measured point
with ``--take``. ``merged_from`` in their sidecars names the runs.

    python scripts/merge_profile_runs.py PRIMARY.csv SECONDARY.csv OUT.csv [--take prefill/1/128]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from amoebasearch.errors import UsageError
from amoebasearch.profile import load_table
from amoebasearch.profile.merge import merge_runs
from amoebasearch.profile.table import validation_path
from amoebasearch.profile.validate import summary


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
    runs = [load_table(path) for path in (args.primary, args.secondary)]
    checks = [pd.read_csv(validation_path(table.path)) for table in runs]
    try:
        table, validation = merge_runs(runs[0], checks[0], runs[1], checks[1], args.take)
    except UsageError as err:
        raise SystemExit(f"merge_profile_runs: {err}") from None
    table.save(args.out)
    validation.to_csv(validation_path(args.out), index=False)
    print(summary(validation).to_string(index=False))
    print(f"wrote {args.out} (+ sidecar and validation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
