"""Pareto fronts (quality vs latency) from evaluated shapes and any number of latency tables.

Quality is a property of the supernet, latency a property of the device: a shape evaluated once
can be priced on every table. So fronts are computed from two plain artefacts:

* a *qualities* CSV (`search.qualities`), one row per evaluated shape (``selection, depth, heads,
  ffn, layers, quality, metric, model, signature``), written by `find` (every shape in its quality
  cache) and by ``benchmarks/pareto_fronts.py`` (the whole shape space plus baseline layer selections);
* latency tables (measured or estimated) of the same model signature.

``selection`` names how the layers and widths were chosen (e.g. ``dp+importance`` for a plan,
``bi`` for ShortGPT's block influence): fronts are only compared within one selection, except
for the baseline overlay, where depth-only curves of other selections sit beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from amoebasearch.errors import UsageError
from amoebasearch.plots import Curve
from amoebasearch.profile.predict import point_model
from amoebasearch.profile.table import LatencyTable, folder_label
from amoebasearch.quality import HIGHER_IS_BETTER, METRIC_LABELS
from amoebasearch.search.qualities import COLUMNS, qualities_frame, read_qualities, shape_of, write_qualities
from amoebasearch.search.study import Candidate, pareto_front
from amoebasearch.shape import ModelDims

# the qualities CSV's readers and writers and the metrics' names are part of this module's API
# (the notebooks and benchmarks/pareto_fronts.py use them from here)
__all__ = [
    "COLUMNS",
    "HIGHER_IS_BETTER",
    "METRIC_LABELS",
    "candidates",
    "curves_frame",
    "device_fronts",
    "front_curve",
    "main_selection",
    "qualities_frame",
    "read_qualities",
    "selection_fronts",
    "shape_of",
    "table_label",
    "tables_for",
    "write_qualities",
]


def main_selection(frame: pd.DataFrame) -> str:
    """The selection with the most evaluated shapes: the searched supernet, not a baseline curve."""
    return str(frame["selection"].value_counts().idxmax())


def table_label(table: LatencyTable) -> str:
    meta = table.meta
    threads = f" · {table.threads} thread{'s' if table.threads > 1 else ''}" if table.threads else ""
    return f"{meta['device']['name']} · {meta['runtime']['name']} · {meta.get('dtype', '?')}{threads}"


def candidates(
    frame: pd.DataFrame, table: LatencyTable, phase: str = "decode", batch: int = 1, context: int = 128
) -> list[Candidate]:
    """Every row of ``frame`` priced on ``table`` (latency in ms)."""
    if table.signature != frame["signature"].iloc[0]:
        raise UsageError(
            f"{table.path} was profiled for signature {table.signature}, but the qualities are for "
            f"{frame['model'].iloc[0]} ({frame['signature'].iloc[0]}): use tables of that model"
        )
    point = point_model(table, phase, batch, context)
    dims = ModelDims(**table.meta["model"]["dims"])
    out = []
    for number, (_, row) in enumerate(frame.iterrows(), start=1):
        shape = shape_of(row)
        try:
            shape.validate(dims)
        except UsageError as err:
            where = frame.attrs.get("path", "the qualities")
            raise UsageError(f"{where}, row {number}: {err}") from None
        out.append(Candidate(shape, point.predict(shape) / 1000.0, float(row["quality"])))
    return out


def front_curve(label: str, points: Sequence[Candidate], metric: str, estimated: bool = False, marker="o") -> Curve:
    front = pareto_front(list(points), HIGHER_IS_BETTER[metric])
    shapes = [str(c.shape) for c in front]
    return Curve(label, [c.latency_ms for c in front], [c.quality for c in front], estimated, marker, shapes)


def curves_frame(curves: Sequence[Curve]) -> pd.DataFrame:
    """The points of ``curves`` as rows (curve, estimated, latency_ms, quality, shape) for a CSV."""
    rows = [
        {
            "curve": curve.label,
            "estimated": curve.estimated,
            "latency_ms": latency,
            "quality": quality,
            "shape": curve.shapes[i] if i < len(curve.shapes) else "",
        }
        for curve in curves
        for i, (latency, quality) in enumerate(zip(curve.latency_ms, curve.quality, strict=True))
    ]
    return pd.DataFrame(rows, columns=["curve", "estimated", "latency_ms", "quality", "shape"])


def tables_for(frame: pd.DataFrame, folder: str | Path, phase: str, batch: int, context: int) -> list[LatencyTable]:
    """Every table in ``folder`` of the qualities' model that holds the (phase, batch, context)
    point, measured tables first."""
    from amoebasearch.profile.predict import table_points
    from amoebasearch.profile.table import candidate_tables, load_table

    signature = str(frame["signature"].iloc[0])
    tables = [load_table(path, signature) for path in candidate_tables(Path(folder), signature)]
    usable = [t for t in tables if (phase, batch, context) in table_points(t)]
    if not usable:
        raise UsageError(
            f"no latency table in {folder_label(Path(folder))} for {frame['model'].iloc[0]} at {phase} "
            f"batch {batch} context {context}: run `amoebasearch profile` (or pass --profile TABLE.csv)"
        )
    return sorted(usable, key=lambda t: (t.estimated, str(t.path)))


def device_fronts(
    frame: pd.DataFrame,
    tables: Sequence[LatencyTable],
    phase: str = "decode",
    batch: int = 1,
    context: int = 128,
    selection: str | None = None,
) -> list[Curve]:
    """One front per table (device x runtime x dtype) for the searched selection."""
    selection = selection or main_selection(frame)
    rows = frame[frame["selection"] == selection]
    metric = str(frame["metric"].iloc[0])
    labels = [table_label(t) for t in tables]
    labels = [  # two tables of one device and runtime (e.g. re-profiled): say where each came from
        f"{label} ({Path(t.path).parent})" if labels.count(label) > 1 else label
        for label, t in zip(labels, tables, strict=True)
    ]
    return [
        front_curve(label, candidates(rows, t, phase, batch, context), metric, t.estimated)
        for label, t in zip(labels, tables, strict=True)
    ]


def selection_fronts(
    frame: pd.DataFrame,
    table: LatencyTable,
    phase: str = "decode",
    batch: int = 1,
    context: int = 128,
    selection: str | None = None,
) -> list[Curve]:
    """On one table: the depth x width front, the depth-only and width-only fronts of the same
    selection, and the depth-only fronts of every baseline selection (ShortGPT, drop-last, ...).
    """
    selection = selection or main_selection(frame)
    metric = str(frame["metric"].iloc[0])
    rows = frame[frame["selection"] == selection]
    full_heads, full_ffn, full_depth = rows["heads"].max(), rows["ffn"].max(), rows["depth"].max()
    parts = [
        (f"{selection}: depth × width", rows, "o"),
        (f"{selection}: depth only", rows[(rows["heads"] == full_heads) & (rows["ffn"] == full_ffn)], "s"),
        (f"{selection}: width only", rows[rows["depth"] == full_depth], "^"),
    ]
    for other in sorted(set(frame["selection"]) - {selection}):
        parts.append((f"{other}: depth only", frame[frame["selection"] == other], "x"))
    return [
        front_curve(label, candidates(part, table, phase, batch, context), metric, table.estimated, marker)
        for label, part, marker in parts
        if not part.empty
    ]
