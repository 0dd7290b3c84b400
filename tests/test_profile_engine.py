"""Engine-level tables: llama.cpp timed on whole models at two depths, composed per width."""

import pytest
import torch
from conftest import needs_llamacpp, tiny_model

from amoebasearch.profile import timing
from amoebasearch.profile.blocks import Point, stack_model
from amoebasearch.profile.engine import engine_depths, gguf_program
from amoebasearch.profile.predict import PointModel, predict_latency
from amoebasearch.profile.table import load_table
from amoebasearch.shape import ModelDims, Shape


def test_a_tail_row_is_added_once_per_subnet():
    model = PointModel(fixed_us=100.0, block_us={(2, 64): 10.0}, tail_us={(2, 64): -4.0})
    assert model.raw(Shape((0, 1, 2), 2, 64)) == 100.0 - 4.0 + 3 * 10.0
    assert PointModel(fixed_us=100.0, block_us={(2, 64): 10.0}).raw(Shape((0,), 2, 64)) == 110.0


def test_engine_depths_span_an_eighth_to_all_layers():
    dims = ModelDims(num_layers=30, hidden=576, num_heads=9, num_kv_heads=3, head_dim=64, ffn=1536)
    assert engine_depths(dims) == (3, 30)
    assert engine_depths(ModelDims(4, 64, 4, 2, 16, 128)) == (1, 4)


@needs_llamacpp
def test_llamacpp_table_composes_whole_models_per_width(tmp_path, tiny_checkpoint, capsys):
    """`profile --runtime llamacpp`: per point an overhead row, per width a decoder slope and a tail;
    the table prices the whole tiny model near what llama.cpp takes to run it, and says its engine,
    quantisation and threads in its name and sidecar."""
    from amoebasearch.cli import main
    from amoebasearch.models import load

    out = tmp_path / "profiles"
    args = ["profile", "--model", str(tiny_checkpoint), "--runtime", "llamacpp", "--quant", "q8_0"]
    assert main([*args, "--threads", "1", "--context", "32", "--out", str(out)]) == 0
    path = next(out.glob("*.csv"))
    assert path.name.endswith("-t1-llamacpp-q8_0.csv")
    table = load_table(path)
    runtime = table.meta["runtime"]
    assert runtime["name"] == "llamacpp" and runtime["quant"] == "q8_0" and table.threads == 1
    rows = table.rows
    for phase in ("prefill", "decode"):
        mine = rows[rows.phase == phase]
        assert (mine.block == "overhead").sum() == 1
        assert (mine.block == "decoder").sum() == (mine.block == "tail").sum() == 4  # 2 heads x 2 FFN widths
        assert (mine[mine.block == "decoder"].median_us > 0).all()
    loaded = load(str(tiny_checkpoint))
    dims = loaded.dims
    whole = stack_model(loaded.model, dims.num_heads, dims.ffn, depth=dims.num_layers)
    gguf = tmp_path / "whole.gguf"
    from amoebasearch.export_gguf import write_gguf

    write_gguf(whole, None, gguf, "q8_0")
    point = Point("decode", 1, 32)
    with timing.measurement_threads("cpu", 1):
        measured = timing.measure(*gguf_program(gguf, point, torch.Generator(), 1), repeats=41)
    predicted = predict_latency(Shape(tuple(range(dims.num_layers)), dims.num_heads, dims.ffn), table, "decode", 1, 32)
    assert 0.5 < predicted / measured.median_us < 2.0


@needs_llamacpp
def test_llamacpp_runs_on_the_cpu_only_and_takes_quant_not_dtype(tiny_checkpoint, tmp_path, capsys):
    from amoebasearch.cli import main

    base = ["profile", "--model", str(tiny_checkpoint), "--out", str(tmp_path)]
    assert main([*base, "--runtime", "llamacpp", "--dtype", "float16", "--quant", "q8_0"]) == 2
    assert "give one" in capsys.readouterr().err
    assert main([*base, "--runtime", "eager", "--quant", "q8_0"]) == 2
    assert "--quant sets the weight format of --runtime llamacpp" in capsys.readouterr().err


def test_unplugged_engines_name_what_to_install():
    from amoebasearch.errors import UsageError
    from amoebasearch.profile.runtimes import PluginRuntime, get_runtime

    with pytest.raises(UsageError, match="pip install vllm"):
        get_runtime("vllm", "cpu", torch.float32)
    installed = PluginRuntime("torch-engine", "torch", "pip install torch")  # a module that is installed here
    with pytest.raises(UsageError, match="EngineRuntime"):
        installed.check("cpu", torch.float32)


def test_groups_timed_while_the_host_drifted_are_scaled_by_the_reference_width(monkeypatch):
    """Every group also times the widest model at both depths; a group timed while the host ran
    30 % slow gets the rows it would have had at the first group's speed, so host drift between
    groups never turns into a trend across widths."""
    from amoebasearch.profile import engine, profiler
    from amoebasearch.profile.blocks import width_options
    from amoebasearch.profile.programs import Context
    from amoebasearch.profile.table import LatencyTable

    model = tiny_model("llama", num_hidden_layers=8)
    dims = ModelDims.from_config(model.config)

    def true_us(config) -> float:  # a linear engine: 50 us fixed, per layer heads x 3 + ffn / 8
        return 50.0 + config.num_hidden_layers * (config.num_attention_heads * 3 + config.intermediate_size / 8)

    class ScriptedEngine(engine.EngineRuntime):
        name = "scripted"
        min_round_seconds = 0.0

        def engine_program(self, stack, point, generator):
            return (None, lambda config=stack.config: config, None)

    slowdown = iter([1.0, 1.3, 0.8])  # one factor per group, as the host drifts

    def scripted_timing(programs, **_):
        factor = next(slowdown)
        times = [true_us(make_input()) * factor for _, make_input, _ in programs]
        return [timing.Stats(t, t, t, 21) for t in times]

    monkeypatch.setattr(engine.timing, "measure_interleaved", scripted_timing)
    widths = width_options(dims, 32)
    assert len(widths) == 8  # two head counts x four FFN widths: three groups of 3
    ctx = Context(ScriptedEngine(), "cpu", torch.float32)
    point = Point("decode", 1, 16)
    table = LatencyTable.empty({"settings": {}})
    settings = {"warmup": 1, "repeats": 21, "instances": 1}
    profiler.profile_engine(model, table, ctx, [point], widths, settings, 3, None)
    priced = PointModel(
        fixed_us=float(table.rows[table.rows.block == "overhead"].median_us.iloc[0]),
        block_us={(r.heads, r.ffn): r.median_us for r in table.rows[table.rows.block == "decoder"].itertuples()},
        tail_us={(r.heads, r.ffn): r.median_us for r in table.rows[table.rows.block == "tail"].itertuples()},
    )
    for heads, ffn in widths:
        config = stack_model(model, heads, ffn, depth=5).config
        assert priced.raw(Shape(tuple(range(5)), heads, ffn)) == pytest.approx(true_us(config))
    assert set(table.meta["engine_reference"]) == {"decode/1/16"}
