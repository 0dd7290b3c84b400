"""`amoebasearch plot fronts|table`: the notebooks' figures as PNG files, without Jupyter."""

from __future__ import annotations

import argparse
from pathlib import Path

from amoebasearch.options import positive_int


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "plot",
        help="write Pareto-front and latency-table figures as PNG",
        description="fronts: quality vs predicted latency for every latency table of the model, plus the "
        "depth-only / width-only / baseline fronts on one reference table. table: one table's latency vs "
        "depth and vs width (prefill and decode).",
    )
    kinds = parser.add_subparsers(dest="figure", metavar="FIGURE", parser_class=type(parser))
    kinds.required = True

    fronts = kinds.add_parser("fronts", help="Pareto fronts from a qualities CSV and latency tables")
    fronts.add_argument("--qualities", required=True, help="qualities CSV (written by `find` as qualities.csv)")
    fronts.add_argument(
        "--profiles", action="append", help="folder of latency tables, repeatable (default profiles/ unless --profile)"
    )
    fronts.add_argument("--profile", action="append", help="a latency table CSV, repeatable")
    fronts.add_argument("--reference", help="table for the selection figure (default: first measured table)")
    add_point_arguments(fronts, phase=True)
    fronts.add_argument("--out", default="runs/plots", help="folder for the PNG and CSV files (default runs/plots)")
    fronts.set_defaults(run=run_fronts)

    table = kinds.add_parser("table", help="latency vs depth and vs width of one table (AmoebaLLM Fig. 1)")
    table.add_argument("--profile", required=True, help="latency table CSV")
    add_point_arguments(table, phase=False)
    table.add_argument("--out", default="runs/plots", help="folder for the PNG (default runs/plots)")
    table.set_defaults(run=run_table)


def add_point_arguments(parser: argparse.ArgumentParser, phase: bool) -> None:
    if phase:
        parser.add_argument("--phase", choices=("decode", "prefill"), default="decode", help="(default decode)")
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size of the table point (default 1)")
    parser.add_argument("--context", type=positive_int, default=128, help="context length (default 128)")


def run_fronts(args: argparse.Namespace) -> int:
    from amoebasearch import atomic, fronts
    from amoebasearch.plots import plot_fronts, save_png
    from amoebasearch.profile.table import load_table
    from amoebasearch.quality import HIGHER_IS_BETTER, METRIC_LABELS

    frame = fronts.read_qualities(args.qualities)
    point = (args.phase, args.batch, args.context)
    signature, model = str(frame["signature"].iloc[0]), str(frame["model"].iloc[0])
    tables = [load_table(path, signature, model) for path in args.profile or []]
    folders = args.profiles or ([] if args.profile else ["profiles"])
    given = {Path(path).resolve() for path in args.profile or []}
    tables += [
        table
        for folder in folders
        for table in fronts.tables_for(frame, folder, *point)
        if table.path is None or Path(table.path).resolve() not in given  # a table passed both ways: once
    ]
    reference = load_table(args.reference, signature, model) if args.reference else tables[0]
    metric = str(frame["metric"].iloc[0])
    label = METRIC_LABELS[metric]
    where = f"{args.phase}, batch {args.batch}, context {args.context}"
    by_device = fronts.device_fronts(frame, tables, *point)
    by_selection = fronts.selection_fronts(frame, reference, *point)
    out = Path(args.out)
    stem = f"{args.phase}-b{args.batch}-c{args.context}"
    written = []
    for name, curves, title in (
        (f"fronts-by-device-{stem}", by_device, f"{model}: Pareto fronts per device ({where})"),
        (f"fronts-by-selection-{stem}", by_selection, f"{model} on {fronts.table_label(reference)} ({where})"),
    ):
        figure = plot_fronts(curves, quality_label=label, title=title)
        written.append(save_png(figure, out / f"{name}.png"))
        written.append(atomic.write_text(out / f"{name}.csv", fronts.curves_frame(curves).to_csv(index=False)))
    for curve in by_device:
        best = min(curve.quality) if not HIGHER_IS_BETTER[metric] else max(curve.quality)
        print(
            f"{curve.label}{' (estimated)' if curve.estimated else ''}: {len(curve.latency_ms)} front points, "
            f"{min(curve.latency_ms):.3g}-{max(curve.latency_ms):.3g} ms, best {label} {best:.4g}"
        )
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def run_table(args: argparse.Namespace) -> int:
    from amoebasearch.plots import plot_latency_table, save_png
    from amoebasearch.profile.predict import phase_predictors, table_space
    from amoebasearch.profile.table import load_table

    table = load_table(args.profile)
    label = f"{table.meta['model']['name']} on {table.meta['device']['name']} · {table.meta['runtime']['name']}"
    source = " (estimated)" if table.estimated else ""
    figure = plot_latency_table(
        phase_predictors(table, args.batch, args.context),
        table_space(table),
        title=f"{label}{source}, batch {args.batch}, context {args.context}",
    )
    path = save_png(figure, Path(args.out) / f"{Path(args.profile).stem}-b{args.batch}-c{args.context}.png")
    print(f"wrote {path}")
    return 0
