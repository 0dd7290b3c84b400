"""Depth shrinking: which layers survive at every depth. DP (AmoebaLLM) and the baselines.

DP (paper, Sec. 3.2): ``D[n][m]`` is the best calibration metric of a network in which exactly
``m`` of the first ``n`` layers are removed (layers ``n``..L-1 kept), and

    D[n][m] = min( D[n-1][m]                       keep layer n-1,
                   metric(R[n-1][m-1] + {n-1}) )   remove layer n-1,

where ``R[n][m]`` is the layer set that reached ``D[n][m]``, so ``R[L][m]`` is the removal set for
depth ``L - m``. Each cell records its set, so one table answers every depth.

Two observations make it cheap, with identical results to the naive DP that evaluates both
candidates of every cell with a full forward:

1. The "keep" candidate of cell (n, m) is *the same network* as the winner of (n-1, m) (the
   prefix is R[n-1][m], everything after is kept), so its value is D[n-1][m]: no evaluation.
2. The "remove" candidate starts from the hidden state after the prefix R[n-1][m-1], which the
   previous row holds, and runs only blocks n..L-1 and the head.

So each cell costs one partial forward instead of two full ones. The core below only needs an
evaluator with ``initial_state``/``extend``/``score``; it does no I/O (``on_row`` lets the caller
checkpoint), so it is tested exactly against brute force with toy evaluators.

The DP is exact when the metric is additive over removed layers; for perplexity or KL it is the
paper's heuristic (the best prefix for (n-1, m-1) need not be a prefix of the best set). A beam
of width ``k`` keeps the ``k`` best sets per cell instead of one (both candidates of every kept
entry compete for the ``k`` places), which costs ``k`` times the evaluations and recovers
removal sets whose prefix was only second or third best; ``k = 1`` is the paper's DP and a beam
wide enough to hold every subset is exhaustive search.

``split_ends`` keeps the ``k`` best sets *per ending* instead: those that keep layer n-1 and those
that remove it. Removing two or more neighbouring layers is often far cheaper than the sum of
removing each (on SmolLM2, KL of {16, 17} is 0.29 against 0.21 + 0.18 alone), but the paper's
cell only keeps a prefix ending in a removal when that prefix is also the best overall, so a
run of removals whose first layer was not the best single choice is never reached. Keeping the
best removal-ending prefix alongside lets every run grow; it costs about twice the evaluations.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from amoebasearch.errors import UsageError

Entry = tuple[float, tuple[int, ...]]  # (metric value, removed layers ascending)


class PrefixEvaluator(Protocol):
    def initial_state(self) -> Any: ...

    def extend(self, states: list[Any], layer: int) -> list[Any]:
        """Each state advanced through block ``layer``."""

    def score(self, states: list[Any], start: int) -> list[float]:
        """The metric of each state continued through blocks ``start``..L-1, all kept."""


@dataclass
class DPTable:
    """The DP table: ``cells[n][m]`` holds up to ``beam`` (value, removed layers) entries, best first;
    ``None`` where no set exists (m > n) or the row is not filled yet.
    """

    num_layers: int
    max_remove: int
    beam: int
    cells: list[list[list[Entry] | None]]
    rows_done: int = 0  # rows 0..rows_done-1 are final
    evaluations: int = 0  # candidate networks scored (partial forwards in the fast DP)
    split_ends: bool = False  # the beam is kept per ending (last layer kept / removed)

    @classmethod
    def empty(cls, num_layers: int, max_remove: int, beam: int = 1, split_ends: bool = False) -> DPTable:
        cells = [[None] * (max_remove + 1) for _ in range(num_layers + 1)]
        return cls(num_layers, max_remove, beam, cells, split_ends=split_ends)

    @property
    def values(self) -> list[list[float | None]]:
        """``values[n][m]`` = D[n][m], the best value of each cell (``None`` where unfilled)."""
        return [[cell[0][0] if cell else None for cell in row] for row in self.cells]

    def removal_set(self, n: int, m: int) -> tuple[int, ...]:
        """The removed layers of the best entry of cell (n, m)."""
        cell = self.cells[n][m]
        if not cell:
            raise ValueError(f"DP cell ({n}, {m}) is not filled")
        return cell[0][1]

    def removals(self) -> dict[int, tuple[int, ...]]:
        """m -> removed layers, for every m the finished table covers."""
        return {m: cell[0][1] for m, cell in enumerate(self.cells[self.num_layers]) if cell}

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "max_remove": self.max_remove,
            "beam": self.beam,
            "cells": [[None if c is None else [[v, list(r)] for v, r in c] for c in row] for row in self.cells],
            "rows_done": self.rows_done,
            "evaluations": self.evaluations,
            "split_ends": self.split_ends,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DPTable:
        """The table `to_dict` wrote; ValueError when the structure is not one it could have written
        (a hand-edited or foreign file would otherwise fail deep inside the DP)."""
        cells = [[None if c is None else [(float(v), tuple(r)) for v, r in c] for c in row] for row in data["cells"]]
        table = cls(
            int(data["num_layers"]),
            int(data["max_remove"]),
            int(data["beam"]),
            cells,
            int(data["rows_done"]),
            int(data["evaluations"]),
            bool(data.get("split_ends", False)),
        )
        shaped = len(cells) == table.num_layers + 1 and all(len(row) == table.max_remove + 1 for row in cells)
        started = shaped and 1 <= table.rows_done <= table.num_layers + 1 and cells[0][0] is not None
        if not started or table.beam < 1 or table.max_remove < 0:
            raise ValueError("DP checkpoint structure does not match its layer count, --max-remove or progress")
        return table


def check_max_remove(num_layers: int, max_remove: int | None) -> int:
    """The removal bound to use: default half the layers; at least one layer must survive."""
    if max_remove is None:
        return num_layers // 2
    if not 0 <= max_remove <= num_layers - 1:
        raise UsageError(f"--max-remove {max_remove} must be between 0 and {num_layers - 1} (keep one layer)")
    return max_remove


def dp_depth(
    evaluator: PrefixEvaluator,
    num_layers: int,
    max_remove: int,
    table: DPTable | None = None,
    on_row: Callable[[DPTable], None] | None = None,
    beam: int = 1,
    split_ends: bool = False,
) -> DPTable:
    """Fill the DP table row by row (see the module docstring); ``table`` resumes a partial one.

    ``beam`` sets are kept per cell (per ending with ``split_ends``). Ties keep the layer (a "keep"
    entry ranks before a "remove" entry of equal value). ``on_row`` is called after every finished
    row (checkpoints, progress).
    """
    if beam < 1:
        raise UsageError(f"--beam {beam} must be at least 1")
    if table is None or table.rows_done == 0:
        table = DPTable.empty(num_layers, max_remove, beam, split_ends)
        state = evaluator.initial_state()
        table.cells[0][0] = [(evaluator.score([state], 0)[0], ())]
        table.evaluations = 1
        table.rows_done = 1
        states = {(0, 0): state}  # (m, slot) -> hidden state after the first n layers of that entry
        if on_row:
            on_row(table)
    else:
        if (table.num_layers, table.max_remove, table.beam, table.split_ends) != (
            num_layers,
            max_remove,
            beam,
            split_ends,
        ):
            raise UsageError(
                "the DP checkpoint was made for another layer count, --max-remove, --beam or --split-ends: start afresh"
            )
        done = table.rows_done > num_layers
        states = {} if done else _rebuild_states(evaluator, table, table.rows_done - 1)

    for n in range(table.rows_done, num_layers + 1):
        layer = n - 1
        previous = table.cells[n - 1]
        # every entry of row n-1 with m < max_remove spawns a "remove layer n-1" candidate
        sources = [(m, slot) for m in range(min(n, max_remove)) for slot in range(len(previous[m] or ()))]
        scores = evaluator.score([states[key] for key in sources], n)
        table.evaluations += len(sources)
        candidates: dict[int, list[tuple[float, int, tuple[int, ...], tuple[int, int]]]] = {}
        for m, cell in enumerate(previous):
            for slot, (value, removed) in enumerate(cell or ()):
                candidates.setdefault(m, []).append((value, 0, removed, (m, slot)))
        for (m, slot), value in zip(sources, scores, strict=True):
            candidates.setdefault(m + 1, []).append((value, 1, (*previous[m][slot][1], layer), (m, slot)))
        new_states, to_extend = {}, []
        for m, entries in candidates.items():
            entries.sort(key=lambda entry: (entry[0], entry[1]))  # stable: ties keep the layer
            if split_ends:  # the best `beam` of each ending, still best first
                chosen = sorted(
                    [e for e in entries if not e[1]][:beam] + [e for e in entries if e[1]][:beam],
                    key=lambda entry: (entry[0], entry[1]),
                )
            else:
                chosen = entries[:beam]
            table.cells[n][m] = [(value, removed) for value, _, removed, _ in chosen]
            for slot, (_, removes, _, source) in enumerate(chosen):
                if removes:
                    new_states[(m, slot)] = states[source]  # the removed block passes the residual through
                else:
                    to_extend.append(((m, slot), source))
        if n < num_layers and to_extend:
            extended = evaluator.extend([states[source] for _, source in to_extend], layer)
            for (key, _), state in zip(to_extend, extended, strict=True):
                new_states[key] = state
        states = new_states
        table.rows_done = n + 1
        if on_row:
            on_row(table)
    return table


def _rebuild_states(evaluator: PrefixEvaluator, table: DPTable, n: int) -> dict[tuple[int, int], Any]:
    """Hidden states of row ``n``'s entries, recomputed from their layer sets (checkpoints hold no tensors)."""
    states = {}
    for m, cell in enumerate(table.cells[n]):
        for slot, (_, removed) in enumerate(cell or ()):
            state = evaluator.initial_state()
            for layer in range(n):
                if layer not in removed:
                    state = evaluator.extend([state], layer)[0]
            states[(m, slot)] = state
    return states


def dp_depth_naive(evaluate: Callable[[frozenset[int]], float], num_layers: int, max_remove: int) -> DPTable:
    """The textbook DP: both candidates of every cell scored by a full evaluation of the network
    with the given removed set. Same recurrence and tie rule as `dp_depth` (beam 1); the speed baseline.
    """
    table = DPTable.empty(num_layers, max_remove)
    table.cells[0][0] = [(evaluate(frozenset()), ())]
    table.evaluations = 1
    for n in range(1, num_layers + 1):
        for m in range(min(n, max_remove) + 1):
            candidates = []
            if m <= n - 1 and table.cells[n - 1][m]:
                removed = table.removal_set(n - 1, m)
                candidates.append((evaluate(frozenset(removed)), 0, removed))
            if m >= 1 and table.cells[n - 1][m - 1]:
                removed = (*table.removal_set(n - 1, m - 1), n - 1)
                candidates.append((evaluate(frozenset(removed)), 1, removed))
            table.evaluations += len(candidates)
            value, _, removed = min(candidates, key=lambda c: (c[0], c[1]))
            table.cells[n][m] = [(value, removed)]
        table.rows_done = n + 1
    return table


def naive_dp_evaluations(num_layers: int, max_remove: int) -> int:
    """How many full-network evaluations `dp_depth_naive` makes (for speed-up estimates)."""
    count = 1
    for n in range(1, num_layers + 1):
        for m in range(min(n, max_remove) + 1):
            count += (m <= n - 1) + (m >= 1)
    return count


# ---------------------------------------------------------------- the result and the baselines


DEPTH_METHODS = ("validated", "dp", "bi", "ppl", "last", "random")


@dataclass
class DepthSelection:
    """Removed layers for every removal count 0..max_remove, from one method."""

    method: str
    removal: dict[int, tuple[int, ...]]
    layer_scores: list[float] | None = None  # per-layer criterion of ranking baselines
    metric_values: dict[int, float] = field(default_factory=dict)  # calibration metric per m (DP)
    validation: dict[int, dict[str, float]] = field(default_factory=dict)  # m -> source -> validation metric
    chosen_from: dict[int, str] = field(default_factory=dict)  # m -> the source whose set won (validated)

    def layer_sets(self, num_layers: int) -> dict[int, tuple[int, ...]]:
        """depth -> kept layers (ascending)."""
        out = {}
        for m, removed in self.removal.items():
            gone = set(removed)
            out[num_layers - m] = tuple(i for i in range(num_layers) if i not in gone)
        return out


def from_table(table: DPTable) -> DepthSelection:
    removal = table.removals()
    values = {m: float(table.values[table.num_layers][m]) for m in removal}
    return DepthSelection("dp", removal, metric_values=values)


def rank_removal(order: Sequence[int], max_remove: int) -> dict[int, tuple[int, ...]]:
    """Nested removal sets: the first ``m`` layers of ``order`` for each m."""
    return {m: tuple(sorted(order[:m])) for m in range(max_remove + 1)}


def by_scores(method: str, scores: Sequence[float], max_remove: int) -> DepthSelection:
    """Remove the lowest-scoring layers first (ties: the later layer first, as deeper layers are
    usually the more redundant)."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], -i))
    return DepthSelection(method, rank_removal(order, max_remove), layer_scores=[float(s) for s in scores])


def drop_last(num_layers: int, max_remove: int) -> DepthSelection:
    return DepthSelection("last", rank_removal(list(range(num_layers - 1, -1, -1)), max_remove))


def random_removal(num_layers: int, max_remove: int, seed: int = 0) -> DepthSelection:
    order = list(range(num_layers))
    random.Random(seed).shuffle(order)
    return DepthSelection(f"random-{seed}", rank_removal(order, max_remove))
