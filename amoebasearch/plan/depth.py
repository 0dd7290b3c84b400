"""Depth shrinking: which layers survive at every depth. DP (AmoebaLLM) and the baselines.

DP (paper, Sec. 3.2): ``D[n][m]`` is the best calibration metric of a network in which exactly
``m`` of the first ``n`` layers are removed (layers ``n``..L-1 kept), and

    D[n][m] = min( D[n-1][m]                       keep layer n-1,
                   metric(R[n-1][m-1] + {n-1}) )   remove layer n-1,

with back-pointers so that ``R[L][m]`` is the layer set for depth ``L - m``.

Two observations make it cheap, with identical results to the naive DP that evaluates both
candidates of every cell with a full forward:

1. The "keep" candidate of cell (n, m) is *the same network* as the winner of (n-1, m) (the
   prefix is R[n-1][m], everything after is kept), so its value is D[n-1][m]: no evaluation.
2. The "remove" candidate starts from the hidden state after the prefix R[n-1][m-1], which the
   previous row holds, and runs only blocks n..L-1 and the head.

So each cell costs one partial forward instead of two full ones. The core below only needs an
evaluator with ``initial_state``/``extend``/``score``; it does no I/O (``on_row`` lets the caller
checkpoint), so it is tested exactly against brute force with toy evaluators.

The DP is exact when the metric is additive over removed layers; for perplexity it is the
paper's heuristic (the best prefix for (n-1, m-1) need not be a prefix of the best set).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from amoebasearch.errors import UsageError


class PrefixEvaluator(Protocol):
    def initial_state(self) -> Any: ...

    def extend(self, states: list[Any], layer: int) -> list[Any]:
        """Each state advanced through block ``layer``."""

    def score(self, states: list[Any], start: int) -> list[float]:
        """The metric of each state continued through blocks ``start``..L-1, all kept."""


@dataclass
class DPTable:
    """The DP table with back-pointers. ``removed[n][m]``: was layer n-1 removed in cell (n, m)."""

    num_layers: int
    max_remove: int
    values: list[list[float | None]]
    removed: list[list[bool | None]]
    rows_done: int = 0  # rows 0..rows_done-1 are final
    evaluations: int = 0  # candidate networks scored (partial forwards in the fast DP)

    @classmethod
    def empty(cls, num_layers: int, max_remove: int) -> DPTable:
        width = max_remove + 1
        return cls(
            num_layers,
            max_remove,
            values=[[None] * width for _ in range(num_layers + 1)],
            removed=[[None] * width for _ in range(num_layers + 1)],
        )

    def removal_set(self, n: int, m: int) -> tuple[int, ...]:
        """The removed layers of cell (n, m), by following back-pointers."""
        out = []
        while n > 0:
            if self.removed[n][m] is None:
                raise ValueError(f"DP cell ({n}, {m}) is not filled")
            if self.removed[n][m]:
                out.append(n - 1)
                m -= 1
            n -= 1
        return tuple(sorted(out))

    def removals(self) -> dict[int, tuple[int, ...]]:
        """m -> removed layers, for every m the finished table covers."""
        return {
            m: self.removal_set(self.num_layers, m)
            for m in range(self.max_remove + 1)
            if self.values[self.num_layers][m] is not None
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "max_remove": self.max_remove,
            "values": self.values,
            "removed": self.removed,
            "rows_done": self.rows_done,
            "evaluations": self.evaluations,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DPTable:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})


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
) -> DPTable:
    """Fill the DP table row by row (see the module docstring); ``table`` resumes a partial one.

    Ties keep the layer. ``on_row`` is called after every finished row (for checkpoints, progress).
    """
    if table is None or table.rows_done == 0:
        table = DPTable.empty(num_layers, max_remove)
        state = evaluator.initial_state()
        table.values[0][0] = evaluator.score([state], 0)[0]
        table.evaluations = 1
        table.rows_done = 1
        states = {0: state}
        if on_row:
            on_row(table)
    else:
        if (table.num_layers, table.max_remove) != (num_layers, max_remove):
            raise UsageError("the DP checkpoint was made for another layer count or --max-remove: start afresh")
        done = table.rows_done > num_layers
        states = {} if done else _rebuild_states(evaluator, table, table.rows_done - 1)

    for n in range(table.rows_done, num_layers + 1):
        layer = n - 1
        top = min(n, max_remove)
        remove_ms = [m for m in range(1, top + 1) if (m - 1) in states]
        scores = dict(zip(remove_ms, evaluator.score([states[m - 1] for m in remove_ms], n), strict=True))
        table.evaluations += len(remove_ms)
        kept_ms = []
        new_states = {}
        for m in range(top + 1):
            keep = table.values[n - 1][m] if m in states else None
            remove = scores.get(m)
            if remove is not None and (keep is None or remove < keep):
                table.values[n][m], table.removed[n][m] = remove, True
                new_states[m] = states[m - 1]  # the removed block passes the residual through
            else:
                table.values[n][m], table.removed[n][m] = keep, False
                kept_ms.append(m)
        if n < num_layers and kept_ms:
            for m, state in zip(kept_ms, evaluator.extend([states[m] for m in kept_ms], layer), strict=True):
                new_states[m] = state
        states = new_states
        table.rows_done = n + 1
        if on_row:
            on_row(table)
    return table


def _rebuild_states(evaluator: PrefixEvaluator, table: DPTable, n: int) -> dict[int, Any]:
    """Hidden states of row ``n``'s cells, recomputed from their layer sets (checkpoints hold no tensors)."""
    states = {}
    for m in range(min(n, table.max_remove) + 1):
        if table.values[n][m] is None:
            continue
        removed = set(table.removal_set(n, m))
        state = evaluator.initial_state()
        for layer in range(n):
            if layer not in removed:
                state = evaluator.extend([state], layer)[0]
        states[m] = state
    return states


def dp_depth_naive(evaluate: Callable[[frozenset[int]], float], num_layers: int, max_remove: int) -> DPTable:
    """The textbook DP: both candidates of every cell scored by a full evaluation of the network
    with the given removed set. Same recurrence and tie rule as `dp_depth`; the speed baseline.
    """
    table = DPTable.empty(num_layers, max_remove)
    table.values[0][0] = evaluate(frozenset())
    table.evaluations = 1
    for n in range(1, num_layers + 1):
        for m in range(min(n, max_remove) + 1):
            keep = remove = None
            if m <= n - 1 and table.values[n - 1][m] is not None:
                keep = evaluate(frozenset(table.removal_set(n - 1, m)))
                table.evaluations += 1
            if m >= 1 and table.values[n - 1][m - 1] is not None:
                remove = evaluate(frozenset(table.removal_set(n - 1, m - 1)) | {n - 1})
                table.evaluations += 1
            if remove is not None and (keep is None or remove < keep):
                table.values[n][m], table.removed[n][m] = remove, True
            else:
                table.values[n][m], table.removed[n][m] = keep, False
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


DEPTH_METHODS = ("dp", "bi", "ppl", "last", "random")


@dataclass
class DepthSelection:
    """Removed layers for every removal count 0..max_remove, from one method."""

    method: str
    removal: dict[int, tuple[int, ...]]
    layer_scores: list[float] | None = None  # per-layer criterion of ranking baselines
    metric_values: dict[int, float] = field(default_factory=dict)  # calibration metric per m (DP)

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
