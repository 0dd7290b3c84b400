"""How much of a table's held-out error is the validation's own measurement noise.

A validation prices each seeded subnet from the table and compares it with one measurement of it
(the median of ``instances`` independently allocated copies, in one run). Where copies of one
program differ by several per cent (ONNX Runtime decode sessions on a 2-core CPU: 4-8 %), that
reference carries noise of its own, which the held-out error counts as the predictor's. This
re-scores several tables of one device x runtime (each table's uncalibrated composition, the
calibration refitted on the same calibration split, as `validate.finish_validation` does)
against several validation runs of the same seeded subnets: each run alone, the geometric mean
of every pair, and of all runs together. If the share within +-5 % climbs as runs are pooled, the
misses were the reference's noise, and a validation timing more copies per subnet
(``profile --validate-instances``) measures the table more truly; if it stays, they are the
table's or the composition's.

    python benchmarks/validation_noise.py --tables A.csv B.csv --validations X.validation.csv Y.validation.csv \
        [--point decode/1/128] [--tag=-name]

Writes benchmarks/results/validation_noise<tag>.csv.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))

from composition_variants import composed_scores  # noqa: E402

from amoebasearch.profile.accuracy import at_point  # noqa: E402
from amoebasearch.profile.predict import build_lookup  # noqa: E402
from amoebasearch.profile.table import load_table  # noqa: E402
from amoebasearch.profile.validate import calibration_subnets  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DEFAULT_SUBNETS, DEFAULT_CALIBRATION = 66, 16  # `profile --validate 50` (+ its default --calibrate 16), seed 0
SUBNET = ["subnet", "split", "depth", "heads", "ffn"]


def point_rows(path: Path, point: tuple[str, int, int]) -> pd.DataFrame:
    frame = pd.read_csv(path)
    if (frame["split"] == "pending").any():  # a validation cut short: split its subnets as the default run would
        calibration = calibration_subnets(DEFAULT_SUBNETS, DEFAULT_CALIBRATION, seed=0)
        frame["split"] = ["calibration" if i in calibration else "heldout" for i in frame["subnet"]]
    return at_point(frame, *point).sort_values("subnet").reset_index(drop=True)


def pooled(runs: dict[str, pd.DataFrame], names: tuple[str, ...]) -> pd.DataFrame:
    """The first run's subnets with the geometric mean of ``names``' measurements of each."""
    first = runs[names[0]]
    for name in names[1:]:
        if not first[SUBNET].equals(runs[name][SUBNET]):
            raise SystemExit(f"{name} validated other subnets than {names[0]} (another --seed or split)")
    logs = np.mean([np.log(runs[n]["measured_us"].to_numpy(float)) for n in names], axis=0)
    return first.assign(measured_us=np.exp(logs))


def label(path: Path) -> str:
    """The run's folder (a table or validation beside others of the same name), or folder/stem for a kept copy."""
    stem = path.name.split(".")[0]
    return path.parent.name if stem.startswith("smollm2-") else f"{path.parent.name}/{stem}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", type=Path, required=True, help="table CSVs of one device x runtime")
    parser.add_argument("--validations", nargs="+", type=Path, required=True, help="validation CSVs, same seed")
    parser.add_argument("--point", default="decode/1/128", help="phase/batch/context")
    parser.add_argument("--tag", default="", help="suffix of the output file name")
    args = parser.parse_args(argv)
    phase, batch, context = args.point.split("/")
    point = (phase, int(batch), int(context))

    runs = {label(p): point_rows(p, point) for p in args.validations}
    models = {label(t): build_lookup(load_table(t), calibrated=False)[point] for t in args.tables}
    pools = [names for size in range(1, len(runs) + 1) for names in itertools.combinations(runs, size)]
    rows = []
    for names in pools:
        group = pooled(runs, names)
        # validations of the first tables timed one copy and have no `instances` column (`validate.summary` alike)
        copies = int(sum(runs[n].get("instances", pd.Series([1])).median() for n in names))
        for table, model in models.items():
            rows.append(
                {"table": table, "validations": " + ".join(names), "runs": len(names), "copies": copies}
                | composed_scores(group, model.fixed_us, model.block_us)
            )
    frame = pd.DataFrame(rows)
    out = RESULTS / f"validation_noise{args.tag}.csv"
    frame.to_csv(out, index=False)
    shown = frame.assign(
        within_5pct=(frame["within_5pct"] * 100).round().astype(int),
        within_10pct=(frame["within_10pct"] * 100).round().astype(int),
        mape_pct=frame["mape_pct"].round(2),
    )
    print(shown.to_string(index=False))
    by_runs = shown.pivot_table(index="table", columns="runs", values="within_5pct", aggfunc="median")
    print(f"\nheld-out within +-5 % (%), median over the pools of each size (columns: runs pooled):\n{by_runs}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
