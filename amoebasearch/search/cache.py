"""Device-independent quality cache kept in the Optuna storage itself.

A shape's quality (held-out perplexity, accuracy) depends on the supernet and the evaluation
settings, never on the device or the budget. Each evaluated shape is stored as one completed
trial of a dedicated study named after the supernet signature and the evaluation settings, so
every `find` (any budget, any device, any worker sharing the storage) reuses it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import optuna

from amoebasearch.shape import Shape


def shape_key(shape: Shape) -> str:
    return json.dumps(shape.to_dict(), sort_keys=True, separators=(",", ":"))


def shape_from_key(key: str) -> Shape:
    return Shape.from_dict(json.loads(key))


def cache_study_name(supernet_signature: str, eval_settings: dict[str, Any]) -> str:
    settings = hashlib.sha256(json.dumps(eval_settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"amoebasearch-quality-{supernet_signature}-{settings}"


class QualityCache:
    """Quality per shape, persisted as trials of one Optuna study; evaluates only on a miss."""

    def __init__(self, storage: optuna.storages.BaseStorage | str, study_name: str) -> None:
        self.study = optuna.create_study(storage=storage, study_name=study_name, load_if_exists=True)
        self._known: dict[str, float] = {}
        self.evaluations = 0
        self.evaluation_s = 0.0  # wall time spent evaluating (this process's misses)
        self.refresh()

    def refresh(self) -> None:
        """Pick up shapes other workers evaluated since we last looked."""
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            key = trial.user_attrs.get("shape")
            if key is not None:
                self._known[key] = trial.value

    def __len__(self) -> int:
        return len(self._known)

    def items(self) -> list[tuple[str, float]]:
        """(shape key, quality) of every cached shape, in a stable order."""
        return sorted(self._known.items())

    def get(self, shape: Shape) -> float | None:
        return self._known.get(shape_key(shape))

    def put(self, shape: Shape, quality: float) -> None:
        key = shape_key(shape)
        self._known[key] = quality
        self.study.add_trial(optuna.trial.create_trial(value=quality, user_attrs={"shape": key}))

    def quality(self, shape: Shape, evaluate: Callable[[Shape], float]) -> float:
        cached = self.get(shape)
        if cached is None:
            self.refresh()
            cached = self.get(shape)
        if cached is not None:
            return cached
        start = time.perf_counter()
        value = float(evaluate(shape))
        self.evaluation_s += time.perf_counter() - start
        self.evaluations += 1
        self.put(shape, value)
        return value
