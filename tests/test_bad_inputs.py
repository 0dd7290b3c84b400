"""Bad input anywhere on the command line: one line naming the problem and the fix, exit code 2,
no traceback, and nothing of the user's destroyed (cases found by fuzzing every verb)."""

from __future__ import annotations

import json

import pytest
import table_helpers

from amoebasearch.cli import main
from amoebasearch.errors import UsageError
from amoebasearch.models import load_config


def error_line(capsys) -> str:
    """The CLI's own error line (transformers may draw a progress bar on stderr first)."""
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("amoebasearch")]
    assert len(lines) == 1, err
    return lines[0]


def test_export_never_replaces_a_folder_it_did_not_write(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    (mine / "notes.txt").write_text("keep me")
    monkeypatch.chdir(mine)
    for out in (".", str(mine)):
        assert main(["export", "--model", str(tiny_checkpoint), "--depth", "2", "--out", out]) == 2
        assert "no earlier export wrote" in error_line(capsys)
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "notes.txt"]


def test_a_folder_export_would_refuse_is_refused_before_any_model_loads(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import amoebasearch.cli.export as export_cli

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(export_cli, "load", no_load)
    assert main(["export", "--model", str(tiny_checkpoint), "--depth", "2", "--out", str(mine)]) == 2
    assert "--out" in error_line(capsys)  # and "no earlier export wrote": the whole message
    assert main(["export", "--supernet", str(tmp_path / "none"), "--depth", "2", "--out", str(mine)]) == 2
    assert "no earlier export wrote" in error_line(capsys)
    find = ["find", "--model", str(tiny_checkpoint), "--budget", "30ms", "--out", str(tmp_path / "f")]
    assert main([*find, "--export", str(mine)]) == 2
    assert error_line(capsys).endswith(
        f"--export {mine} is a non-empty directory that no earlier export wrote: choose a new or empty path"
    )
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_export_replaces_its_own_earlier_export_but_not_the_working_folder(
    tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "sub"
    assert main(["export", "--model", str(tiny_checkpoint), "--depth", "2", "--out", str(out)]) == 0
    assert main(["export", "--model", str(tiny_checkpoint), "--depth", "3", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    capsys.readouterr()
    monkeypatch.chdir(out)  # an earlier export, but the folder the user stands in
    assert main(["export", "--model", str(tiny_checkpoint), "--depth", "2", "--out", "."]) == 2
    assert "current directory" in error_line(capsys)
    assert (out / "config.json").is_file()


def test_an_output_path_under_a_file_is_a_usage_error(tiny_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "a-file.txt"
    blocker.write_text("x")
    table = table_helpers.fake_table(load_config(str(tiny_checkpoint)), "tiny", tmp_path / "t.csv")
    assert main(["plot", "table", "--profile", str(table), "--out", str(blocker / "plots")]) == 2
    assert "a file stands where a folder is needed" in error_line(capsys)
    # the long verbs check before they work, not when they write
    for argv in (
        ["plan", "--model", str(tiny_checkpoint), "--out", str(blocker / "plan.json")],
        ["train", "--model", str(tiny_checkpoint), "--out", str(blocker / "supernet")],
        ["find", "--model", str(tiny_checkpoint), "--budget", "3ms", "--out", str(blocker)],
    ):
        assert main(argv) == 2
        assert f"{blocker} is a file, so nothing can be written under it" in error_line(capsys)


@pytest.mark.parametrize(
    ("sidecar", "message"),
    [
        ([1, 2], "holds a JSON list"),
        ({"format": 1}, "lacks model, device, runtime, settings"),
        (b"\xff\xfe\x00", "is not UTF-8 text"),
    ],
)
def test_a_broken_table_sidecar_is_named(tiny_checkpoint, tmp_path, capsys, sidecar, message):
    table = table_helpers.fake_table(load_config(str(tiny_checkpoint)), "tiny", tmp_path / "t.csv")
    side = table.with_suffix(".json")
    side.write_bytes(sidecar if isinstance(sidecar, bytes) else json.dumps(sidecar).encode())
    assert main(["plot", "table", "--profile", str(table), "--out", str(tmp_path / "plots")]) == 2
    line = error_line(capsys)
    assert message in line and "t.json" in line


def test_non_numeric_or_impossible_table_rows_are_refused(tiny_checkpoint, tmp_path, capsys):
    table = table_helpers.fake_table(load_config(str(tiny_checkpoint)), "tiny", tmp_path / "t.csv")
    text = table.read_text()
    lines = text.splitlines()
    first = lines[1].split(",")
    first[6] = "fast"  # median_us of the embedding row
    table.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    assert main(["plot", "table", "--profile", str(table), "--out", str(tmp_path / "plots")]) == 2
    assert "column median_us holds non-numbers" in error_line(capsys)
    first[6] = "-3.0"
    table.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    assert main(["plot", "table", "--profile", str(table), "--out", str(tmp_path / "plots")]) == 2
    assert "latency <= 0" in error_line(capsys)


def test_a_binary_plan_or_shape_file_is_named(tiny_checkpoint, tmp_path, capsys):
    binary = tmp_path / "plan.json"
    binary.write_bytes(bytes(range(256)))
    argv = ["export", "--model", str(tiny_checkpoint), "--depth", "2", "--out", str(tmp_path / "o")]
    assert main([*argv, "--plan", str(binary)]) == 2
    assert "plan file" in (line := error_line(capsys)) and "is not UTF-8 text" in line
    assert main(["export", "--model", str(tiny_checkpoint), "--shape", str(binary), "--out", str(tmp_path / "o")]) == 2
    assert "shape file" in error_line(capsys)


def test_a_plan_without_the_full_depth_is_refused(tiny_checkpoint, tmp_path, capsys):
    from amoebasearch.planfile import Plan

    plan = Plan.identity(load_config(str(tiny_checkpoint))).to_dict()
    plan["ordering"]["layer_sets"] = {}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    argv = ["export", "--model", str(tiny_checkpoint), "--depth", "2", "--out", str(tmp_path / "o")]
    assert main([*argv, "--plan", str(path)]) == 2
    assert "no layer set for the full depth" in error_line(capsys)


def test_a_checkpoint_without_weights_or_with_a_broken_config_is_named(tiny_checkpoint, tmp_path, capsys):
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    assert main(["info", "--model", str(config_only)]) == 2
    assert "cannot load the weights" in (line := error_line(capsys)) and "--random-weights" in line
    broken = json.loads((tiny_checkpoint / "config.json").read_text())
    broken["num_attention_heads"] = 0
    (config_only / "config.json").write_text(json.dumps(broken))
    assert main(["info", "--model", str(config_only)]) == 2
    assert "cannot read the config" in error_line(capsys)


def test_a_file_output_that_is_a_folder_is_refused_before_work(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "plan.json"
    folder.mkdir()
    assert main(["plan", "--model", str(tiny_checkpoint), "--out", str(folder)]) == 2
    assert f"--out {folder} is a folder" in error_line(capsys)
    # the DP checkpoint beside --out is written after every row: a folder there would fail hours in
    out = tmp_path / "other.json"
    (tmp_path / "other.json.dp-checkpoint.json").mkdir()
    assert main(["plan", "--model", str(tiny_checkpoint), "--out", str(out)]) == 2
    line = error_line(capsys)
    assert "the DP checkpoint beside --out, " in line and "dp-checkpoint.json, is a folder: remove it" in line


def test_an_evaluation_count_that_would_never_finish_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["find", "--budget", "30ms", "--metric", "accuracy", "--eval-items", "100000000"])
    assert exit_code.value.code == 2
    line = error_line(capsys)
    assert "--eval-items: 100,000,000 is over 10,000" in line and "per shape" in line


def test_a_negative_looking_value_gets_the_equals_hint(capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["find", "--budget", "-5ms"])
    assert exit_code.value.code == 2
    assert "is written --budget=VALUE" in error_line(capsys)
    assert main(["find", "--budget=-5ms"]) == 2  # then the budget itself is refused, in one line
    assert "budget '-5ms' is not a latency" in error_line(capsys)


def test_find_on_a_gpu_this_machine_lacks_asks_for_its_table(tiny_checkpoint, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the GPU's own table would be looked up")
    find = ["find", "--model", str(tiny_checkpoint), "--budget", "30ms", "--out", str(tmp_path / "f")]
    assert main([*find, "--device", "cuda:0"]) == 2
    assert error_line(capsys).endswith("CUDA is not available here: pass --profile TABLE to search its table")


def test_find_refuses_an_export_it_would_refuse_only_after_the_search(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "results" / "f"
    find = ["find", "--model", str(tiny_checkpoint), "--budget", "30ms", "--out", str(out)]
    for export in (out, out / "model", out.parent):  # the same folder, inside it, holding it
        assert main([*find, "--export", str(export)]) == 2
        assert "overlap" in error_line(capsys)
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main([*find, "--export", "."]) == 2
    assert "current directory" in error_line(capsys)
    assert not out.exists()


def test_a_folder_where_a_file_is_expected_is_named_as_a_folder(tmp_path):
    from amoebasearch.fronts import read_qualities
    from amoebasearch.planfile import Plan
    from amoebasearch.profile.table import load_table
    from amoebasearch.shape import Shape
    from amoebasearch.train.instruct import read_examples

    for reader in (load_table, Plan.load, Shape.load, read_qualities, read_examples):
        with pytest.raises(UsageError, match="is a folder, not a file"):
            reader(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda meta: meta["model"].pop("dims"), "model.dims must give"),
        (lambda meta: meta["settings"].update(ffn_step="abc"), "settings.ffn_step must be a positive integer"),
        (lambda meta: meta.update(calibration={"decode/1/128": {"scale": "x"}}), "calibration decode/1/128"),
    ],
)
def test_a_sidecar_with_unusable_values_is_named(tiny_checkpoint, tmp_path, capsys, edit, message):
    table = table_helpers.fake_table(load_config(str(tiny_checkpoint)), "tiny", tmp_path / "t.csv")
    side = table.with_suffix(".json")
    meta = json.loads(side.read_text())
    edit(meta)
    side.write_text(json.dumps(meta))
    assert main(["plot", "table", "--profile", str(table), "--out", str(tmp_path / "plots")]) == 2
    line = error_line(capsys)
    assert message in line and "t.json" in line


@pytest.mark.parametrize("content", ["", "a,b\n1,2\n", 'subnet,split\n"1,heldout\n'])
def test_a_broken_validation_file_is_named_not_a_traceback(tiny_checkpoint, tmp_path, content):
    from amoebasearch.profile.table import load_table, validation_path
    from amoebasearch.search.margin import budget_margin

    path = table_helpers.fake_table(load_config(str(tiny_checkpoint)), "tiny", tmp_path / "t.csv")
    validation_path(path).write_text(content)
    with pytest.raises(UsageError, match="validation file .*t.validation.csv"):
        budget_margin("auto", load_table(path), "decode", 1, 128)


@pytest.mark.parametrize(("content", "message"), [("{oops", "not valid JSON"), ("{}", "lacks model, signature")])
def test_a_broken_supernet_file_is_named(tmp_path, content, message):
    from amoebasearch.search.find import FindRequest, _model_identity

    (tmp_path / "base.json").write_text(content)
    with pytest.raises(UsageError, match=f"supernet file .*base.json.*{message}"):
        _model_identity(FindRequest(budget_ms=1.0, supernet=str(tmp_path)))


def test_find_refuses_a_supernet_base_of_another_model(tiny_checkpoint, tmp_path):
    from amoebasearch.search.find import FindRequest, _model_identity

    (tmp_path / "base.json").write_text(json.dumps({"model": str(tiny_checkpoint), "signature": "0000"}))
    request = FindRequest(budget_ms=1.0, supernet=str(tmp_path), model=str(tiny_checkpoint))
    with pytest.raises(UsageError, match="trained on model signature 0000"):
        _model_identity(request)


def test_find_refuses_a_runtime_or_device_its_table_contradicts(tiny_checkpoint, tmp_path, capsys):
    table = table_helpers.fake_table(load_config(str(tiny_checkpoint)), "tiny", tmp_path / "t.csv")
    argv = ["find", "--model", str(tiny_checkpoint), "--budget", "3ms", "--out", str(tmp_path / "o")]
    assert main([*argv, "--runtime", "bogus"]) == 2
    assert "unknown runtime 'bogus'" in error_line(capsys)
    assert main([*argv, "--profile", str(table), "--runtime", "onnxruntime"]) == 2
    assert "prices runtime eager, not --runtime onnxruntime" in error_line(capsys)
    assert main([*argv, "--profile", str(table), "--device", "cuda:0"]) == 2
    assert "measured on a cpu device, not --device cuda:0" in error_line(capsys)


def test_train_refuses_mixture_settings_with_no_smol(tiny_checkpoint, tmp_path, capsys):
    argv = ["train", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "s"), "--no-smol"]
    assert main([*argv, "--loras", "3"]) == 2
    assert "--no-smol trains one shared LoRA" in error_line(capsys)


def test_profile_grid_lists_refuse_empty_items_and_drop_repeats():
    import argparse

    from amoebasearch.cli.profile import comma_list

    assert comma_list(int)("1,8,1") == [1, 8] and comma_list(int)("") == []
    with pytest.raises(argparse.ArgumentTypeError, match="empty item"):
        comma_list(int)("1,,2")


def test_a_qualities_row_the_model_cannot_have_names_the_file_and_row(tiny_checkpoint, tmp_path):
    import pandas as pd

    from amoebasearch.fronts import candidates, read_qualities
    from amoebasearch.profile.table import load_table

    config = load_config(str(tiny_checkpoint))
    table = load_table(table_helpers.fake_table(config, "tiny", tmp_path / "t.csv"))
    qualities = tmp_path / "q.csv"
    row = {"model": "tiny", "signature": table.signature, "metric": "ppl", "selection": "dp", "quality": 9.0}
    frame = pd.DataFrame(
        [
            {**row, "depth": 1, "layers": "0", "heads": config.num_attention_heads, "ffn": 64},
            {**row, "depth": 2, "layers": "0 99", "heads": config.num_attention_heads, "ffn": 64},
        ]
    )
    frame.to_csv(qualities, index=False)
    read = read_qualities(qualities)
    assert read["signature"].iloc[0] == table.signature
    with pytest.raises(UsageError, match="q.csv, row 2: shape layer index 99 is out of range"):
        candidates(read, table)
