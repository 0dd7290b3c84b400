"""Whether the predictor's misses are the table's or the host's, and whether a richer composition fixes them.

A diagnostic, not the published error (that is `latency_predictor.py`). Two parts:

1. **Repeat validations of one table** (the same seeded subnets measured again, e.g. two
   validations of the AMD EPYC onnxruntime table on different days): per point, the correlation of each subnet's error
   between the two runs after each group's mean error is taken out (what is left of host drift).
   High means the error follows the subnet, i.e. the table's rows or the composition, not noise;
   more repeats of the validation cannot remove it.
2. **Composition variants**, every validation file under ``--folders``, every point with >= 20
   held-out subnets: the held-out share within +-5 % / +-10 % and MAPE of the shipped model
   (``scale * composed + offset``, fitted on the calibration split) and of variants that price
   a block differently, refitted on the same split: ``heads-scale`` (one block scale per query
   head count, for a bias shared by all FFN widths of a head count), block rows smoothed
   over the widths (``bilinear`` in heads x FFN, ``heads-linear`` / ``heads-quadratic`` in FFN per
   head count: per-width noise in the table averaged out), calibrations with one more term
   (``+depth``, ``+depth*heads``, ``+depth*ffn``: a per-block cost the rows miss, overall or
   growing with a width), and, where another run measured the same table (same file name in
   another folder, other rows), its rows (``other-run``) and the two runs' geometric mean
   (``two-run-mean``): if the misses were the rows' measurement noise, a second measurement
   would move them and the mean would shrink them.

    python benchmarks/composition_variants.py [--folders profiles benchmarks/results/*/]

Writes benchmarks/results/composition_variants.csv and composition_repeats.csv.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))

from amoebasearch.profile.accuracy import accuracy  # noqa: E402
from amoebasearch.profile.predict import build_lookup  # noqa: E402
from amoebasearch.profile.table import load_table  # noqa: E402
from amoebasearch.profile.validate import GROUP_SIZE  # noqa: E402

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results"
POINT = ["phase", "batch", "context"]


def relative_fit(features: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Least squares on relative error (rows weighted by 1/measured), as `fit_calibration` does."""
    weight = 1.0 / measured
    coef, *_ = np.linalg.lstsq(features * weight[:, None], measured * weight, rcond=None)
    return coef


def smoothed(blocks: dict[tuple[int, int], float], design) -> dict[tuple[int, int], float]:
    """Block rows replaced by a least-squares fit (relative error) of ``design(heads, ffn)``, per
    group of widths that ``design`` returns a key for."""
    groups: dict = {}
    for width in blocks:
        key, _ = design(*width)
        groups.setdefault(key, []).append(width)
    out = {}
    for widths in groups.values():
        x = np.array([design(*w)[1] for w in widths], dtype=float)
        y = np.array([blocks[w] for w in widths])
        coef = relative_fit(x, y) if len(widths) >= x.shape[1] else np.linalg.lstsq(x, y, rcond=None)[0]
        out.update(zip(widths, x @ coef, strict=True))
    return out


SMOOTHERS = {
    "bilinear": lambda h, f: (0, [1.0, h, f, h * f]),
    "heads-linear": lambda h, f: (h, [1.0, f]),
    "heads-quadratic": lambda h, f: (h, [1.0, f, f * f]),
}


def scored(group: pd.DataFrame, predicted: np.ndarray) -> dict[str, float]:
    """Held-out scores of ``predicted`` (one price per row of ``group``) against its measurements."""
    rows = group.assign(predicted_us=predicted)
    stats = accuracy(rows[rows["split"] == "heldout"])
    return {k: round(float(stats[k]), 4) for k in ("within_5pct", "within_10pct", "mape_pct")}


def composed_scores(group: pd.DataFrame, fixed_us: float, blocks: dict[tuple[int, int], float]) -> dict[str, float]:
    """Held-out scores of pricing ``group``'s subnets as ``fixed_us + depth x blocks[width]``, with
    the shipped calibration (scale and offset) refitted on the group's calibration split."""
    calibration = (group["split"] == "calibration").to_numpy()
    widths = zip(group["heads"].astype(int), group["ffn"].astype(int), strict=True)
    composed = fixed_us + group["depth"].to_numpy(float) * np.array([blocks[w] for w in widths])
    features = np.c_[composed, np.ones_like(composed)]
    measured = group["measured_us"].to_numpy(float)
    return scored(group, features @ relative_fit(features[calibration], measured[calibration]))


def variants(group: pd.DataFrame, point, other=None) -> dict[str, dict[str, float]]:
    """Held-out scores of each way to price ``group``'s subnets at one point (``point`` = the
    table's uncalibrated `PointModel`; ``other`` = another run's, or None)."""
    calibration = (group["split"] == "calibration").to_numpy()
    measured = group["measured_us"].to_numpy(float)
    depth = group["depth"].to_numpy(float)
    widths = list(zip(group["heads"].astype(int), group["ffn"].astype(int), strict=True))
    candidates = [("shipped", point.block_us)] + [
        (name, smoothed(point.block_us, design)) for name, design in SMOOTHERS.items()
    ]
    if other is not None:
        candidates += [
            ("other-run", other.block_us),
            ("two-run-mean", {w: (point.block_us[w] * other.block_us[w]) ** 0.5 for w in point.block_us}),
        ]
    out = {name: composed_scores(group, point.fixed_us, blocks) for name, blocks in candidates}
    composed = point.fixed_us + depth * np.array([point.block_us[w] for w in widths])
    heads_ffn = group[["heads", "ffn"]].to_numpy(float)
    for name, term in [
        ("+depth", depth),
        ("+depth*heads", depth * heads_ffn[:, 0]),
        ("+depth*ffn", depth * heads_ffn[:, 1]),
    ]:
        features = np.c_[composed, np.ones_like(composed), term]
        out[name] = scored(group, features @ relative_fit(features[calibration], measured[calibration]))
    heads = group["heads"].to_numpy(int)
    block = np.array([point.block_us[w] for w in widths])
    features = np.c_[np.array([depth * block * (heads == h) for h in sorted(set(heads))]).T, np.ones_like(depth)]
    out["heads-scale"] = scored(group, features @ relative_fit(features[calibration], measured[calibration]))
    return out


def validation_files(folders: list[Path]) -> list[Path]:
    return sorted({p.resolve() for folder in folders for p in folder.glob("*.validation.csv")})


def table_path(path: Path) -> Path:
    return Path(str(path).removesuffix(".validation.csv") + ".csv")


def label(path: Path) -> str:
    return f"{path.parent.name}/{path.name.removesuffix('.validation.csv').removeprefix('smollm2-135m-')}"


def other_runs(path: Path, files: list[Path]) -> list[dict]:
    """Uncalibrated lookups of the tables in other folders with ``path``'s table's file name."""
    return [
        build_lookup(load_table(table_path(f)), calibrated=False)
        for f in files
        if f.name == path.name and f != path and table_path(f).is_file()
    ]


def differing(point, others: list[dict], key: tuple):
    """The first other run's model of ``key`` whose block rows differ from ``point``'s (a re-measurement)."""
    for lookup in others:
        other = lookup.get(key)
        if other is not None and other.block_us.keys() == point.block_us.keys():
            if any(abs(other.block_us[w] - point.block_us[w]) > 1e-6 for w in point.block_us):
                return other
    return None


def variant_rows(files: list[Path]) -> pd.DataFrame:
    """Every point of every validation file, once: a point copied or merged into another folder
    (the same measurements) is scored where it is first found."""
    rows, seen = [], set()
    for path in files:
        if not table_path(path).is_file():
            continue  # a kept earlier validation of a table that lives elsewhere (a repeat only)
        lookup = build_lookup(load_table(table_path(path)), calibrated=False)
        others = other_runs(path, files)
        for key, group in pd.read_csv(path).groupby(POINT):
            point = lookup.get((str(key[0]), int(key[1]), int(key[2])))
            measurements = (key, tuple(group["measured_us"].round(3)))
            if point is None or (group["split"] == "heldout").sum() < 20 or measurements in seen:
                continue
            seen.add(measurements)
            other = differing(point, others, (str(key[0]), int(key[1]), int(key[2])))
            for name, stats in variants(group.reset_index(drop=True), point, other).items():
                rows.append({"validation": label(path), **dict(zip(POINT, key, strict=True)), "model": name, **stats})
    return pd.DataFrame(rows)


def residuals(frame: pd.DataFrame) -> pd.Series:
    """Each subnet's error less its group's mean error (the host drift a group shares)."""
    errors = frame.set_index("subnet")["error_pct"]
    return errors - errors.groupby(errors.index // GROUP_SIZE).transform("mean")


def repeat_rows(files: list[Path]) -> pd.DataFrame:
    """Pairs of validation files whose subnets and compositions agree (one table validated twice)
    and whose measurements differ (not a copy)."""
    rows = []
    for i, first in enumerate(files):
        for second in files[i + 1 :]:
            a, b = pd.read_csv(first), pd.read_csv(second)
            for key, ga in a.groupby(POINT):
                gb = b[(b[POINT] == pd.Series(dict(zip(POINT, key, strict=True)))).all(axis=1)]
                joined = ga.merge(gb, on="subnet", suffixes=("_a", "_b"))
                if len(joined) < 20 or not np.allclose(joined["composed_us_a"], joined["composed_us_b"], rtol=1e-6):
                    continue  # another table: not a repeat
                if np.allclose(joined["measured_us_a"], joined["measured_us_b"], rtol=1e-9):
                    continue  # the same measurement, copied or merged
                ra, rb = residuals(ga), residuals(gb)
                rows.append(
                    {
                        "first": label(first),
                        "second": label(second),
                        **dict(zip(POINT, key, strict=True)),
                        "subnets": len(joined),
                        "error_corr": round(joined["error_pct_a"].corr(joined["error_pct_b"]), 3),
                        "residual_corr": round(ra.corr(rb.reindex(ra.index)), 3),
                        "residual_sd_pct": round(float(pd.concat([ra, rb]).std()), 3),
                    }
                )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = [ROOT / "profiles", *sorted(p for p in RESULTS.iterdir() if p.is_dir())]
    parser.add_argument("--folders", type=Path, nargs="+", default=default)
    args = parser.parse_args(argv)
    files = validation_files(args.folders)
    repeats, table = repeat_rows(files), variant_rows(files)
    pd.set_option("display.width", 220)
    print(repeats.to_string(index=False))
    wide = table.pivot_table(index=["validation", *POINT], columns="model", values="mape_pct")
    print("\nheld-out MAPE % per composition (within +-5 % in the CSV):")
    print(wide.round(2).to_string())
    RESULTS.mkdir(exist_ok=True)
    table.to_csv(RESULTS / "composition_variants.csv", index=False)
    repeats.to_csv(RESULTS / "composition_repeats.csv", index=False)
    print(f"wrote {RESULTS / 'composition_variants.csv'} and composition_repeats.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
