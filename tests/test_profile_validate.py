"""Validation: calibration fit on known data, held-out split, summary, and a tiny end-to-end run."""

import json

import pandas as pd
import pytest
import torch

from amoebasearch.profile.validate import fit_calibration, sample_shapes, summary
from amoebasearch.shape import ModelDims


def test_calibration_recovers_a_linear_relation():
    composed = [100.0, 200.0, 300.0, 450.0]
    rows = pd.DataFrame(
        {
            "phase": "decode",
            "batch": 1,
            "context": 128,
            "composed_us": composed,
            "measured_us": [1.1 * c + 7 for c in composed],
        }
    )
    fit = fit_calibration(rows)["decode/1/128"]
    assert fit["scale"] == pytest.approx(1.1) and fit["offset_us"] == pytest.approx(7.0)


def test_summary_counts_only_held_out_rows():
    rows = pd.DataFrame(
        {
            "split": ["calibration", "heldout", "heldout", "heldout", "heldout"],
            "phase": "prefill",
            "batch": 1,
            "context": 128,
            "predicted_us": [150.0, 101.0, 96.0, 107.0, 80.0],  # errors of 50, 1, -4, 7 and -20 %
            "measured_us": 100.0,
            "composed_us": [150.0, 102.0, 92.0, 114.0, 60.0],  # before calibration: twice the error
        }
    )
    s = summary(rows).iloc[0]
    assert s["n"] == 4 and s["within_5pct"] == 0.5 and s["within_10pct"] == 0.75
    assert s["mape_pct"] == pytest.approx(8.0)
    assert s["uncalibrated_mape_pct"] == pytest.approx(16.0)


def test_shapes_are_seeded():
    dims = ModelDims(num_layers=4, num_heads=4, num_kv_heads=2, ffn=128, hidden=64, head_dim=16)
    assert sample_shapes(dims, 5, seed=3) == sample_shapes(dims, 5, seed=3)
    assert sample_shapes(dims, 5, seed=3) != sample_shapes(dims, 5, seed=4)


def test_profile_and_validate_tiny_end_to_end(tmp_path, capsys):
    from conftest import tiny_model

    from amoebasearch.cli import main

    tiny_model("llama").save_pretrained(tmp_path / "tiny")
    torch.manual_seed(0)
    code = main(
        [
            "profile",
            "--model",
            str(tmp_path / "tiny"),
            "--out",
            str(tmp_path / "p"),
            "--context",
            "8",
            "--validate",
            "3",
            "--calibrate",
            "3",
            "--ffn-step",
            "64",
            "--repeats",
            "20",
            "--pause",
            "0",
            "--instances",
            "2",
            "--validate-instances",
            "3",
        ]
    )
    assert code == 0
    # the closing summary judges every point against the bar: 3 held-out subnets can never meet it
    assert "misses the bar: 3 held-out subnets (bar 50)" in capsys.readouterr().out
    validation = pd.read_csv(next((tmp_path / "p").glob("*.validation.csv")))
    assert len(validation) == 12 and set(validation["split"]) == {"calibration", "heldout"}
    assert (validation["measured_us"] > 0).all()
    # every block width is the median of two independently allocated instances, every subnet of three
    assert (validation["instances"] == 3).all() and (validation["instance_spread"] >= 1).all()
    sidecar = json.loads(next((tmp_path / "p").glob("*float32.json")).read_text())
    assert sidecar["settings"]["instances"] == 2 and "malloc" in sidecar["settings"] and "gc" in sidecar["settings"]


class ScriptedClock:
    """Returns scripted durations in call order (fake time for the harness)."""

    def __init__(self, durations):
        self.durations = iter(durations)

    def start(self):
        return None

    def stop(self, token):
        return next(self.durations)


def test_disturbed_groups_are_measured_again():
    from amoebasearch.profile.validation_run import measure_group

    noop = (lambda x: None, lambda: None, None)
    disturbed = [50.0, 130.0] * 20  # program, sentinel per round; sentinel 30 % slow
    calm = [40.0, 100.0] * 20
    history = [100.0, 101.0, 99.0]  # sentinel timings of the groups accepted before
    stats, check = measure_group([noop], (noop, history, 90.0), ScriptedClock(disturbed + calm), 0, 20, 0.03)
    assert check["attempts"] == 2 and check["chosen_attempt"] == 2
    assert stats[0].median_us == 40.0
    assert history[-1] == 100.0 and check["sentinel_vs_table"] == round(100 / 90, 4)


def test_the_first_group_sets_the_usual_value():
    from amoebasearch.profile.validation_run import measure_group

    noop = (lambda x: None, lambda: None, None)
    history = []
    _, check = measure_group([noop], (noop, history, 100.0), ScriptedClock([5.0, 123.0] * 20), 0, 20, 0.03)
    assert check["attempts"] == 1 and history == [123.0]


def test_a_lasting_disturbance_keeps_the_closest_attempt():
    from amoebasearch.profile.validation_run import MAX_ATTEMPTS, measure_group

    noop = (lambda x: None, lambda: None, None)
    attempts = [[float(10 + a), 150.0 - 10 * a] * 20 for a in range(MAX_ATTEMPTS)]
    clock = ScriptedClock([d for attempt in attempts for d in attempt])
    stats, check = measure_group([noop], (noop, [100.0], 100.0), clock, 0, 20, 0.03)
    assert check["attempts"] == MAX_ATTEMPTS
    assert check["chosen_attempt"] == MAX_ATTEMPTS  # its sentinel was closest to the usual value


def test_calibration_split_is_seeded_random_and_sized():
    from amoebasearch.profile.validate import calibration_subnets

    chosen = calibration_subnets(66, 16, seed=0)
    assert len(chosen) == 16 and chosen == calibration_subnets(66, 16, seed=0)
    assert chosen != set(range(16))  # not simply the first (earliest-timed) subnets


@pytest.mark.parametrize("name", ["eager", "onnxruntime"])
def test_subnet_instances_are_independent_copies_of_one_subnet(name):
    """PyTorch runtimes get fresh extractions (own tensors, same values); a runtime that copies
    weights gets the one module, each program of it being a separate allocation."""
    from conftest import tiny_model

    from amoebasearch.profile.programs import Context
    from amoebasearch.profile.runtimes import get_runtime
    from amoebasearch.profile.validation_run import subnet_instances
    from amoebasearch.shape import Shape

    model = tiny_model("llama")
    ctx = Context(get_runtime(name, "cpu", torch.float32), "cpu", torch.float32)
    copies = subnet_instances(model, Shape((0, 2), 2, 64), ctx, 3)
    assert len(copies) == 3
    weights = [c.model.layers[0].mlp.up_proj.weight for c in copies]
    if name == "onnxruntime":
        assert all(c is copies[0] for c in copies)
    else:
        assert len({w.data_ptr() for w in weights}) == 3
        assert all(torch.equal(w, weights[0]) for w in weights)


def flat_table(tmp_path):
    """A tiny Llama and a hand-made table for it at one decode point (every block 5 us)."""
    from conftest import tiny_model

    from amoebasearch.profile.blocks import Point
    from amoebasearch.profile.table import LatencyTable, table_row

    model = tiny_model("llama")
    point = Point("decode", 1, 8)
    fixed = ("embedding", "head", "overhead")
    rows = [table_row(b, 0, 0, point, 10.0, 9.0, 11.0, 20, False, "measured") for b in fixed]
    dims = ModelDims.from_config(model.config)
    for heads in (2, 4):
        for ffn in range(64, dims.ffn + 1, 64):
            rows.append(table_row("decoder", heads, ffn, point, 5.0, 4.5, 5.5, 20, False, "measured"))
    return model, point, LatencyTable(pd.DataFrame(rows), {"model": {"dims": {}}, "settings": {}}, tmp_path / "t.csv")


def scripted_group(ratios: dict[int, float], calls: list, histories: list):
    """A stand-in for `measure_group`: call n reports sentinel ratio ``ratios.get(n, 1)`` and
    times every program at 100 + n us (so rows tell which call measured them)."""
    from amoebasearch.profile import validation_run
    from amoebasearch.profile.timing import Stats

    def measure(programs, sentinel_and_history, clock, warmup, repeats, tolerance, pause_s, report=None, seconds=0.0):
        number = len(calls)
        calls.append(number)
        histories.append(list(sentinel_and_history[1]))
        ratio = ratios.get(number, 1.0)
        off = abs(ratio - 1) > tolerance
        return [Stats(100.0 + number, 100.0 + number, 100.0 + number, 20)] * len(programs), {
            "sentinel_ratio": ratio,
            "sentinel_vs_table": ratio,
            "attempts": validation_run.MAX_ATTEMPTS if off else 1,
            "chosen_attempt": validation_run.MAX_ATTEMPTS if off else 1,
        }

    return measure


def test_resume_measures_again_only_the_groups_timed_while_disturbed(tmp_path, monkeypatch):
    from amoebasearch.profile import validation_run
    from amoebasearch.profile.programs import Context
    from amoebasearch.profile.runtimes import get_runtime

    model, point, table = flat_table(tmp_path)
    ctx = Context(get_runtime("eager", "cpu", torch.float32), "cpu", torch.float32)
    calls, histories = [], []
    # group 1 stays 5 % off in its slot and when postponed (calls 1 and 3)
    monkeypatch.setattr(validation_run, "measure_group", scripted_group({1: 1.05, 3: 1.06}, calls, histories))
    frame, stats = validation_run.validate_table(model, table, ctx, [point], 6, calibrate=6, group=4, instances=1)
    group1 = frame["subnet"].between(4, 7)
    assert calls == [0, 1, 2, 3] and int(stats["disturbed"].sum()) == int((frame[group1]["split"] == "heldout").sum())
    assert (frame[frame["subnet"].between(4, 7)]["measured_us"] == 101.0).all()  # the closer, first pass

    calls, histories = [], []
    monkeypatch.setattr(validation_run, "measure_group", scripted_group({}, calls, histories))
    again, stats = validation_run.validate_table(
        model, table, ctx, [point], 6, calibrate=6, group=4, instances=1, resume=True
    )
    assert calls == [0], "only the disturbed group is measured again"
    # groups 0 and 2 (calls 0 and 2); the table composes the sentinel as 3 x 10 + 4 blocks x 5 us
    assert histories[0] == pytest.approx([50.0, 50.0])
    assert (again[again["subnet"].between(4, 7)]["measured_us"] == 100.0).all()
    assert (again[~again["subnet"].between(4, 7)].set_index("subnet")["measured_us"]).equals(
        frame[~frame["subnet"].between(4, 7)].set_index("subnet")["measured_us"]
    )
    assert int(stats["disturbed"].sum()) == 0


def test_a_group_off_through_every_attempt_is_postponed_and_measured_again(tmp_path, monkeypatch):
    """Group 1's sentinel stays off in its own slot; it is re-measured after group 2 from fresh
    copies, and the closer second pass is kept, with attempts counted across both passes."""
    from amoebasearch.profile import validation_run
    from amoebasearch.profile.programs import Context
    from amoebasearch.profile.runtimes import get_runtime

    model, point, table = flat_table(tmp_path)
    calls, histories = [], []
    # call 1 = group 1 (4 % off), call 3 = its second pass (0.5 % off)
    monkeypatch.setattr(validation_run, "measure_group", scripted_group({1: 1.04, 3: 1.005}, calls, histories))
    ctx = Context(get_runtime("eager", "cpu", torch.float32), "cpu", torch.float32)
    heard = []
    frame, _ = validation_run.validate_table(
        model, table, ctx, [point], 6, calibrate=6, group=4, instances=1, report=heard.append
    )
    assert calls == [0, 1, 2, 3]
    assert heard == ["1 group(s) postponed: the host stayed disturbed", "postponed group 1/1: second pass"]
    second = frame[frame["subnet"].between(4, 7)]
    assert (second["measured_us"] == 103.0).all()  # the second pass, not the first (101)
    assert (second["attempts"] == validation_run.MAX_ATTEMPTS + 1).all()
    assert (second["chosen_attempt"] == validation_run.MAX_ATTEMPTS + 1).all()
    assert (frame[frame["subnet"] < 4]["attempts"] == 1).all() and len(frame) == 12


def test_a_run_that_starts_while_the_host_is_slow_re_times_its_first_groups(tmp_path, monkeypatch):
    """Groups 0 and 1 are timed while the host runs 10 % slow, groups 2-4 at its usual speed:
    against the median of all groups the slow start stands out, so it is measured again, not
    the three later groups."""
    from amoebasearch.profile import validation_run
    from amoebasearch.profile.programs import Context
    from amoebasearch.profile.runtimes import get_runtime

    model, point, table = flat_table(tmp_path)
    calls, histories = [], []
    monkeypatch.setattr(validation_run, "measure_group", scripted_group({0: 1.1, 1: 1.1}, calls, histories))
    ctx = Context(get_runtime("eager", "cpu", torch.float32), "cpu", torch.float32)
    frame, stats = validation_run.validate_table(model, table, ctx, [point], 14, calibrate=6, group=4, instances=1)
    assert calls == [0, 1, 2, 3, 4, 5, 6]  # five groups, then groups 0 and 1 again
    assert (frame[frame["subnet"] < 4]["measured_us"] == 105.0).all()
    assert (frame[frame["subnet"].between(4, 7)]["measured_us"] == 106.0).all()
    assert (frame["sentinel_ratio"] == 1.0).all() and int(stats["disturbed"].sum()) == 0


def test_a_lasting_shift_of_the_host_becomes_the_usual_value():
    """After one group whose every attempt saw the host 12 % faster, the next group at that
    speed is accepted at once (the history holds every attempt)."""
    from amoebasearch.profile.validation_run import MAX_ATTEMPTS, measure_group

    noop = (lambda x: None, lambda: None, None)
    history = [100.0, 100.0]
    fast = [10.0, 88.0] * 20
    _, check = measure_group([noop], (noop, history, 100.0), ScriptedClock(fast * MAX_ATTEMPTS), 0, 20, 0.02)
    assert check["attempts"] == MAX_ATTEMPTS and check["sentinel_ratio"] == 0.88
    _, check = measure_group([noop], (noop, history, 100.0), ScriptedClock(fast), 0, 20, 0.02)
    assert check["attempts"] == 1 and check["sentinel_ratio"] == 1.0


def test_rebase_judges_every_group_against_the_median_group():
    from amoebasearch.profile.validate import rebase_sentinel

    rows = [
        {"subnet": i, "phase": "decode", "batch": 1, "context": 8, "sentinel_vs_table": v, "sentinel_ratio": 1.0}
        for i, v in [(0, 1.2), (1, 1.2), (2, 1.0), (3, 1.0), (4, 1.05), (5, 1.05)]
    ]
    usual = rebase_sentinel(rows, group=2)
    assert usual == {("decode", 1, 8): 1.05}
    assert [r["sentinel_ratio"] for r in rows] == pytest.approx([1.1429, 1.1429, 0.9524, 0.9524, 1.0, 1.0], abs=1e-4)


def test_resume_rebuilds_the_sentinel_history_one_value_per_group():
    from amoebasearch.profile.blocks import Point
    from amoebasearch.profile.validate import restore_sentinel_history

    point = Point("decode", 1, 8)
    rows = [
        {"subnet": i, "phase": "decode", "batch": 1, "context": 8, "sentinel_vs_table": v}
        for i, v in [(0, 1.1), (1, 1.1), (2, 1.1), (3, 1.1), (4, 1.2), (5, 1.2)]
    ] + [{"subnet": 0, "phase": "prefill", "batch": 1, "context": 8, "sentinel_vs_table": 3.0}]
    history = []
    restore_sentinel_history(rows, {point: (None, history, 100.0)}, group=4)
    assert history == pytest.approx([110.0, 120.0])


def test_retries_wait_longer_each_time(monkeypatch):
    from amoebasearch.profile import validation_run

    slept = []
    monkeypatch.setattr(validation_run.time, "sleep", slept.append)
    noop = (lambda x: None, lambda: None, None)
    off = [10.0, 150.0] * 20 * validation_run.MAX_ATTEMPTS  # the sentinel 50 % slow in every attempt
    heard = []
    validation_run.measure_group(
        [noop], (noop, [100.0], 100.0), ScriptedClock(off), 0, 20, 0.03, pause_s=5.0, report=heard.append
    )
    assert slept == [5.0, 10.0, 20.0, 40.0][: validation_run.MAX_ATTEMPTS - 1]
    # what a progress bar shows meanwhile: how far off, which attempt, how long the wait
    assert heard[0] == f"sentinel +50.0% off, attempt 1/{validation_run.MAX_ATTEMPTS}; again in 5 s"
    assert len(heard) == validation_run.MAX_ATTEMPTS - 1


def test_resume_refuses_rows_of_other_subnets_or_another_table(tmp_path, monkeypatch):
    """A validation file of another --seed (other subnets) or of an earlier table (other
    compositions) is refused, not calibrated and scored as if this run had measured it."""
    from amoebasearch.errors import UsageError
    from amoebasearch.profile import validation_run
    from amoebasearch.profile.programs import Context
    from amoebasearch.profile.runtimes import get_runtime

    model, point, table = flat_table(tmp_path)
    ctx = Context(get_runtime("eager", "cpu", torch.float32), "cpu", torch.float32)
    monkeypatch.setattr(validation_run, "measure_group", scripted_group({}, [], []))
    validation_run.validate_table(model, table, ctx, [point], 6, calibrate=6, group=4, instances=1)
    with pytest.raises(UsageError, match="another validation .* or of an earlier table"):
        validation_run.validate_table(
            model, table, ctx, [point], 6, calibrate=6, group=4, instances=1, seed=7, resume=True
        )
    table.rows.loc[table.rows["block"] == "decoder", "median_us"] *= 2  # the table measured again
    table._lookup = None
    with pytest.raises(UsageError, match="of an earlier table"):
        validation_run.validate_table(model, table, ctx, [point], 6, calibrate=6, group=4, instances=1, resume=True)


def test_resume_refuses_subnets_timed_as_another_number_of_copies(tmp_path, monkeypatch):
    """Rows timed as two copies each are not mixed with rows of three (--validate-instances)."""
    from amoebasearch.errors import UsageError
    from amoebasearch.profile import validation_run
    from amoebasearch.profile.programs import Context
    from amoebasearch.profile.runtimes import get_runtime

    model, point, table = flat_table(tmp_path)
    ctx = Context(get_runtime("eager", "cpu", torch.float32), "cpu", torch.float32)
    calls = []
    monkeypatch.setattr(validation_run, "measure_group", scripted_group({}, calls, []))
    frame, _ = validation_run.validate_table(model, table, ctx, [point], 6, calibrate=6, group=4, instances=2)
    assert (frame["instances"] == 2).all()
    with pytest.raises(UsageError, match="timed as 2 copies each, not 3: resume with --validate-instances 2"):
        validation_run.validate_table(model, table, ctx, [point], 6, calibrate=6, group=4, instances=3, resume=True)
    done = len(calls)
    validation_run.validate_table(model, table, ctx, [point], 6, calibrate=6, group=4, instances=2, resume=True)
    assert len(calls) == done, "every row was finished: nothing is measured again"
