"""What dividing each validation group by its sentinel ratio would do to the predictor's error.

A diagnostic, not the published error (that is `latency_predictor.py`): for every measured
table's ``.validation.csv``, per phase, the held-out share within +-5 % / +-10 % and the MAPE
with the raw end-to-end measurement and with the measurement divided by the group's sentinel
ratio (calibration refitted on the corrected values), the sentinel's spread across groups, and
what leave-one-out over the calibration subnets would have chosen.

The correction is not used by the harness: its candidate rule (correct when the sentinel's
spread across groups exceeds the 2 % tolerance) made every phase of the two tables validated
after the rule was written down worse (`profiles/README.md`).

    python benchmarks/drift_correction.py [--profiles profiles/]

Writes benchmarks/results/drift_correction.csv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from amoebasearch.profile.table import load_table
from amoebasearch.profile.validate import GROUP_SIZE, apply_calibration, fit_calibration, group_sentinels, summary

RESULTS = Path(__file__).parent / "results"


def corrected(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["measured_us"] = out["measured_us"] / out["sentinel_ratio"].fillna(1.0)
    return out


def scored(frame: pd.DataFrame, table) -> pd.DataFrame:
    table.meta["calibration"] = fit_calibration(frame[frame["split"] == "calibration"])
    table._lookup = None
    return summary(apply_calibration(frame, table)).set_index("phase")


def loo_mape(frame: pd.DataFrame) -> float:
    """Mean |error| % of each calibration subnet predicted by the fit on the others."""
    calibration = frame[frame["split"] == "calibration"]
    errors = []
    for index in calibration.index:
        fit = next(iter(fit_calibration(calibration.drop(index)).values()))
        predicted = fit["scale"] * calibration.at[index, "composed_us"] + fit["offset_us"]
        errors.append(abs(predicted / calibration.at[index, "measured_us"] - 1) * 100)
    return sum(errors) / len(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=Path, default=Path(__file__).parent.parent / "profiles")
    args = parser.parse_args()
    rows = []
    for path in sorted(args.profiles.glob("*.validation.csv")):
        validation = pd.read_csv(path)
        table = load_table(str(path).removesuffix(".validation.csv") + ".csv")
        raw, fixed = scored(validation, table), scored(corrected(validation), table)
        for phase, frame in validation.groupby("phase"):
            sentinels = group_sentinels(frame.to_dict("records"), GROUP_SIZE)
            per_group = pd.Series([value for groups in sentinels.values() for value in groups.values()])
            loo_raw, loo_fixed = loo_mape(frame), loo_mape(corrected(frame))
            rows.append(
                {
                    "table": path.name.removesuffix(".validation.csv"),
                    "phase": phase,
                    "sentinel_sd": round(per_group.std(), 4),
                    **{f"raw_{k}": raw.at[phase, k] for k in ("within_5pct", "within_10pct", "mape_pct")},
                    **{f"corrected_{k}": fixed.at[phase, k] for k in ("within_5pct", "within_10pct", "mape_pct")},
                    "loo_raw_mape": round(loo_raw, 3),
                    "loo_corrected_mape": round(loo_fixed, 3),
                    "loo_choice": "corrected" if loo_fixed < loo_raw else "raw",
                }
            )
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False))
    RESULTS.mkdir(parents=True, exist_ok=True)
    frame.to_csv(RESULTS / "drift_correction.csv", index=False)
    print(f"wrote {RESULTS / 'drift_correction.csv'}")


if __name__ == "__main__":
    main()
