"""Answer a new budget from the quality cache with few new evaluations.

Once `find` has measured a few dozen shapes (a `--pareto` run, earlier budgets), a new budget
rarely needs a fresh search. A bigger subnet is as good as the subnets it contains or better,
so the best shape under a budget is one that no other fitting shape contains: the *maximal*
fitting shapes, a few dozen of the space's thousand. A smooth quality model fitted on every
cached quality (log quality as a quadratic surface in log depth, heads and FFN width) ranks the
maximal shapes of unknown quality; the best-ranked one is evaluated while the model, made
optimistic by 1.5 standard deviations of its own residuals, says it could beat the best fitting
shape known, and the model is fitted again after each evaluation.

`benchmarks/search_quality.py --parts sweep` measures it against the exhaustive optimum
(docs/results.md, "New budgets and repeated requests").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from amoebasearch.shape import Shape

GUIDE_MIN_KNOWN = 20  # cached qualities the model (9 coefficients) needs before it may steer a new budget
OPTIMISM_SD = 1.5  # residual standard deviations of benefit of the doubt a candidate gets


def maximal_fitting(latency: Mapping[Shape, float], budget_ms: float) -> list[Shape]:
    """The shapes within budget that no other shape within budget contains (deeper or as deep,
    with at least as many heads and as wide an FFN)."""
    deepest: dict[tuple[int, int], Shape] = {}
    for shape, ms in latency.items():
        width = (shape.heads, shape.ffn)
        if ms <= budget_ms and (width not in deepest or shape.depth > deepest[width].depth):
            deepest[width] = shape
    widths = list(deepest.values())
    return [
        s
        for s in widths
        if not any(o is not s and o.depth >= s.depth and o.heads >= s.heads and o.ffn >= s.ffn for o in widths)
    ]


def _features(shape: Shape) -> list[float]:
    """A quadratic surface in log depth, log heads and log FFN width (no squared heads term: a
    model has few head options)."""
    d, h, f = math.log(shape.depth), math.log(shape.heads), math.log(shape.ffn)
    return [1.0, d, h, f, d * d, f * f, d * f, h * f, d * h]


def _loss(quality: float, higher_is_better: bool, use_log: bool) -> float:
    """The quantity the model fits, lower is better: log perplexity, or minus (log) accuracy."""
    value = math.log(quality) if use_log else quality
    return -value if higher_is_better else value


def optimistic_losses(
    known: Mapping[Shape, float], candidates: Sequence[Shape], higher_is_better: bool, use_log: bool
) -> dict[Shape, float]:
    """Each candidate's loss (`_loss`) as the model fitted on ``known`` predicts it, less
    `OPTIMISM_SD` standard deviations of the model's residuals (over its degrees of freedom)."""
    shapes = list(known)
    x = np.array([_features(s) for s in shapes])
    y = np.array([_loss(known[s], higher_is_better, use_log) for s in shapes])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    freedom = max(len(shapes) - x.shape[1], 1)
    residual_sd = float(np.sqrt(np.sum((y - x @ coef) ** 2) / freedom))
    return {c: float(np.array(_features(c)) @ coef) - OPTIMISM_SD * residual_sd for c in candidates}


def finite(known: Mapping[Shape, float]) -> dict[Shape, float]:
    """The cached qualities the model can fit (a perplexity that overflowed to inf cannot)."""
    return {shape: q for shape, q in known.items() if math.isfinite(q)}


def promising(
    latency: Mapping[Shape, float], budget_ms: float, known: Mapping[Shape, float], higher_is_better: bool
) -> list[Shape]:
    """The maximal fitting shapes of unknown quality that could beat the best fitting shape known,
    as the model (fitted on ``known``'s finite qualities) sees them; the most promising first.
    Empty when no evaluation can change the answer."""
    todo = [s for s in maximal_fitting(latency, budget_ms) if s not in known]
    usable = finite(known)
    if not todo or not usable:
        return todo
    use_log = all(q > 0 for q in usable.values())
    predicted = optimistic_losses(usable, todo, higher_is_better, use_log)
    fitting = [q for s, q in usable.items() if latency.get(s, math.inf) <= budget_ms]
    incumbent = min((_loss(q, higher_is_better, use_log) for q in fitting), default=math.inf)
    return sorted((s for s in todo if predicted[s] < incumbent), key=lambda s: (predicted[s], -latency[s]))
