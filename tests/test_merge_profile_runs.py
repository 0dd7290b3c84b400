"""amoebasearch.profile.merge: a grid point is taken whole from one run, never mixed."""

from pathlib import Path

import pandas as pd
import pytest

from amoebasearch.errors import UsageError
from amoebasearch.profile.merge import merge_runs
from amoebasearch.profile.table import LatencyTable

DIMS = {"num_layers": 2, "num_heads": 3, "num_kv_heads": 1, "ffn": 64, "hidden": 192, "head_dim": 64}


def run(
    name: str, points: list[tuple[str, int, int]], us: float, uuid: str = "GPU-1"
) -> tuple[LatencyTable, pd.DataFrame]:
    """A one-block table whose every row costs ``us`` at ``points``, and its validation rows."""
    rows, checks = [], []
    for phase, batch, context in points:
        for block in ("embedding", "decoder", "head", "overhead"):
            width = (3, 64) if block == "decoder" else (0, 0)
            rows.append(
                dict(block=block, heads=width[0], ffn=width[1], phase=phase, batch=batch, context=context)
                | dict(median_us=us, p10_us=us, p90_us=us, repeats=21, noisy=False, source="measured")
            )
        for subnet, split in enumerate(("calibration", "heldout", "heldout")):
            checks.append(
                dict(subnet=subnet, split=split, depth=1, heads=3, ffn=64, phase=phase, batch=batch)
                | dict(context=context, composed_us=4 * us, predicted_us=4 * us, measured_us=4 * us * 1.02)
                | dict(error_pct=-100 * 0.02 / 1.02, instances=2, instance_spread=1.0, attempts=1)
            )
    meta = {
        "format": 1,
        "source": "measured",
        "model": {"name": "m", "signature": "s", "dims": DIMS},
        "device": {"kind": "cuda", "name": "test gpu", "uuid": uuid},
        "runtime": {"name": "cudagraph"},
        "dtype": "bfloat16",
        "settings": {"grid": [], "profile_seconds": 10.0},
        "calibration": {f"{p}/{b}/{c}": {"scale": us, "offset_us": 0.0} for p, b, c in points},
        "validation": {"heldout": 2, "calibration": 1, "seed": 0, "summary": []},
    }
    return LatencyTable(pd.DataFrame(rows), meta, Path(name) / "t.csv"), pd.DataFrame(checks)


def test_each_point_comes_whole_from_the_first_run_that_has_it():
    primary = run("a", [("decode", 1, 128)], us=10.0)
    secondary = run("b", [("decode", 1, 128), ("decode", 8, 2048)], us=20.0)
    merged, validation = merge_runs(*primary, *secondary)
    by_point = merged.rows.groupby(["phase", "batch", "context"])["median_us"].unique()
    assert list(by_point[("decode", 1, 128)]) == [10.0] and list(by_point[("decode", 8, 2048)]) == [20.0]
    checks = validation.groupby("batch")["composed_us"].unique()
    assert list(checks[1]) == [40.0] and list(checks[8]) == [80.0]
    assert merged.meta["calibration"] == {"decode/1/128": {"scale": 10.0, "offset_us": 0.0}} | {
        "decode/8/2048": {"scale": 20.0, "offset_us": 0.0}
    }
    assert [entry["table"] for entry in merged.meta["merged_from"]] == [str(Path("a/t.csv")), str(Path("b/t.csv"))]
    assert [entry["points"] for entry in merged.meta["merged_from"]] == [["decode/1/128"], ["decode/8/2048"]]
    assert {(r["batch"], r["n"]) for r in merged.meta["validation"]["summary"]} == {(1, 2), (8, 2)}
    assert merged.meta["settings"]["grid"] == [
        {"phase": "decode", "batch": 1, "context": 128},
        {"phase": "decode", "batch": 8, "context": 2048},
    ]
    assert merged.meta["settings"]["profile_seconds"] == 20.0


def test_runs_of_two_devices_are_refused():
    primary = run("a", [("decode", 1, 128)], us=10.0)
    secondary = run("b", [("decode", 8, 128)], us=20.0, uuid="GPU-2")
    with pytest.raises(UsageError, match="different devices"):
        merge_runs(*primary, *secondary)


def test_a_point_to_take_must_be_in_the_secondary_run():
    primary = run("a", [("decode", 1, 128)], us=10.0)
    secondary = run("b", [("decode", 8, 128)], us=20.0)
    with pytest.raises(UsageError, match="no such point"):
        merge_runs(*primary, *secondary, take={("prefill", 1, 128)})


def test_take_replaces_a_point_with_a_revalidation_of_the_same_rows():
    primary = run("a", [("decode", 1, 128), ("prefill", 1, 128)], us=10.0)
    table, check = run("b", [("decode", 1, 128), ("prefill", 1, 128)], us=10.0)
    check["measured_us"] = 41.0  # the re-validation measured the same subnets again
    table.meta["calibration"]["prefill/1/128"] = {"scale": 0.5, "offset_us": 1.0}
    merged, validation = merge_runs(*primary, table, check, take={("prefill", 1, 128)})
    measured = validation.groupby("phase")["measured_us"].unique()
    assert list(measured["decode"]) == [40.8] and list(measured["prefill"]) == [41.0]
    assert merged.meta["calibration"]["prefill/1/128"] == {"scale": 0.5, "offset_us": 1.0}
    assert merged.meta["calibration"]["decode/1/128"] == {"scale": 10.0, "offset_us": 0.0}
    assert len(merged.rows) == 8  # each point's block rows once
    assert merged.meta["merged_from"][1]["revalidated"] == ["prefill/1/128"]
    assert merged.meta["settings"]["profile_seconds"] == 10.0  # the copied rows were profiled once


def test_merged_from_records_how_each_run_measured_its_points():
    primary = run("a", [("decode", 1, 128)], us=10.0)
    table, check = run("b", [("decode", 8, 128)], us=20.0)
    table.meta["settings"]["gc"] = "cyclic garbage collector off while timing"
    table.meta["validation_partial"] = "36 of the 66 subnets timed"
    merged, _ = merge_runs(*primary, table, check)
    assert [entry["settings"] for entry in merged.meta["merged_from"]] == [
        {"profile_seconds": 10.0},
        {"profile_seconds": 10.0, "gc": "cyclic garbage collector off while timing"},
    ]
    assert "gc" not in merged.meta["settings"]  # the sidecar's own settings stay the primary's
    assert merged.meta["secondary_validation_partial"] == "36 of the 66 subnets timed"
