"""Tables: round trip, model-signature refusal, predictor composition, resume after a kill."""

import json

import pandas as pd
import pytest
from conftest import tiny_model

from amoebasearch.errors import UsageError
from amoebasearch.models import model_signature
from amoebasearch.profile import predict_latency
from amoebasearch.profile.blocks import Point
from amoebasearch.profile.programs import Context
from amoebasearch.profile.runtimes import get_runtime
from amoebasearch.profile.table import FORMAT, LatencyTable, load_table
from amoebasearch.shape import Shape

HAND_DIMS = {"num_layers": 4, "num_heads": 4, "num_kv_heads": 2, "ffn": 128, "hidden": 256, "head_dim": 64}


def hand_table(signature="abc", calibration=None):
    def row(block, heads, ffn, us, phase="decode"):
        return dict(
            block=block,
            heads=heads,
            ffn=ffn,
            phase=phase,
            batch=1,
            context=128,
            median_us=us,
            p10_us=us * 0.99,
            p90_us=us * 1.01,
            repeats=21,
            noisy=False,
            source="measured",
        )

    rows = [
        row("embedding", 0, 0, 10.0),
        row("head", 0, 0, 100.0),
        row("overhead", 0, 0, 5.0),
        row("decoder", 2, 64, 20.0),
        row("decoder", 4, 64, 30.0),
        row("decoder", 4, 128, 40.0),
    ]
    meta = {
        "format": FORMAT,
        "source": "measured",
        "model": {"name": "tiny", "signature": signature, "dims": HAND_DIMS},
        "device": {"kind": "cpu", "name": "test cpu"},
        "runtime": {"name": "eager"},
        "settings": {"ffn_step": 64},
    }
    if calibration:
        meta["calibration"] = calibration
    return LatencyTable(pd.DataFrame(rows), meta)


def test_prediction_composes_rows_by_hand():
    table = hand_table()
    shape = Shape((0, 2, 3), heads=4, ffn=64)
    # embedding 10 + 3 blocks x 30 + head 100 + overhead 5
    assert predict_latency(shape, table, "decode", 1, 128) == pytest.approx(205.0)
    assert predict_latency(Shape((1,), 2, 64), table, "decode", 1, 128) == pytest.approx(135.0)


def test_calibration_is_applied():
    table = hand_table(calibration={"decode/1/128": {"scale": 2.0, "offset_us": -10.0}})
    assert predict_latency(Shape((0,), 4, 128), table, "decode", 1, 128) == pytest.approx(2 * 155.0 - 10)


def test_missing_point_or_width_is_a_usage_error():
    table = hand_table()
    with pytest.raises(UsageError, match="no complete rows for prefill"):
        predict_latency(Shape((0,), 4, 64), table, "prefill", 1, 128)
    with pytest.raises(UsageError, match="no decoder row for heads=2 ffn=128"):
        predict_latency(Shape((0,), 2, 128), table, "decode", 1, 128)


def test_prediction_is_fast():
    import time

    table = hand_table()
    shape = Shape((0, 1), 4, 64)
    predict_latency(shape, table)
    begin = time.perf_counter()
    for _ in range(10000):
        predict_latency(shape, table)
    assert (time.perf_counter() - begin) / 10000 < 50e-6


def test_round_trip_and_signature_refusal(tmp_path):
    table = hand_table()
    path = table.save(tmp_path / "t.csv")
    again = load_table(path, signature="abc")
    pd.testing.assert_frame_equal(again.rows, table.rows, check_dtype=False)
    assert again.meta == table.meta
    with pytest.raises(UsageError, match="profiled for tiny .*signature abc.*not other"):
        load_table(path, signature="zzz", model_name="other")


def test_missing_table_or_sidecar_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_table(tmp_path / "nope.csv")
    (tmp_path / "lonely.csv").write_text("block\n")
    with pytest.raises(UsageError, match="no sidecar"):
        load_table(tmp_path / "lonely.csv")


def _profile(model, path, points, interrupt_after=None, interleave=1, repeats=20):
    from amoebasearch.profile import profiler

    runtime = get_runtime("eager", "cpu", model.dtype)
    settings = {"repeats": 20, "warmup": 1, "ffn_step": 64, "seed": 0}
    table = profiler.open_table(path, "tiny", model.config, runtime, "cpu", "float32", points, settings, resume=True)
    calls = {"n": 0}

    def progress(step):
        calls["n"] += 1
        if interrupt_after is not None and calls["n"] >= interrupt_after:
            raise KeyboardInterrupt

    ctx = Context(runtime, "cpu", model.dtype)
    profiler.profile_model(
        model, table, ctx, points, ffn_step=64, warmup=1, repeats=repeats, interleave=interleave, progress=progress
    )
    return table


def test_resume_after_a_kill_keeps_finished_rows(tmp_path, monkeypatch):
    from amoebasearch.profile import profiler

    model = tiny_model("llama")
    points = [Point("decode", 1, 8)]
    with pytest.raises(KeyboardInterrupt):
        _profile(model, tmp_path, points, interrupt_after=3)
    csv = next(tmp_path.glob("*.csv"))
    partial = load_table(csv, model_signature(model.config))
    finished = partial.done()
    assert 0 < len(finished) < 3 + 4  # fixed rows + some of the 4 widths (2 heads x 2 ffn)

    measured = []
    original = profiler.decoder_rows

    def spy(model, ctx, point, widths, settings, **kwargs):
        measured.extend(widths)
        return original(model, ctx, point, widths, settings, **kwargs)

    monkeypatch.setattr(profiler, "decoder_rows", spy)
    table = _profile(model, tmp_path, points)
    assert len(table.rows) == 3 + 4
    assert not {("decoder", h, f, "decode", 1, 8) for h, f in measured} & finished
    reloaded = load_table(csv)
    assert len(reloaded.rows) == 7 and reloaded.meta["layer_index_check"]["layers"] == [0, 2, 3]


class DyingClock:
    """The CPU clock, until the call after ``after``: then a Ctrl-C, in the middle of a round."""

    def __init__(self, after):
        from amoebasearch.profile import timing

        self.clock, self.after, self.calls = timing.Clock(), after, 0

    def start(self):
        return self.clock.start()

    def stop(self, token):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return self.clock.stop(token)


def killed_inside_the_widths_group(monkeypatch, rounds_before_kill):
    """Make the first decoder-width group die ``rounds_before_kill`` rounds and two calls in; count
    the rounds every width group completes (`RoundLog` hears them through ``on_round``)."""
    from amoebasearch.profile import profiler

    original = profiler.timing.measure_interleaved
    state = {"kill": True, "rounds": 0}

    def measured(programs, **kwargs):
        if kwargs.get("on_round") is not None:  # only the width group keeps its rounds
            record = kwargs["on_round"]

            def counted(samples):
                state["rounds"] += 1
                record(samples)

            kwargs["on_round"] = counted
            if state["kill"]:
                state["kill"] = False
                kwargs["clock"] = DyingClock(after=len(programs) * rounds_before_kill + 2)
        return original(programs, **kwargs)

    monkeypatch.setattr(profiler.timing, "measure_interleaved", measured)
    return state


def test_a_kill_inside_a_round_keeps_the_groups_complete_rounds(tmp_path, monkeypatch):
    model = tiny_model("llama")
    points = [Point("decode", 1, 8)]
    state = killed_inside_the_widths_group(monkeypatch, rounds_before_kill=7)
    with pytest.raises(KeyboardInterrupt):
        _profile(model, tmp_path, points, interleave=None)  # all 4 widths in one group
    log = next(tmp_path.glob("*.rounds.json"))  # written on the interrupt, not by the 10-s timer
    kept = json.loads(log.read_text())["samples"]
    assert len(kept) == 4 and {len(s) for s in kept} == {7}  # the 8th round, cut short, is left out

    state["rounds"] = 0
    table = _profile(model, tmp_path, points, interleave=None)
    assert state["rounds"] == 20 - 7  # only the missing rounds were timed
    decoder = table.rows[table.rows.block == "decoder"]
    assert len(decoder) == 4 and (decoder.repeats == 20).all()
    assert not log.exists()  # the group's rows are in the table; its log is gone


def test_rounds_timed_with_other_settings_are_not_resumed(tmp_path, monkeypatch):
    model = tiny_model("llama")
    points = [Point("decode", 1, 8)]
    state = killed_inside_the_widths_group(monkeypatch, rounds_before_kill=7)
    with pytest.raises(KeyboardInterrupt):
        _profile(model, tmp_path, points, interleave=None)
    state["rounds"] = 0
    _profile(model, tmp_path, points, interleave=None, repeats=21)
    assert state["rounds"] == 21  # another --repeats: every round timed afresh


@pytest.mark.parametrize(
    "content",
    [
        b"[1, 2]",
        b"\xff\xfe not text",
        b'{"key": KEY}',
        b'{"key": KEY, "samples": [[1.0], [2.0, 3.0]]}',
        b'{"key": KEY, "samples": [[1.0], [-2.0]]}',
        b'{"key": KEY, "samples": [["a"], [2.0]]}',
        b'{"key": KEY, "samples": [[1.0], [2.0], [3.0]]}',
        b'{"key": KEY, "samples": [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]}',
    ],
)
def test_a_broken_rounds_file_is_ignored_not_fatal(tmp_path, content):
    from amoebasearch.profile.rounds import RoundLog

    log = RoundLog(tmp_path / "t.rounds.json", {"point": 1}, programs=2, repeats=2)
    log.path.write_bytes(content.replace(b"KEY", json.dumps(log.key).encode()))
    assert log.load() is None
    log.path.write_text(json.dumps({"key": log.key, "samples": [[1.0, 1.5], [2.0, 2.5]]}))
    assert log.load() == [[1.0, 1.5], [2.0, 2.5]]


def test_a_rounds_file_that_cannot_be_written_warns_and_timing_goes_on(tmp_path, capsys):
    from amoebasearch.profile.rounds import RoundLog

    (tmp_path / "file").write_text("")
    log = RoundLog(tmp_path / "file" / "t.rounds.json", {}, programs=1, repeats=20, every_s=0)
    log.record([[1.0]])
    log.record([[1.0, 2.0]])
    assert capsys.readouterr().err.count("cannot keep finished rounds") == 1


def test_a_new_table_discards_an_old_runs_rounds(tmp_path):
    from amoebasearch.profile import profiler
    from amoebasearch.profile.rounds import RoundLog, rounds_path

    model = tiny_model("llama")
    runtime = get_runtime("eager", "cpu", model.dtype)
    points = [Point("decode", 1, 8)]
    table = profiler.open_table(tmp_path, "tiny", model.config, runtime, "cpu", "float32", points, {}, resume=False)
    log = RoundLog(rounds_path(table.path), {"point": "old"}, programs=2, repeats=20, every_s=0)
    log.record([[1.0], [2.0]])
    assert log.path.exists() and log.load() == [[1.0], [2.0]]
    other = RoundLog(log.path, {"point": "other"}, programs=2, repeats=20)
    assert other.load() is None  # another group's rounds are not resumed
    profiler.open_table(tmp_path, "tiny", model.config, runtime, "cpu", "float32", points, {}, resume=False)
    assert not log.path.exists()


def test_widths_are_timed_in_order_of_cost_with_heads_and_ffn_interleaved():
    from amoebasearch.profile.profiler import by_size
    from amoebasearch.shape import ModelDims

    dims = ModelDims(num_layers=30, num_heads=9, num_kv_heads=3, ffn=1536, hidden=576, head_dim=64)
    widths = [(h, f) for h in (3, 6, 9) for f in (64, 768, 1536)]
    ordered = by_size(dims, widths, Point("prefill", 1, 128))
    assert ordered[0] == (3, 64) and ordered[-1] == (9, 1536)
    assert ordered.index((9, 64)) < ordered.index((3, 1536))  # a wide FFN outweighs more heads
    assert sorted(ordered) == sorted(widths)


def test_resume_refuses_a_table_measured_with_another_allocation_policy(tmp_path):
    from amoebasearch.profile import profiler

    model = tiny_model("llama")
    runtime = get_runtime("eager", "cpu", model.dtype)
    points = [Point("decode", 1, 8)]
    small = {"malloc": "glibc mmap/trim thresholds fixed at 131072 bytes"}
    huge = {"malloc": small["malloc"] + "; huge pages (glibc.malloc.hugetlb=1)"}
    table = profiler.open_table(tmp_path, "tiny", model.config, runtime, "cpu", "float32", points, huge, resume=False)
    with pytest.raises(UsageError, match="allocation policy .*same GLIBC_TUNABLES"):
        profiler.open_table(tmp_path, "tiny", model.config, runtime, "cpu", "float32", points, small, resume=True)
    again = profiler.open_table(tmp_path, "tiny", model.config, runtime, "cpu", "float32", points, huge, resume=True)
    assert again.path == table.path


def test_resume_refuses_other_measuring_settings_and_a_new_table_drops_the_old_validation(tmp_path):
    from amoebasearch.profile import profiler
    from amoebasearch.profile.table import validation_path

    model = tiny_model("llama")
    runtime = get_runtime("eager", "cpu", model.dtype)
    points = [Point("decode", 1, 8)]
    args = (tmp_path, "tiny", model.config, runtime, "cpu", "float32", points)
    table = profiler.open_table(*args, {"instances": 1, "ffn_step": 64}, resume=False)
    with pytest.raises(UsageError, match="measured with --instances 1, this run has 3"):
        profiler.open_table(*args, {"instances": 3, "ffn_step": 64}, resume=True)
    validation_path(table.path).write_text("subnet\n0\n")
    profiler.open_table(*args, {"instances": 3, "ffn_step": 64}, resume=False)
    assert not validation_path(table.path).exists()
