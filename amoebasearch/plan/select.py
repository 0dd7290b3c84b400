"""Depth selection on a real model: wires `LayerRunner` + a metric to the DP core and baselines."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from amoebasearch.errors import UsageError
from amoebasearch.plan.depth import (
    DEPTH_METHODS,
    DepthSelection,
    DPTable,
    by_scores,
    check_max_remove,
    dp_depth,
    drop_last,
    from_table,
    random_removal,
)
from amoebasearch.plan.evaluate import SubsetScorer
from amoebasearch.plan.layerwise import LayerRunner
from amoebasearch.plan.metrics import DEFAULT_METRIC, KLToFull, Metric, Perplexity
from amoebasearch.plan.validated import choose_on_validation, split_for_validation


class ModelEvaluator:
    """The `PrefixEvaluator` of a real model: states are hidden tensors, scores the metric."""

    def __init__(self, runner: LayerRunner, metric: Metric) -> None:
        self.runner, self.metric = runner, metric

    def initial_state(self) -> torch.Tensor:
        return self.runner.initial_state()

    def extend(self, states: list[torch.Tensor], layer: int) -> list[torch.Tensor]:
        return self.runner.extend(states, layer)

    def score(self, states: list[torch.Tensor], start: int) -> list[float]:
        return self.runner.score(states, start, self.metric)

    def evaluate(self, removed: frozenset[int]) -> float:
        """Full re-run of the network without ``removed`` (what the naive DP does per candidate)."""
        kept = [i for i in range(self.runner.num_layers) if i not in removed]
        state = self.runner.initial_state()
        hidden = torch.cat([self.runner.run_layers(state[rows], kept) for rows in self.runner._batches(len(state))])
        return self.runner.score([hidden], self.runner.num_layers, self.metric)[0]


def make_metric(name: str, runner: LayerRunner) -> Metric:
    if name == "perplexity":
        return Perplexity(runner.chunks)
    if name == "kl":
        return KLToFull(runner.full_logits, runner.model.lm_head)
    raise UsageError(f"unknown metric {name!r}: choose kl or perplexity")


@torch.no_grad()
def block_influence(runner: LayerRunner) -> list[float]:
    """ShortGPT's block influence per layer: 1 - mean cosine(block input, block output) over tokens."""
    state = runner.initial_state()
    scores = []
    for layer in range(runner.num_layers):
        out = runner.extend([state], layer)[0]
        scores.append(float(1 - F.cosine_similarity(state, out, dim=-1).mean()))
        state = out
    return scores


@torch.no_grad()
def removal_metric(runner: LayerRunner, metric: Metric) -> list[float]:
    """Shortened-LLaMA's one-shot criterion: the metric with only that layer removed, per layer.

    Uses the full model's state before each layer, so each candidate runs only the later blocks.
    """
    state = runner.initial_state()
    scores = []
    for layer in range(runner.num_layers):
        scores.append(runner.score([state], layer + 1, metric)[0])
        state = runner.extend([state], layer)[0]
    return scores


def select_depth(
    model: nn.Module,
    chunks: torch.Tensor,
    method: str = "dp",
    metric: str = DEFAULT_METRIC,
    max_remove: int | None = None,
    seed: int = 0,
    batch_size: int = 4,
    table: DPTable | None = None,
    on_row: Callable[[DPTable], None] | None = None,
    beam: int = 1,
    split_ends: bool = True,
) -> DepthSelection:
    """Removed layers for every removal count 0..max_remove by ``method`` (validated, dp, bi, ppl,
    last, random).

    ``metric`` is the DP's calibration metric; the ``ppl`` baseline always ranks by perplexity, its
    published criterion. ``beam`` sets are kept per DP cell, per ending with ``split_ends`` (both off,
    beam 1: the paper's DP); ``table``/``on_row`` resume and checkpoint the DP; the other methods are
    one pass or none.
    """
    num_layers = len(model.model.layers)
    max_remove = check_max_remove(num_layers, max_remove)
    if method not in DEPTH_METHODS:
        raise UsageError(f"unknown depth method {method!r}: choose one of {', '.join(DEPTH_METHODS)}")
    if method == "last":
        return drop_last(num_layers, max_remove)
    if method == "random":
        return random_removal(num_layers, max_remove, seed)
    if method == "validated":
        return validated_selection(model, chunks, metric, max_remove, batch_size, table, on_row, beam, split_ends)
    runner = LayerRunner(model, chunks, batch_size)
    if method == "bi":
        return by_scores("bi", block_influence(runner), max_remove)
    if method == "ppl":
        return by_scores("ppl", removal_metric(runner, Perplexity(chunks)), max_remove)
    return dp_selection(runner, metric, max_remove, table, on_row, beam, split_ends)


def dp_selection(
    runner: LayerRunner,
    metric: str,
    max_remove: int,
    table: DPTable | None,
    on_row: Callable[[DPTable], None] | None,
    beam: int,
    split_ends: bool,
) -> DepthSelection:
    """The DP's best set per removal count on ``runner``'s chunks; every final entry kept as a runner-up."""
    evaluator = ModelEvaluator(runner, make_metric(metric, runner))
    result = dp_depth(evaluator, runner.num_layers, max_remove, table, on_row, beam=beam, split_ends=split_ends)
    selection = from_table(result)
    selection.layer_scores = None
    selection.runners_up = {
        m: {f"dp#{rank}": removed for rank, (_, removed) in enumerate(cell[1:], start=2)}
        for m, cell in enumerate(result.cells[result.num_layers])
        if cell
    }
    return selection


def validated_selection(
    model: nn.Module,
    chunks: torch.Tensor,
    metric: str,
    max_remove: int,
    batch_size: int,
    table: DPTable | None,
    on_row: Callable[[DPTable], None] | None,
    beam: int,
    split_ends: bool,
) -> DepthSelection:
    """DP, block influence and one-shot perplexity propose on one half of the chunks; per depth the
    proposal with the lowest perplexity on the other half wins (`plan.validated`)."""
    fit, validation = split_for_validation(chunks)
    runner = LayerRunner(model, fit, batch_size)
    dp = dp_selection(runner, metric, max_remove, table, on_row, beam, split_ends)
    proposals = {
        "dp": dp,
        "bi": by_scores("bi", block_influence(runner), max_remove),
        "ppl": by_scores("ppl", removal_metric(runner, Perplexity(fit)), max_remove),
    }
    return choose_on_validation(proposals, SubsetScorer(model, validation, batch_size=batch_size), dp.runners_up)
