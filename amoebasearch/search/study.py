"""Optuna search over a `ShapeSpace`: quality from the supernet, latency from a lookup table.

Latency predictions cost microseconds, quality evaluations cost seconds, so the search prices
every shape up front, refuses an infeasible budget at once, seeds the study with the deepest
feasible shape of a few widths (the optimum lies on the budget's boundary when quality improves
with size), and evaluates quality only for feasible proposals that the cache has not seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from tqdm import tqdm

from amoebasearch.errors import UsageError
from amoebasearch.search.cache import QualityCache, shape_key
from amoebasearch.search.guide import GUIDE_MIN_KNOWN, finite, promising
from amoebasearch.shape import Shape, ShapeSpace

SAMPLERS = ("tpe", "nsga2", "gp", "brute", "random")
REFINING_SAMPLERS = ("tpe", "nsga2", "gp")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
GUIDED = "quality model"  # the `picked_by` user attribute of a trial the cache-guided pass asked for
GUIDE_POLL_S = 1.0  # how often a guided worker looks for another worker's result it waits for
GUIDE_PATIENCE_S = 600.0  # without heartbeats (journal files), how long it waits for one at most


@dataclass(frozen=True)
class Candidate:
    shape: Shape
    latency_ms: float
    quality: float


@dataclass
class SearchResult:
    best: Candidate
    front: list[Candidate]  # non-dominated (quality, latency) among evaluated shapes within budget
    trials: int  # in the study, this run's and earlier runs'
    evaluations: int  # new quality evaluations this run (cache misses)
    fastest: Candidate  # the fastest shape of the space (its quality if known, else nan)
    new_trials: int = 0  # run now: 0 when the study already held the trials asked for
    guided: bool = False  # answered from the quality cache (`guide`), not by the sampler's trials


def make_sampler(name: str, seed: int, multi_objective: bool) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "brute":
        return optuna.samplers.BruteForceSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UsageError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


def pareto_front(candidates: list[Candidate], higher_is_better: bool = False) -> list[Candidate]:
    """Candidates no other candidate beats on both quality and latency, fastest first."""
    sign = -1.0 if higher_is_better else 1.0
    front: list[Candidate] = []
    best_quality = float("inf")
    for cand in sorted(candidates, key=lambda c: (c.latency_ms, sign * c.quality)):
        if sign * cand.quality < best_quality:
            front.append(cand)
            best_quality = sign * cand.quality
    return front


def trial_params(shape: Shape) -> dict[str, int]:
    """The Optuna parameters that make the objective propose ``shape``."""
    return {"depth": shape.depth, "heads": shape.heads, "ffn": shape.ffn}


def shapes_in_progress(study: optuna.Study, space: ShapeSpace) -> set[Shape]:
    """The shapes the study's queued and running trials (this or any worker's) are about to evaluate."""
    shapes = set()
    for trial in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)
    ):
        params = trial.system_attrs.get("fixed_params") or trial.params
        if {"depth", "heads", "ffn"} <= set(params):
            shapes.add(space.shape(params["depth"], params["heads"], params["ffn"]))
    return shapes


def boundary_seeds(space: ShapeSpace, latency: dict[Shape, float], budget_ms: float) -> list[Shape]:
    """The deepest feasible shape for a few widths: where the best subnet usually is."""
    ffn = space.ffn_options
    ffn_levels = sorted({ffn[-1], ffn[(3 * len(ffn)) // 4 - 1], ffn[len(ffn) // 2 - 1]}, reverse=True)
    widths = [(heads, width) for heads in reversed(space.head_options) for width in ffn_levels]
    return [s for h, f in widths if (s := deepest_fitting(space, latency, budget_ms, h, f)) is not None]


def deepest_fitting(
    space: ShapeSpace, latency: dict[Shape, float], budget_ms: float, heads: int, ffn: int
) -> Shape | None:
    """The deepest shape of width (heads, ffn) whose latency fits the budget, if any does."""
    feasible = [d for d in space.depths if latency[space.shape(d, heads, ffn)] <= budget_ms]
    return space.shape(max(feasible), heads, ffn) if feasible else None


def boundary_neighbours(space: ShapeSpace, latency: dict[Shape, float], budget_ms: float, shape: Shape) -> list[Shape]:
    """Shapes one head step and/or up to two FFN steps away from ``shape``, each at the deepest
    depth that fits the budget: the budget boundary around ``shape``, nearest widths first.
    """
    heads, ffn = space.head_options, space.ffn_options
    h0, f0 = heads.index(shape.heads), ffn.index(shape.ffn)
    steps = sorted(((dh, df) for dh in (-1, 0, 1) for df in (-2, -1, 0, 1, 2)), key=lambda s: abs(s[0]) + abs(s[1]))
    out = []
    for dh, df in steps:
        h, f = h0 + dh, f0 + df
        if (dh, df) == (0, 0) or not (0 <= h < len(heads) and 0 <= f < len(ffn)):
            continue
        if (neighbour := deepest_fitting(space, latency, budget_ms, heads[h], ffn[f])) is not None:
            out.append(neighbour)
    return out


class InfeasibleBudget(UsageError):
    """No shape of the space fits the budget (callers may explain how they set the budget)."""

    def __init__(self, message: str, fastest: Shape, fastest_ms: float) -> None:
        super().__init__(message)
        self.fastest, self.fastest_ms = fastest, fastest_ms


def search(
    space: ShapeSpace,
    predict_ms: Callable[[Shape], float],
    evaluate: Callable[[Shape], float],
    cache: QualityCache,
    budget_ms: float,
    trials: int = 60,
    sampler: str = "tpe",
    seed: int = 0,
    storage: optuna.storages.BaseStorage | str | None = None,
    study_name: str | None = None,
    multi_objective: bool = False,
    higher_is_better: bool = False,
    n_jobs: int = 1,
    progress: bool = True,
    guide: bool = True,
) -> SearchResult:
    """Find the best-quality shape whose predicted latency fits ``budget_ms``.

    With ``guide`` (single objective, a refining sampler), a study the sampler has not worked on
    whose quality cache already holds `GUIDE_MIN_KNOWN` shapes is answered by the cache-guided
    pass (`amoebasearch.search.guide`) instead of ``trials`` sampler trials: each shape it
    evaluates is one trial of the study, so a repeated request costs nothing new."""
    latency = {shape: predict_ms(shape) for shape in space}
    fastest_shape = min(latency, key=latency.get)
    if latency[fastest_shape] > budget_ms:
        raise InfeasibleBudget(
            f"budget {budget_ms:g} ms is infeasible on this table: the fastest subnet ({fastest_shape}) "
            f"takes {latency[fastest_shape]:.3g} ms; raise the budget or use a faster device/runtime",
            fastest_shape,
            latency[fastest_shape],
        )
    quality_direction = "maximize" if higher_is_better else "minimize"
    directions = [quality_direction, "minimize"] if multi_objective else [quality_direction]
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=directions,
        sampler=make_sampler(sampler, seed, multi_objective),
        load_if_exists=True,
    )
    # A request the study has already answered (it holds ``trials`` finished trials or more) is
    # answered from them without new ones; otherwise this call runs ``trials`` more, as every worker
    # of a shared study does. Queued, running and failed trials do not count: a crashed worker's
    # trial is failed and queued again by the next trial any worker starts.
    stored = len(study.get_trials(deepcopy=False, states=FINISHED))
    trials = 0 if stored >= trials else trials

    def cached() -> dict[Shape, float]:
        """The quality of every shape of the space in the cache, other workers' included."""
        cache.refresh()
        return {shape: q for shape in latency if (q := cache.get(shape)) is not None}

    known = cached()
    sampled = any(t.user_attrs.get("picked_by") != GUIDED for t in study.trials)
    guided = guide and not multi_objective and sampler in REFINING_SAMPLERS and not sampled
    guided = guided and len(finite(known)) >= GUIDE_MIN_KNOWN
    if guided:
        trials = 0
    elif not study.trials and sampler in REFINING_SAMPLERS:  # random stays pure random: the baseline
        for shape in boundary_seeds(space, latency, budget_ms):
            study.enqueue_trial(trial_params(shape), skip_if_exists=True)
    evaluations_before = cache.evaluations
    ran = 0  # trials this call ran (other workers of a shared study run theirs meanwhile)

    guiding = False  # a trial of the cache-guided pass evaluates only the shape it queued

    def objective(trial: optuna.Trial):
        nonlocal ran
        ran += 1
        if guiding and trial.user_attrs.get("picked_by") != GUIDED:  # not the queued shape: another
            trial.set_user_attr("picked_by", GUIDED)  # worker took that one first; nothing to evaluate
            raise optuna.TrialPruned()
        depth = trial.suggest_int("depth", space.depths[0], space.depths[-1])
        heads = trial.suggest_categorical("heads", list(space.head_options))
        ffn = trial.suggest_categorical("ffn", list(space.ffn_options))
        shape = space.shape(depth, heads, ffn)
        predicted = latency[shape]
        trial.set_user_attr("shape", shape_key(shape))
        trial.set_user_attr("latency_ms", predicted)
        trial.set_constraint("latency_over_budget_ms", predicted - budget_ms)
        if predicted > budget_ms:
            raise optuna.TrialPruned()  # infeasible: never pay for its quality
        quality = cache.quality(shape, evaluate)
        return (quality, predicted) if multi_objective else quality

    def evaluated() -> list[Candidate]:
        return [Candidate(shape, latency[shape], q) for shape, q in cached().items() if latency[shape] <= budget_ms]

    def best_of(candidates: list[Candidate]) -> Candidate | None:
        sign = -1.0 if higher_is_better else 1.0
        return min(candidates, key=lambda c: (sign * c.quality, c.latency_ms)) if candidates else None

    def run(n: int, show: bool = progress) -> None:
        if n <= 0:
            return
        # A trial that raises (bad --data, found at the first evaluation) stops the search with that
        # error, which the CLI prints in one line; Optuna's own log of it would add a traceback.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            study.optimize(objective, n_trials=n, n_jobs=n_jobs, show_progress_bar=show, catch=())
        finally:
            optuna.logging.set_verbosity(optuna.logging.WARNING)

    # The cache-guided pass: each promising shape is queued as a trial of the study and run like any
    # other (heartbeat, retry), so workers sharing the study split the shapes between them; a worker
    # whose remaining shapes are all being evaluated elsewhere waits for their results.
    heartbeats = bool(getattr(storage, "get_heartbeat_interval", lambda: None)())
    attempted: set[Shape] = set()
    waiting_since: float | None = None
    bar = tqdm(desc="cache-guided evaluations", unit="shape", disable=not (guided and progress), leave=False)
    while guided:
        known = cached()
        ranked = promising(latency, budget_ms, known, higher_is_better)
        busy = shapes_in_progress(study, space)
        free = [shape for shape in ranked if shape not in busy and shape not in attempted]
        if not ranked or not (free or busy & set(ranked)):
            break
        if free:
            attempted.add(free[0])
            study.enqueue_trial(trial_params(free[0]), user_attrs={"picked_by": GUIDED}, skip_if_exists=True)
        elif not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            # every promising shape left is another worker's: wait for its result; a lost worker's
            # trial is failed and queued again (heartbeats), or given up on after `GUIDE_PATIENCE_S`
            waiting_since = waiting_since or time.monotonic()
            if heartbeats:
                optuna.storages.fail_stale_trials(study)
            elif time.monotonic() - waiting_since > GUIDE_PATIENCE_S:
                break
            time.sleep(GUIDE_POLL_S)
            continue
        waiting_since = None
        guiding = True
        try:
            run(1, show=False)
        finally:
            guiding = False
        bar.update(cache.evaluations - evaluations_before - bar.n)
    bar.close()

    # Model-guided samplers keep a share of the trials for a local search along the budget
    # boundary around the best shape found: cheap insurance against a sampler that settles on a
    # good region but not its best point (random search is neither seeded nor refined: a baseline).
    reserve = min(trials // 4, 24) if not multi_objective and sampler in REFINING_SAMPLERS else 0
    run(trials - reserve)
    while reserve > 0 and (incumbent := best_of(evaluated())) is not None:
        todo = [s for s in boundary_neighbours(space, latency, budget_ms, incumbent.shape) if cache.get(s) is None]
        if not todo:
            break
        for shape in todo[:reserve]:  # another worker may have queued it a moment ago
            study.enqueue_trial(trial_params(shape), skip_if_exists=True)
        run(min(len(todo), reserve))
        reserve -= min(len(todo), reserve)
    if reserve:  # the boundary around the best shape is explored: give the rest back to the sampler
        run(reserve)

    candidates = evaluated()
    if not candidates:  # every trial drew a shape over budget: the fastest one always fits
        cache.quality(fastest_shape, evaluate)
        candidates = evaluated()
    front = pareto_front(candidates, higher_is_better)
    best = best_of(candidates)
    fastest_quality = cache.get(fastest_shape)
    fastest = Candidate(
        fastest_shape, latency[fastest_shape], float("nan") if fastest_quality is None else fastest_quality
    )
    return SearchResult(
        best=best,
        front=front,
        trials=len(study.get_trials(deepcopy=False, states=FINISHED)),
        evaluations=cache.evaluations - evaluations_before,
        new_trials=ran,
        fastest=fastest,
        guided=guided,
    )
