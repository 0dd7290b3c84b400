"""Stage 1 as one library call: depth selection + width ranking → a `Plan` (what `amoebasearch plan` writes)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from amoebasearch.data import TextSplit
from amoebasearch.models import model_signature
from amoebasearch.ordering import Ordering
from amoebasearch.plan.depth import DepthSelection, DPTable
from amoebasearch.plan.metrics import DEFAULT_METRIC
from amoebasearch.plan.select import select_depth
from amoebasearch.plan.width import WidthScores, select_width
from amoebasearch.planfile import Plan
from amoebasearch.shape import ModelDims


def ordering_from(depth: DepthSelection, width: WidthScores, dims: ModelDims) -> Ordering:
    """The `Ordering` that export and the elastic forward consume, validated against the model."""
    return Ordering(
        layer_sets=depth.layer_sets(dims.num_layers),
        head_order=width.head_order(dims),
        ffn_order=width.ffn_order(),
    ).validate(dims)


def make_plan(
    model: nn.Module,
    split: TextSplit,
    depth_method: str = "dp",
    width_method: str = "importance",
    metric: str = DEFAULT_METRIC,
    max_remove: int | None = None,
    seed: int = 0,
    batch_size: int = 4,
    tables: Mapping[str, DPTable] | None = None,
    on_row: Callable[[str, DPTable], None] | None = None,
    beam: int = 1,
    split_ends: bool = True,
    search_dtype: torch.dtype | None = None,
) -> Plan:
    """Select layers for every depth and rank heads/channels on ``split.calibration``
    (depth passes in ``search_dtype``, see `select_depth`)."""
    dims = ModelDims.from_config(model.config)
    chunks = split.calibration
    depth = select_depth(
        model, chunks, depth_method, metric, max_remove, seed, batch_size, tables, on_row, beam, split_ends,
        dtype=search_dtype,
    )  # fmt: skip
    width = select_width(model, chunks, width_method, seed, batch_size)
    metrics: dict[str, Any] = {
        "depth_metric": {"dp": metric, "validated": metric, "ppl": "perplexity"}.get(depth_method),
        "depth_values": {str(dims.num_layers - m): v for m, v in sorted(depth.metric_values.items())},
        "removed_layers": {str(m): list(r) for m, r in sorted(depth.removal.items())},
        "layer_scores": depth.layer_scores,
        "kv_group_scores": width.group_scores(dims),
    }
    if depth.validation:  # per depth, every source's cross-fitted perplexity and the one chosen
        metrics["depth_validation"] = {
            str(dims.num_layers - m): {"chosen": depth.chosen_from[m], **scores}
            for m, scores in sorted(depth.validation.items())
        }
    calibration = {
        **split.settings,
        "metric": metric,
        "max_remove": max(depth.removal),
        "beam": beam,
        "split_ends": split_ends,
        "seed": seed,
        "search_dtype": str(search_dtype or next(model.parameters()).dtype).removeprefix("torch."),
    }
    return Plan(
        model_signature=model_signature(model.config),
        ordering=ordering_from(depth, width, dims),
        depth_method=depth_method,
        width_method=width_method,
        calibration=calibration,
        metrics=metrics,
    )
