"""Estimated latency tables for devices we cannot touch: spec sheet + roofline + fitted efficiency.

A device's spec sheet (``specs.py``, numbers from ``device_specs.json``) prices each building
block's FLOPs, bytes and kernel launches with the roofline model (``roofline.py``), at the
efficiencies and per-kernel cost fitted on measured tables of one runtime (``fit.py``): eager's
t_kernel is the host's dispatch, a CUDA graph's the GPU's gap between kernels. This module
chooses the measured tables, builds the table over the width grid and writes it. Rows carry
``source=estimated``; replace them by running ``profile`` on the real card.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from amoebasearch.errors import UsageError
from amoebasearch.profile.blocks import Point, width_options
from amoebasearch.profile.fit import estimate_error_note, fit_efficiency, graph_work
from amoebasearch.profile.request import ProfileRequest
from amoebasearch.profile.roofline import (
    BYTES,
    DEFAULT_EFFICIENCY,
    Efficiency,
    block_cost,
    embedding_cost,
    head_cost,
    overlaps_launches,
    roofline_us,
)
from amoebasearch.profile.specs import DeviceSpec, describes, get_spec, spec_for_table
from amoebasearch.profile.table import (
    COLUMNS,
    FORMAT,
    LatencyTable,
    candidate_tables,
    folder_label,
    load_table,
    table_name,
    table_row,
)
from amoebasearch.shape import ModelDims


def _overhead_for(overhead_us: dict[tuple[str, int, int], float], point: Point) -> float:
    """The measured host overhead at this point, else at the closest measured point of the phase."""
    key = (point.phase, point.batch, point.context)
    if key in overhead_us:
        return overhead_us[key]
    same = [
        (abs(b - point.batch) + abs(c - point.context), us) for (p, b, c), us in overhead_us.items() if p == point.phase
    ]
    return min(same)[1] if same else 0.0


def estimate_table(
    spec: DeviceSpec,
    dims: ModelDims,
    vocab: int,
    model_meta: dict[str, Any],
    points: list[Point],
    dtype: str,
    eff: Efficiency,
    overhead_us: dict[tuple[str, int, int], float],
    ffn_step: int = 64,
    calibrated_on: list[str] | None = None,
    runtime: str = "eager",
) -> LatencyTable:
    """An estimated table over the full width grid; overhead (host-side glue) comes from a measured table."""
    size = BYTES[dtype]
    rows = []

    def add(block, heads, ffn, point, us):
        rows.append(table_row(block, heads, ffn, point, us, us, us, repeats=0, noisy=False, source="estimated"))

    for point in points:
        add("embedding", 0, 0, point, roofline_us(embedding_cost(dims, point, size), spec, dtype, eff))
        add("head", 0, 0, point, roofline_us(head_cost(dims, vocab, point, size), spec, dtype, eff))
        add("overhead", 0, 0, point, _overhead_for(overhead_us, point))
        for h, f in width_options(dims, ffn_step):
            add("decoder", h, f, point, roofline_us(block_cost(dims, h, f, point, size), spec, dtype, eff))
    meta = {
        "format": FORMAT,
        "source": "estimated",
        "model": model_meta,
        "device": {"kind": "spec-sheet", "name": spec.name, "spec": asdict(spec)},
        "runtime": {"name": estimate_label(runtime), "models": runtime},
        "dtype": dtype,
        "settings": {"grid": [asdict(p) for p in points], "ffn_step": ffn_step},
        "efficiency": asdict(eff),
        "calibrated_on": calibrated_on or [],
    }
    return LatencyTable(pd.DataFrame(rows, columns=list(COLUMNS)), meta)


def measured_tables(folders: Sequence[Path], signature: str, runtime: str = "eager") -> list[LatencyTable]:
    """Measured ``runtime`` tables for this model in ``folders`` (the calibration set of the estimator)."""
    paths = [path for folder in folders for path in candidate_tables(folder, signature)]
    tables = [load_table(path, signature) for path in paths]
    return [t for t in tables if t.meta.get("source") == "measured" and t.meta["runtime"].get("name") == runtime]


def modelled_runtime(table: LatencyTable) -> str:
    """The runtime an estimated table prices (older estimated tables priced eager only)."""
    return table.meta["runtime"].get("models", "eager")


def estimate_label(runtime: str) -> str:
    """The runtime part of an estimated table's name: ``roofline`` for eager (the names shipped
    from the start), ``roofline-<runtime>`` for another runtime's launch costs."""
    return "roofline" if runtime == "eager" else f"roofline-{runtime}"


def table_kind(table: LatencyTable) -> str:
    return "cpu" if table.meta["device"].get("kind") == "cpu" else "gpu"


def estimate_to_file(request: ProfileRequest) -> tuple[Path, str]:
    """`amoebasearch profile --estimate DEVICE [--runtime R] [--fit-on FOLDER ...]`: fit on the measured R
    tables in ``request.fit_on`` (default: ``request.out``), write the estimate to ``request.out``.

    ``fit_on`` lets an estimate keep learning from a measurement that is not shipped beside it
    (a table whose validation missed the bar, kept under benchmarks/results/).

    The efficiencies and per-kernel cost are a runtime's as much as a device's: eager pays the
    host's dispatch per kernel (~19 us on an H100), a replayed CUDA graph only the GPU's own
    gap between kernels (~3 us on the H200). Eager falls back on assumed GPU efficiencies when no
    table of the kind is measured; another runtime needs one measured table of its own.
    """
    from amoebasearch.models import load_config, model_signature, resolve

    spec = get_spec(request.estimate)
    config = load_config(request.model)
    name, _ = resolve(request.model)
    signature = model_signature(config)
    dims = ModelDims.from_config(config)
    dtype, runtime, out_dir = request.dtype or spec.default_dtype, request.runtime, Path(request.out)
    fit_dirs = [Path(folder) for folder in request.fit_on] if request.fit_on else [out_dir]
    where = ", ".join(folder_label(folder) for folder in fit_dirs)
    calibration = [t for t in measured_tables(fit_dirs, signature, runtime) if table_kind(t) == spec.kind]
    if spec.kind == "cpu":  # a CPU sheet is one core of a chip: its one-thread tables first, else any CPU's
        one_thread = [t for t in calibration if t.threads == 1]
        calibration = [t for t in one_thread if describes(spec, t.meta["device"])] or one_thread
    if not calibration and runtime != "eager":
        raise UsageError(
            f"no measured {runtime} table of a {spec.kind} for {name} in {where}: run "
            f"`amoebasearch profile --runtime {runtime}` on one first, or drop --runtime to estimate eager"
        )
    overlap = overlaps_launches(spec.kind, runtime)
    graphs = measured_tables(fit_dirs, signature, "cudagraph") if overlap else []
    work = graph_work(graphs, DEFAULT_EFFICIENCY.get(spec.kind)) if graphs else None
    if calibration:
        specs = [spec_for_table(t) for t in calibration]
        eff = fit_efficiency(calibration, specs, DEFAULT_EFFICIENCY.get(spec.kind), overlap, work)
        note = estimate_error_note(calibration, eff)
    elif spec.kind in DEFAULT_EFFICIENCY:
        eff = DEFAULT_EFFICIENCY[spec.kind]
        if work is not None:
            eff = Efficiency(work.compute, work.memory, eff.kernel_us, overlap)
        note = f"no measured {spec.kind} table for {name} in {where}: default {spec.kind} launch cost used"
    else:
        raise UsageError(
            f"no measured {spec.kind} table for {name} in {where}: run `amoebasearch profile` first, "
            "or name a folder of measured tables with --fit-on"
        )
    # the per-call overhead is host-side Python glue: take it from any measured table of this model
    hosts = calibration or measured_tables(fit_dirs, signature, runtime)
    if not hosts:
        raise UsageError(f"no measured table for {name} in {where}: run `amoebasearch profile` once on this host")
    overhead = {}
    for r in hosts[0].rows[hosts[0].rows["block"] == "overhead"].itertuples():
        overhead[(r.phase, int(r.batch), int(r.context))] = float(r.median_us)
    points = [Point(p, b, c) for p in request.phases for b in request.batch for c in request.context]
    model_meta = {"name": name, "signature": signature, "dims": asdict(dims)}
    table = estimate_table(
        spec,
        dims,
        config.vocab_size,
        model_meta,
        points,
        dtype,
        eff,
        overhead,
        request.ffn_step,
        calibrated_on=[str(t.path) for t in calibration],
        runtime=runtime,
    )
    table.meta["efficiency_source"] = "fitted" if calibration else "default"
    if work is not None:
        table.meta["work_efficiency_from"] = [str(t.path) for t in graphs]
    table.meta["overhead_from"] = str(hosts[0].path)
    path = out_dir / f"{table_name(name, spec.slug, estimate_label(runtime), dtype)}.csv"
    table.save(path)
    return path, note
