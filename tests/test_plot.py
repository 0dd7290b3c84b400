"""`amoebasearch plot fronts|table` and the notebooks, run against small artefacts built here."""

import contextlib
import os

import nbclient
import nbformat
import pandas as pd
import pytest
from plan_helpers import PROSE, tiny_checkpoint_with_tokenizer
from table_helpers import fake_table

from amoebasearch import fronts
from amoebasearch.cli import main
from amoebasearch.models import load_config

NOTEBOOKS = os.path.join(os.path.dirname(__file__), os.pardir, "notebooks")


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """A tiny checkpoint, a measured and an estimated table, and the qualities CSV a real `find` wrote."""
    root = tmp_path_factory.mktemp("plot")
    checkpoint = tiny_checkpoint_with_tokenizer(root / "tiny")
    config = load_config(str(checkpoint))
    profiles = root / "profiles"
    measured = fake_table(config, "tiny", profiles / "tiny-cpu-eager-float32.csv", phases=("prefill", "decode"))
    fake_table(config, "tiny", profiles / "tiny-gpu-roofline-bfloat16.csv", source="estimated", scale=0.1)
    data = root / "prose.txt"
    data.write_text("\n\n".join([PROSE] * 30))
    run = root / "run"
    argv = ["find", "--model", str(checkpoint), "--data", str(data), "--profile", str(measured), "--budget", "3ms"]
    assert main([*argv, "--eval-tokens", "512", "--trials", "16", "--pareto", "--out", str(run), "--json"]) == 0
    # A baseline selection beside the searched one: depth-only rows under another name.
    frame = fronts.read_qualities(run / "qualities.csv")
    depth_only = frame[(frame.heads == frame.heads.max()) & (frame.ffn == frame.ffn.max())]
    qualities = fronts.write_qualities(
        pd.concat([frame, depth_only.assign(selection="last", quality=depth_only.quality * 1.5)]),
        root / "qualities.csv",
    )
    return {"root": root, "profiles": profiles, "measured": measured, "qualities": qualities, "run": run}


def test_find_writes_every_cached_quality(artefacts):
    frame = fronts.read_qualities(artefacts["run"] / "qualities.csv")
    assert len(frame) >= 2 and set(frame.metric) == {"ppl"} and set(frame.selection) == {"identity+identity"}
    assert (frame.quality > 1).all() and frame.depth.between(1, 4).all()


def test_plot_fronts_writes_pngs_and_point_tables(artefacts, tmp_path, capsys):
    out = tmp_path / "plots"
    argv = ["plot", "fronts", "--qualities", str(artefacts["qualities"]), "--profiles", str(artefacts["profiles"])]
    assert main([*argv, "--out", str(out)]) == 0
    for name in ("fronts-by-device-decode-b1-c128", "fronts-by-selection-decode-b1-c128"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_device = pd.read_csv(out / "fronts-by-device-decode-b1-c128.csv")
    assert set(by_device.estimated) == {True, False}
    by_selection = pd.read_csv(out / "fronts-by-selection-decode-b1-c128.csv")
    assert "last: depth only" in set(by_selection.curve)
    assert "(estimated)" in capsys.readouterr().out
    again = tmp_path / "again"  # the measured table passed by --profile and found in --profiles: one front
    assert main([*argv, "--profile", str(artefacts["measured"]), "--out", str(again)]) == 0
    curves = pd.read_csv(again / "fronts-by-device-decode-b1-c128.csv")
    assert len(curves) == len(by_device) and curves.curve.nunique() == 2


def test_plot_table_writes_png(artefacts, tmp_path, capsys):
    assert main(["plot", "table", "--profile", str(artefacts["measured"]), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "tiny-cpu-eager-float32-b1-c128.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plot", "fronts", "--qualities", "nowhere.csv"], "does not exist"),
        (["plot", "table", "--profile", "nowhere.csv"], "nowhere.csv"),
        (["plot", "fronts", "--qualities", "{qualities}", "--profiles", "{root}"], "no latency table"),
        (["plot", "fronts", "--qualities", "{qualities}", "--profiles", "{profiles}", "--context", "64"], "no latency"),
        (["plot"], "required"),
    ],
)
def test_bad_plot_inputs_are_one_line_errors(artefacts, capsys, argv, message):
    argv = [a.format(**artefacts) for a in argv]
    with pytest.raises(SystemExit) if argv == ["plot"] else contextlib.nullcontext():
        code = main(argv)
        assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", ["pareto_fronts.ipynb", "latency_table.ipynb"])
def test_notebooks_execute_on_small_artefacts(artefacts, name, monkeypatch):
    monkeypatch.setenv("AMOEBASEARCH_QUALITIES", str(artefacts["qualities"]))
    monkeypatch.setenv("AMOEBASEARCH_PROFILES", str(artefacts["profiles"]))
    monkeypatch.setenv("AMOEBASEARCH_TABLE", str(artefacts["measured"]))
    book = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    assert all(not cell.get("outputs") for cell in book.cells if cell.cell_type == "code"), "commit without outputs"
    resources = {"metadata": {"path": NOTEBOOKS}}
    nbclient.NotebookClient(book, timeout=300, kernel_name="python3", resources=resources).execute()
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
    text = " ".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "tiny" in text  # it read the artefacts built here, not the shipped ones


def test_curve_colours_stay_distinct_past_ten_curves():
    from amoebasearch.plots import curve_colours

    for count in (3, 10, 15, 20):
        colours = curve_colours(count)
        assert len(colours) == count and len(set(colours)) == count
