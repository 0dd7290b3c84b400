"""Fitting a runtime's efficiencies and per-kernel cost on measured tables, so the roofline model
(``roofline.py``) prices a device the way that runtime runs it: eager's t_kernel is the host's
dispatch, a CUDA graph's the GPU's gap between kernels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from amoebasearch.errors import UsageError
from amoebasearch.profile.blocks import Point
from amoebasearch.profile.roofline import BYTES, Efficiency, block_cost, roofline_us
from amoebasearch.profile.specs import DeviceSpec, spec_for_table
from amoebasearch.profile.table import LatencyTable
from amoebasearch.shape import ModelDims


def _decoder_frame(table: LatencyTable) -> pd.DataFrame:
    rows = table.rows
    return rows[rows["block"] == "decoder"]


# Weight of the prior per decoder row, on squared log distance of each efficiency from its prior.
# A table measured where launches dominate (a GPU at batch 1, short context: ~18 us per kernel on an
# H100's host, roofline terms a few us) barely constrains the efficiencies, and an unanchored
# fit drove them to 1 % and 3 % of peak, which then priced a batch-8, 2048-token prefill block 18x
# dearer (17 ms, not 1 ms).
# At 0.001 a move from 0.5 to 0.01 costs ~0.015 per row, far more than such data gains (rows within
# a few % either way); rows whose roofline terms matter still pull the efficiencies where they belong.
PRIOR_WEIGHT = 0.001


def fit_efficiency(
    tables: list[LatencyTable],
    specs: list[DeviceSpec],
    prior: Efficiency | None = None,
    overlap: bool = False,
    work: Efficiency | None = None,
) -> Efficiency:
    """Efficiencies and kernel cost minimising squared log error over the tables' decoder rows.

    With a ``prior`` (the default efficiencies of the device kind), compute and memory efficiency
    are also pulled towards it (`PRIOR_WEIGHT`), so rows that cannot tell them apart leave them at
    the prior instead of anywhere. With ``work`` (efficiencies fitted where the device's own work
    shows, e.g. a CUDA-graph table of the same kind), those two are taken as they are and only the
    launch cost is fitted. A coarse-to-fine grid search: cheap, robust, no solver dependency.
    """
    work_at_peak, launches, measured = [], [], []  # per decoder row and kernel group
    for table, spec in zip(tables, specs, strict=True):
        dims = ModelDims(**table.meta["model"]["dims"])
        dtype = table.meta["dtype"]
        for r in _decoder_frame(table).itertuples():
            point = Point(r.phase, int(r.batch), int(r.context))
            cost = block_cost(dims, int(r.heads), int(r.ffn), point, BYTES[dtype])
            work_at_peak.append([(f / spec.flops[dtype], b / spec.bandwidth) for f, b, _ in cost.ops])
            launches.append([k for _, _, k in cost.ops])
            measured.append(r.median_us)
    if not measured:
        raise UsageError("no measured decoder rows to fit efficiencies on: profile a device first")
    at_peak = np.asarray(work_at_peak) * 1e6  # (rows, groups, 2): us at 100 % of peak
    kernels, log_measured = np.asarray(launches, float), np.log(np.asarray(measured, float))

    def losses(compute: np.ndarray, memory: np.ndarray, kernel_us: np.ndarray) -> np.ndarray:
        """Loss of every candidate (1-D arrays of equal length), all rows at once."""
        flops_us, bytes_us = at_peak[None, :, :, 0], at_peak[None, :, :, 1]
        busy = np.maximum(flops_us / compute[:, None, None], bytes_us / memory[:, None, None])
        launch = kernels[None, :, :] * kernel_us[:, None, None]
        predicted = (np.maximum(busy, launch) if overlap else busy + launch).sum(axis=2)
        fit = ((np.log(predicted) - log_measured[None, :]) ** 2).sum(axis=1)
        if prior is None or work is not None:
            return fit
        anchor = np.log(compute / prior.compute) ** 2 + np.log(memory / prior.memory) ** 2
        return fit + PRIOR_WEIGHT * len(measured) * anchor

    best = Efficiency(0.5, 0.5, 1.0)
    ranges = {"compute": (1e-3, 4.0), "memory": (1e-3, 8.0), "kernel_us": (0.01, 200.0)}
    points = {"compute": 13, "memory": 13, "kernel_us": 13}
    if work is not None:  # one value each: only the launch cost is searched
        ranges |= {"compute": (work.compute, work.compute), "memory": (work.memory, work.memory)}
        points |= {"compute": 1, "memory": 1}
    for _ in range(12):
        grids = {k: np.geomspace(*ranges[k], points[k]) for k in ranges}
        memory, kernel_us = (g.ravel() for g in np.meshgrid(grids["memory"], grids["kernel_us"], indexing="ij"))
        best_loss = np.inf
        for compute in grids["compute"]:  # one compute value at a time keeps the (candidates, rows, groups) array small
            scores = losses(np.full_like(memory, compute), memory, kernel_us)
            i = int(np.argmin(scores))
            if scores[i] < best_loss:
                best_loss = scores[i]
                best = Efficiency(float(compute), float(memory[i]), float(kernel_us[i]), overlap)
        # next round: two grid steps either side of the best value (one step trapped the search in
        # the valley where launch cost trades against memory efficiency, short of the optimum)
        ranges = {
            k: (getattr(best, k) / (hi / lo) ** (2 / 12), getattr(best, k) * (hi / lo) ** (2 / 12))
            for k, (lo, hi) in ranges.items()
        }
    return best


def graph_work(graphs: list[LatencyTable], prior: Efficiency | None) -> Efficiency:
    """Compute and memory efficiency of GPU work, fitted on CUDA-graph tables.

    A replayed graph's rows show the GPU's own work (plus ~3 us between kernels); an eager table
    at batch 1 shows the host launching kernels, whose ~19 us each hide the work and let a fit
    put the efficiencies anywhere (on an H100: 12 % of peak bandwidth, pricing an eager batch-8,
    2048-token prefill of SmolLM2 on an H100 at 77 ms where the H200's graphs measured 25 ms).
    So eager estimates take these two from the graphs and fit only the launch cost.
    """
    return fit_efficiency(graphs, [spec_for_table(t) for t in graphs], prior)


def estimate_error_note(calibration: list[LatencyTable], eff: Efficiency) -> str:
    """MAPE of the estimate against the measured decoder rows it was fitted on (per phase)."""
    parts = []
    for table in calibration:
        spec = spec_for_table(table)
        dims = ModelDims(**table.meta["model"]["dims"])
        frame = _decoder_frame(table)
        for phase, group in frame.groupby("phase"):
            errors = []
            for r in group.itertuples():
                point = Point(r.phase, int(r.batch), int(r.context))
                cost = block_cost(dims, int(r.heads), int(r.ffn), point, BYTES[table.meta["dtype"]])
                errors.append(abs(roofline_us(cost, spec, table.meta["dtype"], eff) / r.median_us - 1) * 100)
            parts.append(f"{spec.slug} {phase}: block MAPE {sum(errors) / len(errors):.1f}%")
    return "estimate vs measured (fit set): " + "; ".join(parts)
