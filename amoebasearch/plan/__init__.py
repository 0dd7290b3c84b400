"""Stage 1, knowledge-preserving subnet selection: DP depth shrinking and importance width ranking.

``depth`` holds the DP core and the depth baselines (pure), ``layerwise`` runs a model block by
block keeping hidden states, ``select`` wires the two, ``width`` ranks heads and channels,
``build.make_plan`` (settings: ``PlanConfig``) produces the `Plan` that every later stage reads.
"""

from amoebasearch.plan.build import PlanConfig, make_plan, ordering_from
from amoebasearch.plan.depth import DEPTH_METHODS, DepthSelection, DPTable, dp_depth, dp_depth_naive
from amoebasearch.plan.select import METRICS, select_depth
from amoebasearch.plan.width import WIDTH_METHODS, WidthScores, select_width

__all__ = [
    "DEPTH_METHODS",
    "METRICS",
    "WIDTH_METHODS",
    "DPTable",
    "DepthSelection",
    "PlanConfig",
    "WidthScores",
    "dp_depth",
    "dp_depth_naive",
    "make_plan",
    "ordering_from",
    "select_depth",
    "select_width",
]
