"""`amoebasearch train` and `export --supernet` end to end on a tiny checkpoint; bad inputs exit 2 in one line."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from amoebasearch.cli import main

RECORDS = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue is a colour."},
    {"instruction": "Add the numbers.", "input": "two and three", "output": "The sum is five."},
    {"instruction": "Say hello.", "input": "", "output": "Hello to you."},
    {"instruction": "Name an animal.", "input": "", "output": "A cat is an animal."},
] * 3


def add_word_tokenizer(path, texts):
    """Save a tiny word-level tokenizer beside the checkpoint, so the CLI can read text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]+", t)})
    vocab = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    assert len(vocab) <= 97, "the tiny model's vocabulary is 97"
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="[EOS]", pad_token="[EOS]")
    fast.save_pretrained(path)


@pytest.fixture
def setup(tmp_path, tiny_checkpoint):
    from amoebasearch.data import ALPACA_TEMPLATE

    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(RECORDS))
    add_word_tokenizer(tiny_checkpoint, [ALPACA_TEMPLATE] + [v for r in RECORDS for v in r.values()])
    return tiny_checkpoint, data, tmp_path


def train_args(model, data, out, *extra):
    small = ["--rank", "4", "--loras", "3", "--seq-len", "64", "--batch", "2", "--min-depth", "2", "--ffn-step", "32"]
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--quiet", *small, *extra]


def test_train_then_export_merged_subnet(setup, capsys):
    from transformers import AutoModelForCausalLM

    from amoebasearch.train.instruct import read_examples, tokenise_examples
    from amoebasearch.train.supernet import load_supernet

    model, data, tmp = setup
    out = tmp / "supernet"
    assert main(train_args(model, data, out, "--steps", "2", "--save-every", "1")) == 0
    for name in ("base.json", "plan.json", "shape_space.json", "smol_config.json", "smol.safetensors", "train_log.csv"):
        assert (out / name).is_file(), name
    assert main(train_args(model, data, out, "--steps", "3", "--save-every", "1", "--resume")) == 0
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3
    config = json.loads((out / "train_config.json").read_text())
    assert config["train"]["steps"] == 3  # what the run ended with
    assert config["held_out_pairs"] == 1 and config["sequences"] == len(RECORDS) - 1  # the last tenth: never read

    exported = tmp / "subnet"
    assert (
        main(["export", "--supernet", str(out), "--depth", "3", "--heads", "2", "--ffn", "64", "--out", str(exported)])
        == 0
    )
    assert "merged" in capsys.readouterr().out
    subnet = AutoModelForCausalLM.from_pretrained(exported).eval()
    supernet = load_supernet(out)
    shape = supernet.space.shape(3, 2, 64)
    ids = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        assert (subnet(input_ids=ids).logits - supernet.smol(shape, ids)).abs().max() <= 1e-4
    heldout = tokenise_examples(read_examples(data), supernet.loaded.tokenizer, 64)
    assert 1.0 < supernet.perplexity(shape, heldout) < float("inf")


def test_no_smol_trains_a_peft_lora_and_export_writes_a_peft_adapter(setup, capsys):
    """`train --no-smol` writes peft's own adapter files, which `PeftModel.from_pretrained` loads on
    the base model; `export --adapter` writes a shape's sliced base plus its adapter, and the pair
    gives the merged export's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, data, tmp = setup
    out = tmp / "plain"
    small = ["--rank", "4", "--seq-len", "64", "--batch", "2", "--min-depth", "2", "--ffn-step", "32", "--quiet"]
    argv = ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--no-smol", "--steps", "2"]
    assert main([*argv, *small, "--lr", "0.05"]) == 0
    assert json.loads((out / "smol_config.json").read_text())["adapter_format"] == "peft-lora"
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    ids = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(model)(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), out).eval()
        tuned_logits = tuned(input_ids=ids).logits
    assert (tuned_logits - base_logits).abs().max() > 1e-4  # two steps moved the LoRA off zero

    shape = ["--depth", "3", "--heads", "2", "--ffn", "64"]
    merged, adapter = tmp / "merged", tmp / "adapter-export"
    assert main(["export", "--supernet", str(out), *shape, "--out", str(merged)]) == 0
    assert main(["export", "--supernet", str(out), *shape, "--adapter", "--out", str(adapter)]) == 0
    assert "peft adapter" in capsys.readouterr().out
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(merged)(input_ids=ids).logits
        sliced = AutoModelForCausalLM.from_pretrained(adapter)
        got = PeftModel.from_pretrained(sliced, adapter / "adapter").eval()(input_ids=ids).logits
    assert (got - expected).abs().max() <= 1e-4
    capsys.readouterr()
    assert main(["export", "--depth", "3", "--adapter", "--model", str(model), "--out", str(tmp / "x")]) == 2
    assert "--adapter writes a trained supernet's LoRAs" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--top-k", "4"], "top-k"),
        (["--sandwich", "1"], "sandwich"),
        (["--data", "/nonexistent/data.json"], "does not exist"),
        (["--resume"], "not a supernet directory"),
        (["--min-depth", "9"], "min-depth"),
        (["--lr", "0"], "must be above 0"),
        (["--gate-noise", "nan"], "not a finite number"),
        (["--steps", "zero"], "not a whole number"),
        (["--device", "tpu"], "unknown device"),
    ],
)
def test_bad_train_inputs_exit_2_with_one_line(setup, capsys, extra, message):
    model, data, tmp = setup
    argv = train_args(model, data, tmp / "new", "--steps", "1") + extra  # a repeated flag: the last one wins
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1, err


def test_out_must_be_empty_without_resume(setup, capsys):
    # a folder of the user's own files is not offered --resume (which would then refuse it too)
    model, data, tmp = setup
    out = tmp / "full"
    out.mkdir()
    (out / "something").write_text("x")
    assert main(train_args(model, data, out, "--steps", "1")) == 2
    err = capsys.readouterr().err
    assert "not empty and holds no supernet run" in err and "--resume" not in err


def test_export_from_a_non_supernet_exits_2(tmp_path, capsys):
    code = main(["export", "--supernet", str(tmp_path), "--depth", "2", "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err
    assert "not a supernet directory" in err and err.count("\n") == 1


def _launcher(name: str, port: int) -> list[str]:
    """The command line, up to the module name, that starts two processes of a module under ``name``."""
    import sys

    if name == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", f"--master-port={port}", "-m"]
    # accelerate's multi-process launcher is torch's elastic launcher with its own flags; --cpu would
    # start a single process, so this machine (no GPU) runs it as --multi_gpu with --device cpu.
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        "-m",
    ]


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_launched_workers_take_the_step_one_process_takes_with_their_accumulation(setup, launcher):
    """Two Gloo processes under torchrun or ``accelerate launch``, each a slice of every step, end
    with the adapter one process trains with --grad-accum 2 (no gate noise, so both draw the same
    routes); only rank 0 writes the supernet directory and the log."""
    import os
    import socket
    import subprocess

    from safetensors.torch import load_file

    model, data, tmp = setup
    common = ["--steps", "3", "--gate-noise", "0", "--device", "cpu"]
    assert main(train_args(model, data, tmp / "one", *common, "--grad-accum", "2")) == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*_launcher(launcher, port), "amoebasearch", *train_args(model, data, tmp / "two", *common)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("supernet written to") == 1  # rank 0 alone reports (and writes)
    one, two = load_file(str(tmp / "one" / "smol.safetensors")), load_file(str(tmp / "two" / "smol.safetensors"))
    assert set(one) == set(two)
    assert all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)
    assert any(one[k].abs().sum() > 0 for k in one if k.endswith("lora_B")), "nothing was trained"
    logs = [list(csv.DictReader((tmp / run / "train_log.csv").open())) for run in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) == 3 * 4  # 3 steps x 4 sandwich shapes, written once
    for a, b in zip(*logs, strict=True):
        assert (a["step"], a["depth"], a["loras"], a["tokens"]) == (b["step"], b["depth"], b["loras"], b["tokens"])
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=1e-4)


def test_too_little_data_fails_before_the_run_is_set_up(setup, capsys):
    # the refusal must leave --out empty, or the retry would meet "holds a supernet run"
    model, data, tmp = setup
    out = tmp / "small"
    assert main(train_args(model, data, out, "--steps", "1", "--batch", "64")) == 2
    assert "cannot fill a micro-batch" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
