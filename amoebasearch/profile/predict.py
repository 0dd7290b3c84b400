"""Price a `Shape` from a latency table: embedding + kept blocks at their width + head + overhead.

Block latency does not depend on the layer index (the profiler checks this), and every kept
layer of a shape has the same width, so the sum over kept blocks is ``depth x block(heads, ffn)``.
Tables of engines timed on whole models (`profile.engine`) add a per-width ``tail`` once.
An optional per-grid-point calibration ``scale * raw + offset`` (fitted by ``validate.py`` on
a calibration split of measured subnets) absorbs what composition misses, such as cache
effects between blocks. Lookups are precomputed once per table, so a call is a few dict hits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from amoebasearch.errors import UsageError
from amoebasearch.ordering import Ordering
from amoebasearch.profile.table import LatencyTable
from amoebasearch.shape import ModelDims, Shape, ShapeSpace, saved_ffn_step

FIXED_BLOCKS = ("embedding", "head", "overhead")


@dataclass(frozen=True)
class PointModel:
    """Everything needed to price any shape at one (phase, batch, context) point."""

    fixed_us: float
    block_us: dict[tuple[int, int], float]
    scale: float = 1.0
    offset_us: float = 0.0
    tail_us: dict[tuple[int, int], float] = field(default_factory=dict)

    def raw(self, shape: Shape) -> float:
        try:
            block = self.block_us[(shape.heads, shape.ffn)]
        except KeyError:
            widths = sorted(self.block_us)
            raise UsageError(
                f"the table has no decoder row for heads={shape.heads} ffn={shape.ffn}; "
                f"profiled widths run from {widths[0]} to {widths[-1]}"
            ) from None
        return self.fixed_us + self.tail_us.get((shape.heads, shape.ffn), 0.0) + shape.depth * block

    def predict(self, shape: Shape) -> float:
        return self.scale * self.raw(shape) + self.offset_us


def calibration_key(phase: str, batch: int, context: int) -> str:
    """How a table's sidecar names a grid point's calibration (JSON keys are strings)."""
    return f"{phase}/{int(batch)}/{int(context)}"


def build_lookup(table: LatencyTable, calibrated: bool = True) -> dict[tuple[str, int, int], PointModel]:
    """Group a table's rows into one `PointModel` per (phase, batch, context)."""
    calibration = table.meta.get("calibration", {}) if calibrated else {}
    models: dict[tuple[str, int, int], PointModel] = {}
    for (phase, batch, context), group in table.rows.groupby(["phase", "batch", "context"]):
        medians = {(r.block, int(r.heads), int(r.ffn)): float(r.median_us) for r in group.itertuples()}
        missing = [b for b in FIXED_BLOCKS if (b, 0, 0) not in medians]
        blocks = {(h, f): us for (b, h, f), us in medians.items() if b == "decoder"}
        tails = {(h, f): us for (b, h, f), us in medians.items() if b == "tail"}
        if missing or not blocks:
            continue  # an unfinished grid point (interrupted run) cannot price anything yet
        fit = calibration.get(calibration_key(phase, batch, context), {})
        models[(str(phase), int(batch), int(context))] = PointModel(
            fixed_us=sum(medians[(b, 0, 0)] for b in FIXED_BLOCKS),
            block_us=blocks,
            scale=float(fit.get("scale", 1.0)),
            offset_us=float(fit.get("offset_us", 0.0)),
            tail_us=tails,
        )
    return models


def table_points(table: LatencyTable) -> set[tuple[str, int, int]]:
    """The (phase, batch, context) points the table can price (lookups built once per table)."""
    if table._lookup is None:
        table._lookup = build_lookup(table)
    return set(table._lookup)


def point_model(table: LatencyTable, phase: str, batch: int, context: int) -> PointModel:
    table_points(table)
    try:
        return table._lookup[(phase, int(batch), int(context))]
    except KeyError:
        points = ", ".join(f"{p} batch {b} context {c}" for p, b, c in sorted(table._lookup)) or "none complete"
        raise UsageError(
            f"the latency table has no complete rows for {phase} at batch {batch}, context {context} "
            f"(complete points: {points}): profile that point with --phases/--batch/--context "
            "(`amoebasearch profile --resume` finishes an interrupted table)"
        ) from None


def predict_latency(shape: Shape, table: LatencyTable, phase: str = "decode", batch: int = 1, context: int = 128):
    """Predicted latency of one ``phase`` call of subnet ``shape``, in microseconds."""
    return point_model(table, phase, batch, context).predict(shape)


def table_space(table: LatencyTable, ordering: Ordering | None = None) -> ShapeSpace:
    """The shape space a table prices (dims and FFN step from its sidecar), its layers picked by
    ``ordering`` (a plan's; identity when None)."""
    dims = ModelDims(**table.meta["model"]["dims"])
    step = saved_ffn_step(table.meta.get("settings", {}).get("ffn_step", 64), dims)
    return ShapeSpace(dims, ordering, ffn_step=step)


def phase_predictors(table: LatencyTable, batch: int = 1, context: int = 128) -> dict[str, Callable[[Shape], float]]:
    """phase -> predicted latency in ms, for every phase the table holds at (batch, context)."""
    phases = sorted({p for p, b, c in table_points(table) if (b, c) == (batch, context)})
    if not phases:
        point_model(table, "decode", batch, context)  # raises the one-line error naming what exists
    models = {phase: point_model(table, phase, batch, context) for phase in phases}
    return {phase: (lambda shape, m=model: m.predict(shape) / 1000.0) for phase, model in models.items()}
