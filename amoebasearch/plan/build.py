"""Stage 1 as one library call: depth selection + width ranking → a `Plan` (what `amoebasearch plan` writes)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from amoebasearch.data import TextSplit, calibration_split
from amoebasearch.models import model_signature
from amoebasearch.options import option, positive_int
from amoebasearch.ordering import Ordering
from amoebasearch.plan.depth import DEPTH_METHODS, DepthSelection, DPTable
from amoebasearch.plan.select import (
    DEFAULT_CALIBRATION_TOKENS,
    DEFAULT_METRIC,
    METRICS,
    default_split_ends,
    select_depth,
)
from amoebasearch.plan.width import WIDTH_METHODS, WidthScores, select_width
from amoebasearch.planfile import Plan
from amoebasearch.shape import ModelDims


def ordering_from(depth: DepthSelection, width: WidthScores, dims: ModelDims) -> Ordering:
    """The `Ordering` that export and the elastic forward consume, validated against the model."""
    return Ordering(
        layer_sets=depth.layer_sets(dims.num_layers),
        head_order=width.head_order(dims),
        ffn_order=width.ffn_order(),
    ).validate(dims)


@dataclass(frozen=True)
class PlanConfig:
    """How the plan is made: its calibration text, depth selection and width ranking.

    The defaults are `amoebasearch plan`'s. ``split_ends`` None is on for ``depth_method`` dp, off
    otherwise (`default_split_ends`); ``search_dtype`` None searches in the model's own dtype."""

    data: str | None = option(None, help="calibration text: .txt, .jsonl or .json (default: the embedded KJV corpus)")
    depth_method: str = option(
        "validated",
        name="--method",
        choices=DEPTH_METHODS,
        help="depth selection (default validated: per depth, the DP's set or a published baseline's, whichever "
        "holds best on calibration text it was not fitted on; dp: the paper's recurrence on all chunks)",
    )
    width_method: str = option("importance", choices=WIDTH_METHODS, help="head/channel ranking (default importance)")
    metric: str = option(DEFAULT_METRIC, choices=METRICS, help=f"the DP's metric (default {DEFAULT_METRIC})")
    tokens: int = option(
        DEFAULT_CALIBRATION_TOKENS,
        type=positive_int,
        help=f"calibration tokens (default {DEFAULT_CALIBRATION_TOKENS})",
    )
    seq_len: int = option(256, type=positive_int, help="tokens per calibration chunk (default 256)")
    max_remove: int | None = option(
        None, type=int, help="most layers any depth removes (default: half the layers); bounds the DP table"
    )
    beam: int = option(1, type=positive_int, help="layer sets kept per DP cell (default 1: the paper's DP)")
    split_ends: bool | None = option(
        None,
        negatable=True,
        help="keep the best set per ending (last layer kept / removed), which reaches runs of neighbouring "
        "layers at about twice the DP's time (default: on with --method dp, off with validated)",
    )
    search_dtype: str | None = option(
        "bfloat16",
        choices=("bfloat16", "float32"),
        help="dtype of the depth search passes (default bfloat16: about half the time of float32 on CPUs with "
        "bf16 units, same choices within noise; see docs)",
    )
    seed: int = option(0, type=int, help="seed for the data split and random methods (default 0)")
    batch_size: int = option(4, type=positive_int, help="chunks per forward pass (default 4)")

    def __post_init__(self) -> None:
        if self.split_ends is None:
            object.__setattr__(self, "split_ends", default_split_ends(self.depth_method))

    def calibration(self, tokenizer: Any, docs: list[str] | None = None) -> TextSplit:
        """The calibration chunks of ``data`` (or the embedded corpus) these settings cut."""
        return calibration_split(tokenizer, self.data, self.seq_len, self.tokens, 0, self.seed, docs=docs)


def make_plan(
    model: nn.Module,
    split: TextSplit,
    config: PlanConfig | None = None,
    tables: Mapping[str, DPTable] | None = None,
    on_row: Callable[[str, DPTable], None] | None = None,
) -> Plan:
    """Select layers for every depth and rank heads/channels on ``split.calibration``. ``tables`` and
    ``on_row`` resume and checkpoint the DP (see `select_depth`)."""
    config = config or PlanConfig()
    dims = ModelDims.from_config(model.config)
    chunks = split.calibration
    depth_method, metric, seed = config.depth_method, config.metric, config.seed
    dtype = getattr(torch, config.search_dtype) if config.search_dtype else None
    depth = select_depth(
        model, chunks, depth_method, metric, config.max_remove, seed, config.batch_size, tables, on_row,
        config.beam, config.split_ends, dtype=dtype,
    )  # fmt: skip
    width = select_width(model, chunks, config.width_method, seed, config.batch_size)
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
        "beam": config.beam,
        "split_ends": config.split_ends,
        "seed": seed,
        "search_dtype": config.search_dtype or str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    return Plan(
        model_signature=model_signature(model.config),
        ordering=ordering_from(depth, width, dims),
        depth_method=depth_method,
        width_method=config.width_method,
        calibration=calibration,
        metrics=metrics,
    )
