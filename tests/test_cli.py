import json

import pytest
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from amoebasearch.cli import main


def run_cli(capsys, *argv):
    capsys.readouterr()  # drop what fixtures printed
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_exit(capsys, *argv):
    """Run the CLI where argparse itself may exit; return (code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    return exc.value.code, capsys.readouterr().err


def test_info_prints_summary_and_shape_space(capsys, tiny_checkpoint):
    code, out, _ = run_cli(capsys, "info", "--model", str(tiny_checkpoint), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["shape_space"]["size"] == 4 * 2 * 2  # depths x heads {2,4} x ffn {64,128}
    code, out, _ = run_cli(capsys, "info", "--model", str(tiny_checkpoint))
    assert code == 0 and "shape space" in out


def test_export_by_dimensions_and_by_shape_file(capsys, tiny_checkpoint, tmp_path):
    out = tmp_path / "sub"
    code, text, _ = run_cli(
        capsys, "export", "--model", str(tiny_checkpoint), "--depth", "2", "--heads", "2", "--out", str(out)
    )
    assert code == 0 and "depth=2 heads=2 ffn=128" in text
    config = AutoModelForCausalLM.from_pretrained(out).config
    assert (config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (2, 2, 128)

    shape_file = tmp_path / "shape.json"
    shape_file.write_text(json.dumps({"layers": [0, 3], "heads": 4, "ffn": 64}))
    code, _, _ = run_cli(
        capsys, "export", "--model", str(tiny_checkpoint), "--shape", str(shape_file), "--out", str(out)
    )
    assert code == 0
    assert json.loads((out / "amoebasearch-shape.json").read_text()) == {"layers": [0, 3], "heads": 4, "ffn": 64}


BAD_SHAPES = {
    "out_of_range_layer": ({"layers": [0, 9], "heads": 4, "ffn": 64}, "out of range"),
    "heads_do_not_divide": ({"layers": [0], "heads": 3, "ffn": 64}, "does not divide evenly"),
    "ffn_too_large": ({"layers": [0], "heads": 4, "ffn": 4096}, "FFN size 128"),
    "missing_key": ({"layers": [0], "heads": 4}, "lacks key"),
}


@pytest.mark.parametrize("case", sorted(BAD_SHAPES))
def test_bad_shapes_give_one_line_errors(capsys, tiny_checkpoint, tmp_path, case):
    data, message = BAD_SHAPES[case]
    shape_file = tmp_path / "shape.json"
    shape_file.write_text(json.dumps(data))
    code, _, err = run_cli(
        capsys, "export", "--model", str(tiny_checkpoint), "--shape", str(shape_file), "--out", str(tmp_path / "o")
    )
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_inputs_give_one_line_errors(capsys, tiny_checkpoint, tmp_path):
    malformed = tmp_path / "malformed.json"
    malformed.write_text("{not json")
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(gpt2)
    model = str(tiny_checkpoint)
    cases = [
        (("info", "--model", str(tmp_path / "missing")), "neither an embedded model"),
        (("info", "--model", str(gpt2)), "unsupported architecture"),
        (("export", "--model", model, "--shape", str(malformed), "--out", "o"), "not valid JSON"),
        (("export", "--model", model, "--shape", str(tmp_path / "nope.json"), "--out", "o"), "does not exist"),
        (("export", "--model", model, "--depth", "9", "--out", "o"), "exceeds the model's 4 layers"),
        (("export", "--model", model, "--heads", "3", "--out", "o"), "does not divide evenly"),
        (("export", "--model", model, "--ffn", "999", "--out", "o"), "FFN size 128"),
        (("export", "--model", model, "--out", "o"), "no shape given"),
        (("export", "--model", model, "--plan", str(tmp_path / "plan.json"), "--depth", "2", "--out", "o"), "plan"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, argv
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)


def test_argparse_errors_are_one_line_with_exit_code_2(capsys):
    code, err = cli_exit(capsys, "export", "--depth", "two", "--out", "o")
    assert code == 2 and err.count("\n") == 1 and "not a whole number" in err
    code, err = cli_exit(capsys, "frobnicate")
    assert code == 2 and err.count("\n") == 1


@pytest.mark.parametrize("verb", ["info", "plan", "train", "profile", "find", "export", "eval", "plot"])
def test_every_verb_has_help(capsys, verb):
    code, _ = cli_exit(capsys, verb, "--help")
    assert code == 0


def test_ctrl_c_while_the_verbs_import_is_one_line(monkeypatch, capsys):
    """The command imports torch before `cli.main` can catch anything; `entry` covers that window."""
    import importlib.abc
    import sys

    from amoebasearch import entry

    class Interrupting(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "amoebasearch.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "amoebasearch.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    capsys.readouterr()
    assert entry.main(["info"]) == 130
    assert capsys.readouterr().err == "amoebasearch: interrupted\n"


def test_the_package_imports_without_torch_until_ordering_is_used():
    import subprocess
    import sys

    code = (
        "import sys, amoebasearch; assert 'torch' not in sys.modules; "
        "amoebasearch.Ordering; assert 'torch' in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
