"""Estimated tables: spec sheets, roofline monotonicity, efficiency fit recovering known factors."""

import json
from importlib import resources

import pandas as pd
import pytest

from amoebasearch.errors import UsageError
from amoebasearch.profile import predict_latency
from amoebasearch.profile.blocks import Point
from amoebasearch.profile.estimate import estimate_label, estimate_table, modelled_runtime
from amoebasearch.profile.fit import fit_efficiency
from amoebasearch.profile.roofline import (
    DEFAULT_EFFICIENCY,
    Cost,
    Efficiency,
    block_cost,
    overlaps_launches,
    roofline_us,
)
from amoebasearch.profile.specs import SPEC_FILE, SPECS, DeviceSpec, describes, get_spec, load_specs
from amoebasearch.profile.table import FORMAT, LatencyTable, load_table
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


def test_every_number_of_the_spec_file_names_its_source():
    """The spec sheets are data shipped in the package: each number carries the document it is from."""
    sheets = json.loads(resources.files("amoebasearch.profile").joinpath(SPEC_FILE).read_text())["devices"]
    assert list(sheets) == list(SPECS)
    for key, sheet in sheets.items():
        for entry in [*sheet["flops"].values(), sheet["bandwidth"]]:
            assert entry["source"] and entry["value"] > 0
        assert SPECS[key].bandwidth == sheet["bandwidth"]["value"] and SPECS[key].name == sheet["name"]
    unsourced = {**sheet, "bandwidth": {"value": 1e9}}
    with pytest.raises(ValueError, match="bandwidth has no source"):
        load_specs(json.dumps({"devices": {"x": unsourced}}))


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
    spec = SPECS["cpu-t1"]
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
    assert main([*base, "--threads", "1"]) == 0  # the CPU sheet describes one core
    assert main([*base, "--estimate", "cpu-t1"]) == 0
    assert main([*base, "--estimate", "a5000"]) == 0
    cpu = load_table(next(out.glob("*cpu-amd-epyc-t1-roofline-float32.csv")))
    gpu = load_table(next(out.glob("*nvidia-rtx-a5000-roofline-bfloat16.csv")))
    assert cpu.meta["efficiency_source"] == "fitted" and gpu.meta["efficiency_source"] == "default"
    assert (gpu.rows["source"] == "estimated").all() and gpu.estimated


def test_an_estimate_fits_on_measured_tables_kept_outside_its_folder(tmp_path, tiny_checkpoint, capsys):
    """--fit-on: an estimate written to profiles/ learns from a measurement kept elsewhere (a table
    not shipped because its validation missed the bar), and says where it came from."""
    from amoebasearch.cli import main
    from amoebasearch.profile import load_table

    kept, out = tmp_path / "kept", tmp_path / "profiles"
    model = ["profile", "--model", str(tiny_checkpoint), "--context", "8"]
    assert main([*model, "--out", str(kept), "--threads", "1"]) == 0
    out.mkdir()
    assert main([*model, "--out", str(out), "--estimate", "cpu-t1", "--fit-on", str(kept)]) == 0
    estimate = load_table(next(out.glob("*cpu-amd-epyc-t1-roofline-float32.csv")))
    measured = next(kept.glob("*.csv"))
    assert estimate.meta["efficiency_source"] == "fitted" and estimate.meta["calibrated_on"] == [str(measured)]
    assert estimate.meta["overhead_from"] == str(measured)
    capsys.readouterr()
    assert main([*model, "--out", str(out), "--estimate", "cpu-t1"]) == 2  # profiles/ alone holds no measurement
    assert "no measured cpu table" in capsys.readouterr().err
    assert main([*model, "--out", str(out), "--estimate", "cpu-t1", "--fit-on", str(tmp_path / "nope")]) == 2
    assert "--fit-on folder" in capsys.readouterr().err
    assert main([*model, "--out", str(out), "--fit-on", str(kept)]) == 2  # measuring is not fitted on anything
    assert "use it with --estimate" in capsys.readouterr().err


def test_launches_overlap_work_only_where_the_host_launches_asynchronously():
    """Per kernel group: the larger of work and launches on a GPU launched from the host, their sum
    on a CPU or in a replayed graph (hand-computed on a made-up device: 1 TFLOP/s, 1 TB/s)."""
    spec = DeviceSpec("test", "test", {"float32": 1e12}, 1e12)
    cost = Cost(((4e6, 1e6, 1), (0.0, 3e6, 4)))  # group 1: 4 us of compute; group 2: 3 us of reads
    added = roofline_us(cost, spec, "float32", Efficiency(1.0, 1.0, 1.0))
    overlapped = roofline_us(cost, spec, "float32", Efficiency(1.0, 1.0, 1.0, overlap=True))
    assert added == pytest.approx(4 + 3 + 5 * 1.0)
    assert overlapped == pytest.approx(max(4, 1) + max(3, 4))
    assert overlaps_launches("gpu", "eager") and overlaps_launches("gpu", "compile")
    assert not overlaps_launches("gpu", "cudagraph") and not overlaps_launches("cpu", "eager")


def test_graph_work_efficiencies_carry_into_an_eager_fit_that_cannot_see_them():
    """Launch-bound eager rows (19 us per kernel hides the work) fit only the launch cost when the
    work efficiencies come from graph rows of the same device, where the work shows."""
    work_truth = Efficiency(0.3, 0.6, 2.5)
    graph = roofline_gpu_table(work_truth, [Point("prefill", 8, 2048), Point("decode", 8, 2048)])
    work = fit_efficiency([graph], [SPECS["h100"]], DEFAULT_EFFICIENCY["gpu"])
    assert work.compute == pytest.approx(0.3, rel=0.1) and work.memory == pytest.approx(0.6, rel=0.1)
    eager_truth = Efficiency(0.3, 0.6, 19.0, overlap=True)
    eager = roofline_gpu_table(eager_truth, [Point("prefill", 1, 128), Point("decode", 1, 128)])
    fitted = fit_efficiency([eager], [SPECS["h100"]], DEFAULT_EFFICIENCY["gpu"], overlap=True, work=work)
    assert (fitted.compute, fitted.memory) == (work.compute, work.memory)
    assert fitted.kernel_us == pytest.approx(19.0, rel=0.02) and fitted.overlap


def test_an_estimate_of_another_runtime_needs_a_measured_table_of_it(tmp_path, tiny_checkpoint, capsys):
    from amoebasearch.cli import main

    out = tmp_path / "profiles"
    base = ["profile", "--model", str(tiny_checkpoint), "--out", str(out), "--context", "8"]
    assert main(base) == 0  # an eager CPU table: enough for an eager estimate, not for a graph one
    capsys.readouterr()
    assert main([*base, "--estimate", "h100", "--runtime", "cudagraph"]) == 2
    assert "no measured cudagraph table of a gpu" in capsys.readouterr().err


def test_find_prefers_the_estimate_of_its_own_runtime(tmp_path, tiny_checkpoint):
    from table_helpers import fake_table

    from amoebasearch.models import load_config, model_signature
    from amoebasearch.search.tables import choose_table

    config = load_config(str(tiny_checkpoint))
    for runtime in ("eager", "cudagraph"):
        name = f"tiny-nvidia-h100-{estimate_label(runtime)}-bfloat16.csv"
        path = fake_table(config, "tiny", tmp_path / name, "estimated")
        table = load_table(path)
        table.meta["runtime"] = {"name": estimate_label(runtime), "models": runtime}
        table.save(path)
    signature = model_signature(config)
    for runtime in ("eager", "cudagraph", "compile"):  # compile has no estimate of its own: eager's prices it
        chosen = choose_table(tmp_path, signature, {"kind": "cuda"}, "nvidia-h100", runtime, "tiny", "cuda:0")
        assert modelled_runtime(chosen) == ("cudagraph" if runtime == "cudagraph" else "eager")


def test_a_cpu_spec_describes_its_own_chip_and_a_gpu_spec_its_own_card():
    epyc = {"kind": "cpu", "name": "AMD EPYC 9R14 96-Core Processor", "threads_used": 1}
    xeon = {"kind": "cpu", "name": "Intel(R) Xeon(R) Processor", "threads_used": 1}
    assert describes(SPECS["cpu-t1"], epyc) and not describes(SPECS["cpu-t1"], xeon)
    assert describes(SPECS["h200"], {"kind": "cuda", "name": "NVIDIA H200"})
    assert not describes(SPECS["h100"], {"kind": "cuda", "name": "NVIDIA H200"})
