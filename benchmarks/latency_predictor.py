"""Latency predictor error, from the validation files the profiler publishes.

For every measured table in ``profiles/`` with a ``<table>.validation.csv``: per device x runtime
x phase, the share of held-out subnets whose predicted latency is within +-5 % and +-10 % of the
end-to-end measurement, and the mean absolute percentage error (MAPE). Bars
(``amoebasearch.profile.accuracy.BAR``): >= 95 % within 5 %, >= 99 % within 10 %, MAPE <= 2 %, at
least 50 subnets. Measured tables that are not shipped (``benchmarks/results/retired-tables/``:
their validation missed the bar on machines that cannot be measured again) are scored beside
them with ``shipped`` False, so their figures stay published.

Per measured table point it also says how often a subnet predicted exactly at a budget meets
that budget when measured: with no margin, and with `find --margin auto` (the 95th percentile of
held-out overruns), cross-validated in two halves so no subnet sets its own margin.

Estimated tables are checked wherever a real measurement of the same device and runtime exists:
the estimated table of this CPU (``--estimate cpu-t1``) and of the H100 (``--estimate h100``),
each with efficiencies fitted on that device's measured eager block rows, predict its held-out
eager subnets measured end to end, and the H200's (``--estimate h200 --runtime cudagraph``),
fitted on its CUDA-graph block rows, its held-out CUDA-graph subnets (bar: MAPE <= 15 %).

    python benchmarks/latency_predictor.py [--profiles profiles/ [--retired FOLDER]] [--tag=-name]

Writes benchmarks/results/latency_predictor{tag}.csv, .png and .json (fingerprint, folder read).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from fingerprint import machine

from amoebasearch.plots import save_png
from amoebasearch.profile import load_table, predict_latency
from amoebasearch.profile.accuracy import BAR, point_rows
from amoebasearch.profile.estimate import DeviceSpec, describes, modelled_runtime
from amoebasearch.profile.table import validation_path
from amoebasearch.profile.validate import summary
from amoebasearch.search.margin import budget_hit_rates
from amoebasearch.shape import Shape

RESULTS = Path(__file__).parent / "results"
PROFILES = Path(__file__).parent.parent / "profiles"
RETIRED = RESULTS / "retired-tables"
ESTIMATE_BAR = 15.0


def tables(folder: Path):
    for path in sorted(folder.glob("*.csv")):
        if path.name.endswith(".validation.csv") or not path.with_suffix(".json").is_file():
            continue
        yield load_table(path)


def measured_rows(folder: Path, shipped: bool) -> list[dict]:
    out = []
    for table in tables(folder):
        vpath = validation_path(table.path)
        if table.estimated or not vpath.is_file():
            continue
        validation = pd.read_csv(vpath)
        for row in summary(validation).to_dict("records"):
            held = point_rows(validation, row["phase"], row["batch"], row["context"])
            row = {
                "device": table.meta["device"]["name"],
                "runtime": table.meta["runtime"]["name"],
                "dtype": table.meta["dtype"],
                "threads": table.threads,
                "source": "measured",
                "shipped": shipped,
                **row,
                **budget_hit_rates(held),
            }
            row["pass"] = BAR.met(row)
            out.append(row)
    return out


def estimate_rows(folder: Path, measured_folders: list[Path]) -> list[dict]:
    """Estimated tables in ``folder`` scored against held-out measurements of the same device (in
    ``measured_folders``: an estimate is checked against every real measurement, shipped or not)."""
    out = []
    measured = [t for f in measured_folders for t in tables(f) if not t.estimated]
    for estimate in (t for t in tables(folder) if t.estimated):
        spec = DeviceSpec(**estimate.meta["device"]["spec"])
        for table in measured:
            if not validation_path(table.path).is_file():
                continue
            if not describes(spec, table.meta["device"]):
                continue  # a spec sheet is scored on its own device only (an EPYC estimate says nothing of a Xeon)
            if table.meta["runtime"]["name"] != modelled_runtime(estimate):  # an estimate models one runtime
                continue
            frame = pd.read_csv(validation_path(table.path))
            held = frame[frame["split"] == "heldout"]
            for (phase, batch, context), group in held.groupby(["phase", "batch", "context"]):
                errors = []
                for r in group.itertuples():
                    shape = Shape(tuple(range(int(r.depth))), int(r.heads), int(r.ffn))
                    predicted = predict_latency(shape, estimate, phase, int(batch), int(context))
                    errors.append(abs(predicted / r.measured_us - 1) * 100)
                mape = sum(errors) / len(errors)
                out.append(
                    {
                        "device": f"{estimate.meta['device']['name']} (estimated)",
                        "runtime": f"roofline vs {table.meta['runtime']['name']}",
                        "dtype": estimate.meta["dtype"],
                        "source": "estimated",
                        "shipped": True,
                        "phase": phase,
                        "batch": int(batch),
                        "context": int(context),
                        "n": len(errors),
                        "within_5pct": sum(e <= 5 for e in errors) / len(errors),
                        "within_10pct": sum(e <= 10 for e in errors) / len(errors),
                        "mape_pct": mape,
                        "pass": mape <= ESTIMATE_BAR,
                    }
                )
    return out


def plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.device}\n{r.runtime}\n{r.phase} b{r.batch} c{r.context}" for r in frame.itertuples()]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(frame)), 4))
    colors = ["tab:blue" if s == "measured" else "tab:orange" for s in frame["source"]]
    ax.bar(range(len(frame)), frame["mape_pct"], color=colors)
    ax.axhline(BAR.mape_pct, color="tab:blue", linestyle="--", label=f"bar, measured tables ({BAR.mape_pct:g} %)")
    ax.axhline(ESTIMATE_BAR, color="tab:orange", linestyle=":", label="bar, estimated tables (15 %)")
    ax.set_xticks(range(len(frame)), labels, fontsize=7)
    ax.set_ylabel("MAPE of predicted vs measured latency (%)")
    ax.set_title("Latency predictor error on held-out extracted subnets")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=Path, default=PROFILES, help="shipped tables (default profiles/)")
    parser.add_argument(
        "--retired",
        type=Path,
        help=f"measured tables not shipped, scored beside them (default {RETIRED.relative_to(PROFILES.parent)}/ "
        "when --profiles is the default, none otherwise)",
    )
    parser.add_argument("--tag", default="", help="suffix of the result files, for a folder other than profiles/")
    args = parser.parse_args(argv)
    folder = args.profiles
    retired = args.retired or (RETIRED if folder == PROFILES else None)
    folders = [folder] + ([retired] if retired else [])
    rows = measured_rows(folder, shipped=True) + (measured_rows(retired, shipped=False) if retired else [])
    frame = pd.DataFrame(rows + estimate_rows(folder, folders))
    if frame.empty:
        print(f"no validation files in {folder}: run `amoebasearch profile --validate 50` first")
        return 1
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(frame.to_string(index=False))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"latency_predictor{args.tag}"
    frame.to_csv(f"{stem}.csv", index=False)
    plot(frame, f"{stem}.png")
    shipped = frame[(frame["source"] == "measured") & frame["shipped"]]
    print(
        f"shipped measured tables: {int(shipped['pass'].sum())} of {len(shipped)} points meet the bar; "
        f"not shipped: {int((~frame['shipped']).sum())} points (in {os.path.relpath(retired) if retired else '-'})"
    )
    where = {"profiles": os.path.relpath(folder), "retired": os.path.relpath(retired) if retired else ""}
    meta = {"machine": machine(), "bar": asdict(BAR), **where}
    Path(f"{stem}.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {stem}.csv and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
