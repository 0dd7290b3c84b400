"""Figures a person can read: Pareto fronts (quality vs latency) and a device's latency table.

Pure plotting: callers pass numbers (from the library), get a matplotlib Figure back. Used by
`amoebasearch plot`, the notebooks and the benchmarks alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # headless: figures are written as PNG
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from amoebasearch.shape import Shape, ShapeSpace  # noqa: E402


@dataclass
class Curve:
    """One line on a front plot; ``estimated`` curves are dashed and say so in the legend."""

    label: str
    latency_ms: Sequence[float]
    quality: Sequence[float]
    estimated: bool = False
    marker: str = "o"


def plot_fronts(curves: Sequence[Curve], quality_label: str = "held-out perplexity", title: str = "") -> Figure:
    """Quality vs latency, one curve per device/runtime or per selection method."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for curve in curves:
        order = sorted(range(len(curve.latency_ms)), key=lambda i: curve.latency_ms[i])
        label = f"{curve.label} (estimated)" if curve.estimated else curve.label
        ax.plot(
            [curve.latency_ms[i] for i in order],
            [curve.quality[i] for i in order],
            linestyle="--" if curve.estimated else "-",
            marker=curve.marker,
            markersize=3,
            label=label,
        )
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel(quality_label)
    if "perplexity" in quality_label:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_latency_table(predict_ms: dict[str, Callable[[Shape], float]], space: ShapeSpace, title: str = "") -> Figure:
    """Latency vs depth (full width) and vs width (full depth) for each phase, as in AmoebaLLM's Figure 1."""
    fig, (by_depth, by_width) = plt.subplots(1, 2, figsize=(10, 4))
    full_heads, full_ffn, full_depth = space.head_options[-1], space.ffn_options[-1], space.depths[-1]
    for phase, predict in predict_ms.items():
        by_depth.plot(
            space.depths, [predict(space.shape(d, full_heads, full_ffn)) for d in space.depths], marker=".", label=phase
        )
        for heads in space.head_options:
            ratios = [f / full_ffn for f in space.ffn_options]
            values = [predict(space.shape(full_depth, heads, f)) for f in space.ffn_options]
            by_width.plot(ratios, values, marker=".", label=f"{phase}, {heads} heads")
    by_depth.set_xlabel("depth (layers kept, full width)")
    by_width.set_xlabel("FFN width ratio (full depth)")
    for ax in (by_depth, by_width):
        ax.set_ylabel("latency (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
