"""Depth selection on a real model: wires `LayerRunner` + a metric to the DP core and baselines."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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
from amoebasearch.plan.validated import choose_on_validation, split_in_two
from amoebasearch.quality import KLToFull, Metric, Perplexity

# The DP's calibration metrics. KL is the default: it compares the subnet's whole next-token
# distribution with the full model's at every position, so a small calibration set ranks single
# removals more like unseen text does; perplexity is what the Shortened-LLaMA baseline uses.
METRICS = ("kl", "perplexity")
DEFAULT_METRIC = "kl"
DEFAULT_CALIBRATION_TOKENS = 2048


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


def default_split_ends(method: str) -> bool:
    """Split ends by default for the DP alone; validated selection runs the paper's recurrence, as the
    baselines it is checked against recover most of what split ends add, at half the DP's time."""
    return method == "dp"


def in_dtype(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """``model`` itself, or a copy cast to ``dtype`` for the search passes (the caller's model is untouched)."""
    if dtype is None or next(model.parameters()).dtype == dtype:
        return model
    return copy.deepcopy(model).to(dtype)


def select_depth(
    model: nn.Module,
    chunks: torch.Tensor,
    method: str = "dp",
    metric: str = DEFAULT_METRIC,
    max_remove: int | None = None,
    seed: int = 0,
    batch_size: int = 4,
    tables: Mapping[str, DPTable] | None = None,
    on_row: Callable[[str, DPTable], None] | None = None,
    beam: int = 1,
    split_ends: bool = True,
    dtype: torch.dtype | None = None,
) -> DepthSelection:
    """Removed layers for every removal count 0..max_remove by ``method`` (validated, dp, bi, ppl,
    last, random).

    ``metric`` is the DP's calibration metric; the ``ppl`` baseline always ranks by perplexity, its
    published criterion. ``beam`` sets are kept per DP cell, per ending with ``split_ends`` (both off,
    beam 1: the paper's DP). Each DP run has a name (``all``, or ``fit`` in validated selection):
    ``tables`` resumes them by name and ``on_row(name, table)`` checkpoints them. The
    other methods are one pass or none. ``dtype`` runs every search pass on a copy in that dtype
    (bfloat16 halves the time on CPUs with bf16 units); ``None`` uses the model as it is.
    """
    num_layers = len(model.model.layers)
    max_remove = check_max_remove(num_layers, max_remove)
    if method not in DEPTH_METHODS:
        raise UsageError(f"unknown depth method {method!r}: choose one of {', '.join(DEPTH_METHODS)}")
    if method == "last":
        return drop_last(num_layers, max_remove)
    if method == "random":
        return random_removal(num_layers, max_remove, seed)
    if method in ("bi", "validated"):  # one pass in the model's own dtype: 1 - cosine is too fine for bfloat16
        bi = by_scores("bi", block_influence(LayerRunner(model, chunks, batch_size)), max_remove)
        if method == "bi":
            return bi
    model = in_dtype(model, dtype)
    dp = DPRuns(metric, max_remove, tables or {}, on_row, beam, split_ends)
    if method == "validated":
        return validated_selection(model, chunks, max_remove, batch_size, dp, bi)
    runner = LayerRunner(model, chunks, batch_size)
    if method == "ppl":
        return by_scores("ppl", removal_metric(runner, Perplexity(chunks)), max_remove)
    return dp.run("all", runner)


@dataclass
class DPRuns:
    """The DP's settings, and the named tables to resume and checkpoint, shared by its runs."""

    metric: str
    max_remove: int
    tables: Mapping[str, DPTable]
    on_row: Callable[[str, DPTable], None] | None
    beam: int
    split_ends: bool

    def run(self, name: str, runner: LayerRunner) -> DepthSelection:
        """The DP's best set per removal count on ``runner``'s chunks."""
        evaluator = ModelEvaluator(runner, make_metric(self.metric, runner))
        on_row = None if self.on_row is None else functools.partial(self.on_row, name)
        result = dp_depth(
            evaluator,
            runner.num_layers,
            self.max_remove,
            self.tables.get(name),
            on_row,
            beam=self.beam,
            split_ends=self.split_ends,
        )
        return from_table(result)


def validated_selection(
    model: nn.Module, chunks: torch.Tensor, max_remove: int, batch_size: int, dp: DPRuns, bi: DepthSelection
) -> DepthSelection:
    """Block influence (``bi``) and one-shot perplexity on all chunks, the DP on the fit half, and per
    depth the DP's set only where it clearly beats the better baseline on the validation half
    (`plan.validated`)."""
    runner = LayerRunner(model, chunks, batch_size)
    baselines = {"bi": bi, "ppl": by_scores("ppl", removal_metric(runner, Perplexity(chunks)), max_remove)}
    fit, validation = split_in_two(chunks)
    fitted = dp.run("fit", LayerRunner(model, fit, batch_size))
    scorer = SubsetScorer(model, validation, batch_size=batch_size)
    return choose_on_validation(baselines, fitted, scorer.chunk_losses)
