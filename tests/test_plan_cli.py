"""`amoebasearch plan`: checkpoints, --resume, and one-line usage errors."""

from __future__ import annotations

import json

import pytest
from plan_helpers import PROSE, tiny_checkpoint_with_tokenizer

import amoebasearch.plan.select as select_depth_module
from amoebasearch.cli import main


@pytest.fixture
def setup(tmp_path):
    checkpoint = tiny_checkpoint_with_tokenizer(tmp_path / "tiny")
    data = tmp_path / "prose.txt"
    data.write_text(PROSE)
    return checkpoint, data, tmp_path


def plan_args(checkpoint, data, out, *extra):
    return ["plan", "--model", str(checkpoint), "--data", str(data), "--tokens", "48", "--seq-len", "16",
            "--max-remove", "3", "--out", str(out), *extra]  # fmt: skip


def interrupted_after_row(row: int, run: int = 1):
    """`dp_depth` as if Ctrl-C came right after row ``row`` of its ``run``-th call was checkpointed."""
    real_dp = select_depth_module.dp_depth
    calls = []

    def interrupted_dp(evaluator, num_layers, max_remove, table=None, on_row=None, **options):
        calls.append(1)

        def stop_after_the_row(partial):
            on_row(partial)
            if len(calls) == run and partial.rows_done == row:
                raise KeyboardInterrupt

        return real_dp(evaluator, num_layers, max_remove, table, stop_after_the_row, **options)

    return interrupted_dp


@pytest.mark.parametrize(
    "method, run, saved_rows, resumed",
    [("dp", 1, {"all": 3}, "all from row 3"), ("validated", 1, {"fit": 3}, "fit from row 3")],
)
def test_interrupted_dp_resumes_to_the_same_plan(setup, monkeypatch, capsys, method, run, saved_rows, resumed):
    """An interrupted plan keeps every finished DP row (validated selection's DP runs on the fit half)
    and --resume ends in the plan an uninterrupted run writes."""
    checkpoint, data, tmp = setup
    assert main(plan_args(checkpoint, data, tmp / "fresh.json", "--method", method)) == 0
    fresh = json.loads((tmp / "fresh.json").read_text())

    real_dp = select_depth_module.dp_depth
    out = tmp / "plan.json"
    monkeypatch.setattr(select_depth_module, "dp_depth", interrupted_after_row(3, run))
    assert main(plan_args(checkpoint, data, out, "--method", method)) == 130
    ckpt = tmp / "plan.json.dp-checkpoint.json"
    assert ckpt.is_file() and not out.exists()
    tables = json.loads(ckpt.read_text())["tables"]
    assert {name: table["rows_done"] for name, table in tables.items()} == saved_rows

    monkeypatch.setattr(select_depth_module, "dp_depth", real_dp)
    capsys.readouterr()
    assert main(plan_args(checkpoint, data, out, "--method", method, "--resume")) == 0
    assert resumed in capsys.readouterr().err
    resumed_plan = json.loads(out.read_text())
    assert resumed_plan["ordering"] == fresh["ordering"]
    assert resumed_plan["metrics"].get("depth_validation") == fresh["metrics"].get("depth_validation")
    assert not ckpt.exists()


def test_resume_refuses_a_checkpoint_from_other_settings(setup, capsys):
    checkpoint, data, tmp = setup
    out = tmp / "plan.json"
    ckpt = tmp / "plan.json.dp-checkpoint.json"
    key = {"model": "other", "data": "x", "metric": "kl", "max_remove": 3, "beam": 1}
    key |= {"split_ends": True, "method": "validated", "search_dtype": "bfloat16"}
    table = {"num_layers": 4, "max_remove": 3, "values": [], "removed": [], "rows_done": 1, "evaluations": 1}
    ckpt.write_text(json.dumps({"key": key, "tables": {"fit": table}}))
    capsys.readouterr()
    assert main(plan_args(checkpoint, data, out, "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("amoebasearch plan: error: DP checkpoint") and "data, model" in err


def test_resume_refuses_a_checkpoint_whose_table_is_cut(setup, monkeypatch, capsys):
    """Valid JSON with this run's key but a table missing rows: one line, not an IndexError mid-DP."""
    checkpoint, data, tmp = setup
    out = tmp / "plan.json"
    real_dp = select_depth_module.dp_depth
    monkeypatch.setattr(select_depth_module, "dp_depth", interrupted_after_row(2))
    assert main(plan_args(checkpoint, data, out)) == 130
    ckpt = tmp / "plan.json.dp-checkpoint.json"
    saved = json.loads(ckpt.read_text())
    saved["tables"]["fit"]["cells"] = saved["tables"]["fit"]["cells"][:1]  # rows lost, rows_done still 2
    ckpt.write_text(json.dumps(saved))
    monkeypatch.setattr(select_depth_module, "dp_depth", real_dp)
    capsys.readouterr()
    assert main(plan_args(checkpoint, data, out, "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"amoebasearch plan: error: DP checkpoint {ckpt} is unreadable: delete it and run without --resume"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-remove", "4"], "--max-remove 4 must be between 0 and 3"),
        (["--method", "greedy"], "invalid choice: 'greedy'"),
    ],
)
def test_bad_arguments_are_one_line(setup, capsys, extra, message):
    checkpoint, data, tmp = setup
    capsys.readouterr()
    try:
        code = main(plan_args(checkpoint, data, tmp / "p.json") + extra)
    except SystemExit as exit_:  # argparse choices
        code = exit_.code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error:" in line]
    assert code == 2 and len(err) == 1 and message in err[0]


def test_baseline_methods_write_plans(setup):
    checkpoint, data, tmp = setup
    for method, width in [("bi", "magnitude"), ("ppl", "random"), ("last", "importance"), ("random", "random")]:
        out = tmp / f"{method}.json"
        assert main(plan_args(checkpoint, data, out, "--method", method, "--width-method", width)) == 0
        plan = json.loads(out.read_text())
        assert plan["depth_method"] == method and plan["width_method"] == width
        assert sorted(plan["ordering"]["layer_sets"]) == ["1", "2", "3", "4"]
