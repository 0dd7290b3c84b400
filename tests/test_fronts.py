"""Pareto fronts from a qualities CSV priced on several latency tables (hand-checkable fake tables)."""

import pandas as pd
import pytest
from table_helpers import BLOCK_US, FIXED_US, fake_table

from amoebasearch import fronts
from amoebasearch.errors import UsageError
from amoebasearch.models import model_signature
from amoebasearch.profile.table import load_table
from amoebasearch.shape import ModelDims, ShapeSpace


@pytest.fixture
def setup(tmp_path, llama_model):
    config = llama_model.config
    dims = ModelDims.from_config(config)
    space = ShapeSpace(dims)
    # Quality improves with depth and width; a fake but monotone "perplexity".
    records = [(s, 100.0 / (s.depth * (s.heads / dims.num_heads + s.ffn / dims.ffn))) for s in space]
    frame = fronts.qualities_frame(records, "dp+importance", "ppl", "tiny", model_signature(config))
    baseline = [(space.shape(d, dims.num_heads, dims.ffn), 150.0 / d) for d in space.depths]
    frame = pd.concat([frame, fronts.qualities_frame(baseline, "bi", "ppl", "tiny", model_signature(config))])
    path = fronts.write_qualities(frame, tmp_path / "qualities.csv")
    profiles = tmp_path / "profiles"
    measured = fake_table(config, "tiny", profiles / "tiny-cpu-eager-float32.csv", phases=("decode", "prefill"))
    estimated = fake_table(
        config, "tiny", tmp_path / "profiles" / "tiny-gpu-roofline-bfloat16.csv", source="estimated", scale=0.1
    )
    return config, dims, space, path, measured, estimated


def test_qualities_round_trip_and_pricing_by_hand(setup):
    config, dims, space, path, measured, _ = setup
    frame = fronts.read_qualities(path)
    assert len(frame) == len(space) + len(space.depths) and fronts.main_selection(frame) == "dp+importance"
    shape = fronts.shape_of(frame.iloc[0])
    assert shape == next(iter(space))
    (priced,) = fronts.candidates(frame.iloc[:1], load_table(measured))
    block = BLOCK_US * (0.4 * shape.heads / dims.num_heads + 0.6 * shape.ffn / dims.ffn)
    assert priced.latency_ms == pytest.approx((sum(FIXED_US.values()) + shape.depth * block) / 1000)


def test_one_front_per_table_and_estimated_curves_marked(setup, tmp_path):
    *_, path, measured, estimated = setup
    frame = fronts.read_qualities(path)
    tables = fronts.tables_for(frame, tmp_path / "profiles", "decode", 1, 128)
    assert [t.estimated for t in tables] == [False, True]  # measured first
    curves = fronts.device_fronts(frame, tables)
    assert [c.estimated for c in curves] == [False, True]
    for curve in curves:  # a front: latency up, perplexity strictly down
        assert curve.latency_ms == sorted(curve.latency_ms)
        assert all(a > b for a, b in zip(curve.quality, curve.quality[1:], strict=False))
    assert max(curves[1].latency_ms) == pytest.approx(0.1 * max(curves[0].latency_ms))
    # the prefill point exists only in the measured table
    assert len(fronts.tables_for(frame, tmp_path / "profiles", "prefill", 1, 128)) == 1


def test_selection_fronts_split_depth_width_and_baselines(setup):
    _, dims, space, path, measured, _ = setup
    frame = fronts.read_qualities(path)
    curves = {c.label: c for c in fronts.selection_fronts(frame, load_table(measured))}
    assert set(curves) == {
        "dp+importance: depth × width",
        "dp+importance: depth only",
        "dp+importance: width only",
        "bi: depth only",
    }
    assert all(s.endswith(f"heads={dims.num_heads} ffn={dims.ffn}") for s in curves["bi: depth only"].shapes)
    assert all(s.startswith(f"depth={dims.num_layers} ") for s in curves["dp+importance: width only"].shapes)
    full = curves["dp+importance: depth × width"]
    assert len(full.latency_ms) >= len(curves["dp+importance: depth only"].latency_ms)
    table = fronts.curves_frame(list(curves.values()))
    assert set(table["curve"]) == set(curves) and (table["shape"] != "").all()


def test_bad_qualities_files_are_one_line_errors(setup, tmp_path, llama_model):
    *_, path, _, _ = setup
    with pytest.raises(UsageError, match="does not exist"):
        fronts.read_qualities(tmp_path / "missing.csv")
    frame = pd.read_csv(path)
    frame.drop(columns=["quality"]).to_csv(tmp_path / "no-quality.csv", index=False)
    with pytest.raises(UsageError, match=r"lacks column\(s\) \['quality'\]"):
        fronts.read_qualities(tmp_path / "no-quality.csv")
    frame.assign(signature=["a", "b"] * (len(frame) // 2) + ["a"] * (len(frame) % 2)).to_csv(tmp_path / "mixed.csv")
    with pytest.raises(UsageError, match="mixes several signatures"):
        fronts.read_qualities(tmp_path / "mixed.csv")
    other = fake_table(tiny_config(llama_model, layers=2), "other", tmp_path / "other.csv")
    with pytest.raises(UsageError, match="use tables of that model"):
        fronts.candidates(fronts.read_qualities(path), load_table(other))


def tiny_config(model, layers):
    return model.config.__class__(**{**model.config.to_dict(), "num_hidden_layers": layers})
