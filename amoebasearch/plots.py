"""Figures a person can read: Pareto fronts (quality vs latency) and a device's latency table.

Pure plotting: callers pass numbers (from the library), get a matplotlib Figure back. Used by
`amoebasearch plot`, the notebooks and the benchmarks alike.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt  # headless machines fall back to Agg; notebooks keep their inline backend
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from amoebasearch import atomic
from amoebasearch.shape import Shape, ShapeSpace


@dataclass
class Curve:
    """One line on a front plot; ``estimated`` curves are dashed and say so in the legend."""

    label: str
    latency_ms: Sequence[float]
    quality: Sequence[float]
    estimated: bool = False
    marker: str = "o"
    shapes: Sequence[str] = ()  # what each point is, for tables beside the figure (optional)


def curve_colours(count: int) -> list:
    """One distinct colour per curve: tab10 repeats after ten, and the shipped Pareto figure has more."""
    palette = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [palette(i % palette.N) for i in range(count)]


def plot_fronts(
    curves: Sequence[Curve], quality_label: str = "held-out perplexity", title: str = "", cap_ratio: float = 50.0
) -> Figure:
    """Quality vs latency, one curve per device/runtime or per selection method.

    The latency axis turns logarithmic when the curves span more than 10x (a CPU beside GPUs),
    so every device's front stays readable on one figure. Perplexity axes stop at ``cap_ratio``
    times the best value: the shallowest subnets of an untuned supernet reach perplexities in
    the millions, which would flatten everything a user would deploy.
    """
    # the legend sits right of the axes, one line per curve: grow the figure with it
    fig, ax = plt.subplots(figsize=(11, max(5.0, 1.5 + 0.22 * len(curves))))
    latencies = [x for curve in curves for x in curve.latency_ms if x > 0]
    qualities = [q for curve in curves for q in curve.quality]
    colours = curve_colours(len(curves))
    for curve, colour in zip(curves, colours, strict=True):
        order = sorted(range(len(curve.latency_ms)), key=lambda i: curve.latency_ms[i])
        label = f"{curve.label} (estimated)" if curve.estimated else curve.label
        ax.plot(
            [curve.latency_ms[i] for i in order],
            [curve.quality[i] for i in order],
            linestyle="--" if curve.estimated else "-",
            marker=curve.marker,
            markersize=3,
            color=colour,
            label=label,
        )
    ax.set_xlabel("predicted latency (ms)")
    if latencies and max(latencies) > 10 * min(latencies):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
    if "perplexity" in quality_label:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        if qualities and max(qualities) > cap_ratio * min(qualities):
            ax.set_ylim(0.9 * min(qualities), cap_ratio * min(qualities))
            quality_label = f"{quality_label} (axis capped at {cap_ratio:g}x the best)"
    ax.set_ylabel(quality_label)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=10)  # as wide as the axes, not the figure
    fig.tight_layout()
    return fig


def plot_latency_table(predict_ms: dict[str, Callable[[Shape], float]], space: ShapeSpace, title: str = "") -> Figure:
    """Latency vs depth (full width) and vs width (full depth), one row per phase, as in
    AmoebaLLM's Figure 1: prefill and decode differ by an order of magnitude, so each gets its own axes.
    """
    phases = list(predict_ms)
    fig, axes = plt.subplots(len(phases), 2, figsize=(10, 3.2 * len(phases)), squeeze=False)
    full_heads, full_ffn, full_depth = space.head_options[-1], space.ffn_options[-1], space.depths[-1]
    ratios = [f / full_ffn for f in space.ffn_options]
    for (by_depth, by_width), phase in zip(axes, phases, strict=True):
        predict = predict_ms[phase]
        by_depth.plot(space.depths, [predict(space.shape(d, full_heads, full_ffn)) for d in space.depths], marker=".")
        for heads in space.head_options:
            values = [predict(space.shape(full_depth, heads, f)) for f in space.ffn_options]
            by_width.plot(ratios, values, marker=".", label=f"{heads} query heads")
        by_depth.set_xlabel("depth (layers kept, full width)")
        by_width.set_xlabel("FFN width ratio (full depth)")
        by_width.legend(fontsize=7)
        for ax in (by_depth, by_width):
            ax.set_ylabel(f"{phase} latency (ms)")
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_png(figure: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``figure`` as a PNG atomically (an interrupted run never leaves half an image), then free it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return atomic.write_bytes(path, buffer.getvalue())
