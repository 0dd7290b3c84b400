"""Estimated tables: spec sheets, roofline monotonicity, efficiency fit recovering known factors."""

import pandas as pd
import pytest

from amoebasearch.errors import UsageError
from amoebasearch.profile import predict_latency
from amoebasearch.profile.blocks import Point
from amoebasearch.profile.estimate import (
    DEFAULT_EFFICIENCY,
    SPECS,
    Efficiency,
    block_cost,
    estimate_table,
    fit_efficiency,
    get_spec,
    roofline_us,
)
from amoebasearch.profile.table import FORMAT, LatencyTable
from amoebasearch.shape import ModelDims, ShapeSpace

DIMS = ModelDims(num_layers=30, num_heads=9, num_kv_heads=3, ffn=1536, hidden=576, head_dim=64)
POINTS = [Point("prefill", 1, 128), Point("decode", 1, 128), Point("decode", 8, 2048)]
EFF = Efficiency(0.6, 0.7, 3.0)


def estimated(device="a5000"):
    meta = {"name": "m", "signature": "s", "dims": {}}
    return estimate_table(get_spec(device), DIMS, 49152, meta, POINTS, "bfloat16", EFF, {}, ffn_step=64)


@pytest.mark.parametrize("device", ["a5000", "a100", "h100", "h200", "l4", "rtx4090", "orin"])
def test_every_required_device_has_a_sourced_spec(device):
    spec = get_spec(device)
    assert spec.flops["bfloat16"] > spec.flops["float32"] > 0 and spec.bandwidth > 0 and spec.source


def test_unknown_device_is_a_usage_error():
    with pytest.raises(UsageError, match="no spec sheet"):
        get_spec("tpu-v9")


@pytest.mark.parametrize("device", ["a5000", "orin"])
def test_fewer_layers_or_narrower_is_never_slower(device):
    table = estimated(device)
    assert (table.rows["source"] == "estimated").all()
    space = ShapeSpace(DIMS)
    for point in POINTS:
        for depth in (1, 2, 15, 30):
            previous_heads = None
            for heads in space.head_options:
                costs = [
                    predict_latency(space.shape(depth, heads, f), table, point.phase, point.batch, point.context)
                    for f in space.ffn_options
                ]
                assert costs == sorted(costs)
                if previous_heads is not None:
                    assert costs[0] >= previous_heads
                previous_heads = costs[0]
        shallow = predict_latency(space.shape(10, 9, 1536), table, point.phase, point.batch, point.context)
        deep = predict_latency(space.shape(11, 9, 1536), table, point.phase, point.batch, point.context)
        assert deep > shallow


def test_faster_memory_means_faster_decode():
    h100, h200 = estimated("h100"), estimated("h200")
    shape = ShapeSpace(DIMS).largest()
    assert predict_latency(shape, h200, "decode", 8, 2048) <= predict_latency(shape, h100, "decode", 8, 2048)


def test_decode_is_memory_bound_and_prefill_compute_bound():
    spec = SPECS["a100"]
    decode = block_cost(DIMS, 9, 1536, Point("decode", 1, 128), 2)
    prefill = block_cost(DIMS, 9, 1536, Point("prefill", 8, 2048), 2)
    assert decode.flops / decode.bytes < spec.flops["bfloat16"] / spec.bandwidth < prefill.flops / prefill.bytes


def test_fit_recovers_known_efficiencies():
    spec = SPECS["cpu-1t"]
    truth = Efficiency(0.4, 1.5, 8.0)
    rows = []
    for point in [Point("prefill", 1, 128), Point("decode", 1, 128)]:
        for heads in (3, 6, 9):
            for ffn in range(64, 1537, 128):
                us = roofline_us(block_cost(DIMS, heads, ffn, point, 4), spec, "float32", truth)
                rows.append(
                    dict(block="decoder", heads=heads, ffn=ffn, phase=point.phase, batch=1, context=128, median_us=us)
                )
    meta = {"format": FORMAT, "dtype": "float32", "model": {"signature": "s", "dims": DIMS.__dict__}}
    fitted = fit_efficiency([LatencyTable(pd.DataFrame(rows), meta)], [spec])
    assert fitted.compute == pytest.approx(truth.compute, rel=0.05)
    assert fitted.memory == pytest.approx(truth.memory, rel=0.05)


def roofline_gpu_table(truth: Efficiency, points: list[Point]) -> LatencyTable:
    """Decoder rows priced by the roofline with ``truth`` on the H100 spec (bf16)."""
    spec = SPECS["h100"]
    rows = [
        dict(block="decoder", heads=h, ffn=f, phase=p.phase, batch=p.batch, context=p.context, median_us=us)
        for p in points
        for h in (3, 6, 9)
        for f in range(64, 1537, 128)
        for us in [roofline_us(block_cost(DIMS, h, f, p, 2), spec, "bfloat16", truth)]
    ]
    meta = {"format": FORMAT, "dtype": "bfloat16", "model": {"signature": "s", "dims": DIMS.__dict__}}
    return LatencyTable(pd.DataFrame(rows), meta)


def test_prior_keeps_efficiencies_that_launch_bound_rows_cannot_identify():
    """Batch 1, context 128 on an H100 is all kernel launches: the fit must find the launch cost
    and leave compute/memory efficiency at the prior, not wherever the log error happens to dip."""
    prior = DEFAULT_EFFICIENCY["gpu"]
    truth = Efficiency(0.3, 0.6, 18.0)
    table = roofline_gpu_table(truth, [Point("prefill", 1, 128), Point("decode", 1, 128)])
    fitted = fit_efficiency([table], [SPECS["h100"]], prior)
    assert fitted.kernel_us == pytest.approx(truth.kernel_us, rel=0.05)
    assert fitted.compute == pytest.approx(prior.compute, rel=0.2)
    assert fitted.memory == pytest.approx(prior.memory, rel=0.2)


def test_prior_yields_to_rows_that_do_identify_the_efficiencies():
    truth = Efficiency(0.2, 0.4, 18.0)
    big = [Point("prefill", 8, 2048), Point("prefill", 32, 2048), Point("decode", 64, 2048)]
    fitted = fit_efficiency([roofline_gpu_table(truth, big)], [SPECS["h100"]], DEFAULT_EFFICIENCY["gpu"])
    assert fitted.compute == pytest.approx(truth.compute, rel=0.25)
    assert fitted.memory == pytest.approx(truth.memory, rel=0.25)


def test_estimated_tables_carry_a_warning_and_measured_ones_do_not():
    table = estimated("l4")
    assert "ESTIMATED" in table.warning()
    table.meta["source"] = "measured"
    assert table.warning() is None


def test_estimate_verb_fits_on_a_measured_cpu_table(tmp_path, tiny_checkpoint):
    from amoebasearch.cli import main
    from amoebasearch.profile import load_table

    out = tmp_path / "profiles"
    base = ["profile", "--model", str(tiny_checkpoint), "--out", str(out), "--context", "8"]
    assert main(base) == 0
    assert main([*base, "--estimate", "cpu-1t"]) == 0
    assert main([*base, "--estimate", "a5000"]) == 0
    cpu = load_table(next(out.glob("*cpu-amd-epyc-1t-roofline-float32.csv")))
    gpu = load_table(next(out.glob("*nvidia-rtx-a5000-roofline-bfloat16.csv")))
    assert cpu.meta["efficiency_source"] == "fitted" and gpu.meta["efficiency_source"] == "default"
    assert (gpu.rows["source"] == "estimated").all() and gpu.estimated
