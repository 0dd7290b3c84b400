"""`amoebasearch profile` bad inputs: one line on stderr, exit code 2."""

import pytest
import torch

from amoebasearch.cli import main


def one_line_error(capsys, argv):
    capsys.readouterr()  # drop the fixture's own output
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    return err


def test_cuda_without_cuda(capsys, tiny_checkpoint):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    err = one_line_error(capsys, ["profile", "--model", str(tiny_checkpoint), "--device", "cuda:0"])
    assert "CUDA is not available" in err


def test_unknown_runtime(capsys, tiny_checkpoint):
    err = one_line_error(capsys, ["profile", "--model", str(tiny_checkpoint), "--runtime", "tvm"])
    assert "unknown runtime 'tvm'" in err


def test_not_installed_runtime(capsys, tiny_checkpoint):
    err = one_line_error(capsys, ["profile", "--model", str(tiny_checkpoint), "--runtime", "vllm"])
    assert "not installed" in err


@pytest.mark.parametrize("flag", ["--batch", "--context", "--phases"])
def test_empty_grid(capsys, tiny_checkpoint, flag):
    err = one_line_error(capsys, ["profile", "--model", str(tiny_checkpoint), flag, ","])
    assert "empty grid" in err


def test_unknown_phase_and_device(capsys, tiny_checkpoint):
    assert "unknown phase" in one_line_error(capsys, ["profile", "--model", str(tiny_checkpoint), "--phases", "train"])
    assert "unknown device" in one_line_error(capsys, ["profile", "--model", str(tiny_checkpoint), "--device", "tpu"])


def test_unknown_estimate_device(capsys, tiny_checkpoint):
    err = one_line_error(capsys, ["profile", "--model", str(tiny_checkpoint), "--estimate", "tpu-v9"])
    assert "no spec sheet" in err


def test_random_weights_profile_from_config_alone(tmp_path, tiny_checkpoint):
    """A directory with only config.json profiles with seeded random weights: same signature, recorded."""
    import shutil

    from amoebasearch.models import load_config, model_signature, random_weights
    from amoebasearch.profile import load_table

    config_only = tmp_path / "config-only" / "tiny-llama"
    config_only.mkdir(parents=True)
    shutil.copy(tiny_checkpoint / "config.json", config_only / "config.json")
    first = random_weights(str(config_only), seed=3).model.state_dict()
    again = random_weights(str(config_only), seed=3).model.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert first["model.layers.0.mlp.up_proj.weight"].std() > 0  # real random values, never zeros

    out = tmp_path / "profiles"
    argv = ["profile", "--model", str(config_only), "--random-weights", "--phases", "decode", "--context", "8"]
    assert main([*argv, "--out", str(out)]) == 0
    table = load_table(next(out.glob("tiny-llama-*.csv")))
    assert table.meta["settings"]["weights"].startswith("random")
    assert table.signature == model_signature(load_config(str(tiny_checkpoint)))
    assert (table.rows["median_us"] > 0).all()


def test_estimate_refuses_options_it_would_ignore(capsys, tiny_checkpoint):
    argv = ["profile", "--model", str(tiny_checkpoint), "--estimate", "h100", "--validate", "5", "--runtime", "vllm"]
    err = one_line_error(capsys, argv)
    assert "--validate would be ignored" in err
    argv = ["profile", "--model", str(tiny_checkpoint), "--estimate", "h100", "--validate-instances", "6"]
    err = one_line_error(capsys, argv)
    assert "--validate-instances would be ignored" in err
    # --runtime is not ignored: it names the runtime the estimate models
    err = one_line_error(capsys, ["profile", "--model", str(tiny_checkpoint), "--estimate", "h100", "--runtime", "ort"])
    assert "unknown runtime 'ort'" in err


def test_onnxruntime_times_twice_the_copies_per_validation_subnet_by_default():
    """ONNX Runtime sessions of one program differ by where their weights land, so its validation
    reference is the median of twice as many copies as a block row; --validate-instances overrides."""
    import argparse

    from amoebasearch.cli.profile import validation_copies
    from amoebasearch.profile.runtimes import EagerRuntime, OnnxRuntime

    args = argparse.Namespace(instances=3, validate_instances=None)
    assert validation_copies(args, OnnxRuntime()) == 6
    assert validation_copies(args, EagerRuntime()) == 3
    args.validate_instances = 4
    assert validation_copies(args, OnnxRuntime()) == validation_copies(args, EagerRuntime()) == 4
