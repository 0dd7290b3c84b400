import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from amoebasearch.errors import UsageError
from amoebasearch.search.budget import parse_budget
from amoebasearch.search.cache import QualityCache
from amoebasearch.search.guide import GUIDE_MIN_KNOWN, maximal_fitting
from amoebasearch.search.storage import open_storage
from amoebasearch.search.study import Candidate, boundary_neighbours, pareto_front, search
from amoebasearch.shape import ModelDims, Shape, ShapeSpace

DIMS = ModelDims(num_layers=12, num_heads=6, num_kv_heads=2, ffn=512, hidden=128, head_dim=32)


def fake_latency(shape: Shape) -> float:
    """Additive like a real table: per-block cost grows with width, plus a fixed overhead."""
    return 1.0 + shape.depth * (0.5 + 0.3 * shape.heads / 6 + 0.7 * shape.ffn / 512)


def fake_quality(shape: Shape) -> float:
    """Perplexity-like: falls with depth and width, with diminishing returns."""
    return 10.0 + 40.0 / shape.depth + 6.0 / shape.heads + 800.0 / shape.ffn


@pytest.mark.parametrize(
    ("text", "ms"),
    [("30ms", 30.0), ("30 ms", 30.0), ("0.03s", 30.0), ("2.5ms", 2.5), ("30", 30.0), ("1500us", 1.5), (" 7MS ", 7.0)],
)
def test_budget_parser_accepts(text, ms):
    assert parse_budget(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "fast", "30 sec", "-5ms", "0", "0ms", "ms", "3e2ms", "30 ms ms", "nan"])
def test_budget_parser_rejects(text):
    with pytest.raises(UsageError, match="budget"):
        parse_budget(text)


def test_pareto_front_keeps_only_non_dominated():
    cands = [Candidate(Shape((0,), 2, 64), lat, q) for lat, q in [(1, 9), (2, 8), (2.5, 8.5), (3, 5), (4, 5)]]
    assert [(c.latency_ms, c.quality) for c in pareto_front(cands)] == [(1, 9), (2, 8), (3, 5)]


def exhaustive_best(space, budget):
    feasible = [s for s in space if fake_latency(s) <= budget]
    return min(feasible, key=fake_quality)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random"])
def test_search_respects_the_budget_and_finds_a_near_optimum(sampler):
    space = ShapeSpace(DIMS, ffn_step=64)  # 12 x 3 x 8 = 288 shapes
    budget = 8.0
    cache = QualityCache(optuna.storages.InMemoryStorage(), "q")
    result = search(space, fake_latency, fake_quality, cache, budget, trials=40, sampler=sampler, progress=False)
    assert result.best is not None and result.best.latency_ms <= budget
    assert all(c.latency_ms <= budget for c in result.front)
    optimum = fake_quality(exhaustive_best(space, budget))
    if sampler != "random":  # random search is the unseeded, unrefined baseline: no promise of the optimum
        assert result.best.quality <= optimum * 1.02
    assert result.evaluations <= 40


def test_a_repeated_request_is_answered_from_the_study_without_new_trials():
    space = ShapeSpace(DIMS, ffn_step=64)
    cache = QualityCache(optuna.storages.InMemoryStorage(), "q")
    storage = optuna.storages.InMemoryStorage()
    kwargs = dict(trials=20, storage=storage, study_name="s", progress=False)
    first = search(space, fake_latency, fake_quality, cache, 8.0, **kwargs)
    again = search(space, fake_latency, fake_quality, cache, 8.0, **kwargs)
    assert first.new_trials == 20 and again.new_trials == 0 and again.evaluations == 0
    assert again.best == first.best and again.trials == 20
    more = search(space, fake_latency, fake_quality, cache, 8.0, **{**kwargs, "trials": 30})  # asks for more
    assert more.new_trials == 30 and more.trials == 50


def contains(big: Shape, small: Shape) -> bool:
    return big.depth >= small.depth and big.heads >= small.heads and big.ffn >= small.ffn


def test_the_maximal_fitting_shapes_contain_every_fitting_shape_and_not_each_other():
    space = ShapeSpace(DIMS, ffn_step=64)
    latency = {s: fake_latency(s) for s in space}
    maximal = maximal_fitting(latency, 8.0)
    fitting = [s for s in space if latency[s] <= 8.0]
    assert 1 < len(maximal) < len(fitting) and all(latency[s] <= 8.0 for s in maximal)
    assert all(any(contains(m, s) for m in maximal) for s in fitting)
    assert not any(a != b and contains(a, b) for a in maximal for b in maximal)


def test_a_new_budget_on_a_warm_cache_costs_few_evaluations_and_keeps_the_optimum():
    """After one multi-objective run fills the cache, each new budget is answered by the quality
    model's picks: a handful of evaluations, the exhaustive optimum, nothing new when repeated."""
    space = ShapeSpace(DIMS, ffn_step=64)
    storage = optuna.storages.InMemoryStorage()
    cache = QualityCache(storage, "q")
    front = search(space, fake_latency, fake_quality, cache, 30.0, trials=40, storage=storage, study_name="front",
                   multi_objective=True, progress=False)  # fmt: skip
    assert not front.guided and len(cache) >= GUIDE_MIN_KNOWN
    for budget in (5.0, 6.5, 8.0, 9.5, 11.0, 13.0):
        kwargs = dict(trials=60, storage=storage, study_name=f"b{budget}", progress=False)
        result = search(space, fake_latency, fake_quality, cache, budget, **kwargs)
        assert result.guided and result.evaluations <= 6, (budget, result.evaluations)
        assert result.best.shape == exhaustive_best(space, budget)
        again = search(space, fake_latency, fake_quality, cache, budget, **kwargs)
        assert again.guided and again.evaluations == 0 and again.best == result.best
    explored = search(space, fake_latency, fake_quality, cache, 7.0, trials=20, storage=storage, study_name="x",
                      guide=False, progress=False)  # fmt: skip
    assert not explored.guided and explored.new_trials == 20


def test_random_search_is_pure_random():
    space = ShapeSpace(DIMS, ffn_step=64)
    cache = QualityCache(optuna.storages.InMemoryStorage(), "q")
    storage = optuna.storages.InMemoryStorage()
    search(space, fake_latency, fake_quality, cache, 8.0, trials=20, sampler="random", storage=storage,
           study_name="r", progress=False)  # fmt: skip
    trials = optuna.load_study(study_name="r", storage=storage).trials
    assert len(trials) == 20 and not any(t.system_attrs.get("fixed_params") for t in trials)  # nothing enqueued


def test_infeasible_budget_names_the_fastest_latency():
    space = ShapeSpace(DIMS, ffn_step=64)
    cache = QualityCache(optuna.storages.InMemoryStorage(), "q")
    with pytest.raises(UsageError, match=r"infeasible.*fastest subnet.*1\.\d+ ms"):
        search(space, fake_latency, fake_quality, cache, 1.0, trials=5, progress=False)


def test_cache_hit_avoids_reevaluation_across_budgets(tmp_path):
    storage = open_storage(tmp_path / "study.journal")
    space = ShapeSpace(DIMS, ffn_step=64)
    calls = []

    def counting(shape):
        calls.append(shape)
        return fake_quality(shape)

    first = search(space, fake_latency, counting, QualityCache(storage, "q"), 9.0, trials=30, progress=False)
    assert first.evaluations == len(calls) == len(set(calls))  # duplicates never re-evaluated
    calls.clear()
    reopened = QualityCache(open_storage(tmp_path / "study.journal"), "q")
    assert len(reopened) == first.evaluations
    again = search(space, fake_latency, counting, reopened, 9.0, trials=30, study_name="b2", progress=False)
    assert again.best.quality <= first.best.quality
    assert all(reopened.get(s) is not None for s in calls) and len(set(calls)) == len(calls)


def test_storage_urls(tmp_path):
    assert isinstance(open_storage(f"sqlite:///{tmp_path / 'x.db'}"), optuna.storages.RDBStorage)
    assert isinstance(open_storage(f"journal:{tmp_path / 'x'}"), optuna.storages.JournalStorage)
    with pytest.raises(UsageError, match="not understood"):
        open_storage("redis://localhost")
    with pytest.raises(UsageError, match="journal: names no file"):
        open_storage("journal:")


WORKER = textwrap.dedent(  # run from tests/, so `python -c` finds this module there
    """
    import sys
    from test_search import DIMS, fake_latency, fake_quality
    from amoebasearch.search.cache import QualityCache
    from amoebasearch.search.storage import open_storage
    from amoebasearch.search.study import search
    from amoebasearch.shape import ShapeSpace
    storage = open_storage({journal!r})
    search(ShapeSpace(DIMS, ffn_step=64), fake_latency, fake_quality, QualityCache(storage, "quality"), 8.0,
           trials=15, seed=int(sys.argv[1]), storage=storage, study_name="shared", progress=False)
    """
)


def test_two_worker_processes_share_one_study(tmp_path):
    journal = tmp_path / "shared.journal"
    code = WORKER.format(journal=str(journal))
    tests = Path(__file__).parent
    workers = [subprocess.Popen([sys.executable, "-c", code, str(seed)], cwd=tests) for seed in (1, 2)]
    assert [w.wait(timeout=240) for w in workers] == [0, 0]
    study = optuna.load_study(study_name="shared", storage=open_storage(journal))
    numbers = [t.number for t in study.trials]
    states = [(t.number, t.state.name, t.params) for t in study.trials]  # said when it fails (seen once)
    # none lost, none duplicated; a worker that starts after the study holds its 15 trials answers from them
    assert 15 <= len(study.trials) <= 30 and sorted(numbers) == list(range(len(study.trials))), states
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)


GUIDED_WORKER = textwrap.dedent(  # run from tests/, so `python -c` finds this module there
    """
    import json, sys, time
    from test_search import DIMS, fake_latency, fake_quality
    from amoebasearch.search.cache import QualityCache
    from amoebasearch.search.storage import open_storage
    from amoebasearch.search.study import search
    from amoebasearch.shape import ShapeSpace

    def slow_quality(shape):  # long enough for both workers to be evaluating at once
        time.sleep(0.3)
        return fake_quality(shape)

    storage = open_storage({journal!r})
    time.sleep(max(0.0, float(sys.argv[1]) - time.time()))  # both start together
    result = search(ShapeSpace(DIMS, ffn_step=64), fake_latency, slow_quality, QualityCache(storage, "quality"),
                    8.0, storage=storage, study_name="guided", progress=False)
    print(json.dumps({{"guided": result.guided, "evaluations": result.evaluations, "best": str(result.best.shape)}}))
    """
)


def test_two_workers_on_a_new_budget_split_the_guided_evaluations(tmp_path):
    """On a warm cache both workers take the cache-guided pass: each promising shape is evaluated
    once, by whichever worker queued it, and both answer with the exhaustive optimum."""
    journal = tmp_path / "shared.journal"
    storage = open_storage(journal)
    space = ShapeSpace(DIMS, ffn_step=64)
    cache = QualityCache(storage, "quality")
    search(space, fake_latency, fake_quality, cache, 30.0, trials=40, storage=storage, study_name="front",
           multi_objective=True, progress=False)  # fmt: skip
    before = len(cache)
    code, start = GUIDED_WORKER.format(journal=str(journal)), time.time() + 5.0
    workers = [
        subprocess.Popen([sys.executable, "-c", code, str(start)], cwd=Path(__file__).parent, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    reports = [json.loads(w.communicate(timeout=240)[0]) for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    shapes = [t.user_attrs["shape"] for t in optuna.load_study(study_name="quality", storage=storage).trials]
    assert len(shapes) == len(set(shapes)), "a shape was evaluated twice"
    assert all(r["guided"] for r in reports) and sum(r["evaluations"] for r in reports) == len(shapes) - before
    assert len(shapes) > before  # the budget needed new evaluations: the split was exercised
    assert {r["best"] for r in reports} == {str(exhaustive_best(space, 8.0))}


def test_boundary_neighbours_are_the_deepest_feasible_shapes_at_nearby_widths():
    space = ShapeSpace(DIMS, ffn_step=64)
    latency = {s: fake_latency(s) for s in space}
    centre = space.shape(6, 4, 256)
    neighbours = boundary_neighbours(space, latency, 8.0, centre)
    assert neighbours and all(latency[s] <= 8.0 for s in neighbours)
    for shape in neighbours:
        deeper = shape.depth + 1
        assert deeper not in space.depths or latency[space.shape(deeper, shape.heads, shape.ffn)] > 8.0
        h = abs(space.head_options.index(shape.heads) - space.head_options.index(centre.heads))
        f = abs(space.ffn_options.index(shape.ffn) - space.ffn_options.index(centre.ffn))
        assert h <= 1 and f <= 2 and (h, f) != (0, 0)


def test_a_record_another_worker_is_writing_is_not_cut(tmp_path, capsys):
    """A worker opening the journal while another one is mid-append (holding Optuna's journal lock)
    waits for the record to end instead of cutting it as a crash's remnant."""
    import threading
    import time

    journal, other = tmp_path / "s.journal", tmp_path / "other.journal"
    optuna.create_study(storage=open_storage(journal), study_name="a")
    optuna.create_study(storage=open_storage(other), study_name="b")
    record = other.read_bytes()  # the one record that creates study "b"
    lock = optuna.storages.journal.JournalFileSymlinkLock(str(journal))
    lock.acquire()
    with journal.open("ab") as handle:
        handle.write(record[:20])  # the writer is halfway through its record
    opened = threading.Thread(target=open_storage, args=(journal,))
    opened.start()
    time.sleep(0.3)  # the opener reaches the lock and waits there
    with journal.open("ab") as handle:
        handle.write(record[20:])
    lock.release()
    opened.join(timeout=30)
    assert {s.study_name for s in open_storage(journal).get_all_studies()} == {"a", "b"}
    assert "cut-short record" not in capsys.readouterr().err


def test_a_journal_cut_mid_record_is_repaired_and_a_damaged_one_named(tmp_path, capsys):
    journal = tmp_path / "s.journal"
    storage = open_storage(journal)
    optuna.create_study(storage=storage, study_name="a")
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 0, "worker_id": "x", "study_na')  # a crash mid-append
    storage = open_storage(journal)
    assert journal.read_bytes() == whole and "cut-short record" in capsys.readouterr().err
    optuna.create_study(storage=storage, study_name="b")  # the next append starts on its own line
    assert {s.study_name for s in open_storage(journal).get_all_studies()} == {"a", "b"}
    journal.write_bytes(b"not json\n" + whole)  # a record no reader can parse, before good ones
    with pytest.raises(UsageError, match="journal .* is damaged"):
        open_storage(journal)
