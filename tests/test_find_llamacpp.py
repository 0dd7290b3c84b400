"""`find` for a llama.cpp deployment: its table, its GGUF, measured in llama.cpp, scored there."""

import json

from conftest import needs_llamacpp, tiny_model
from plan_helpers import PROSE
from test_export_gguf import byte_level_tokenizer

from amoebasearch.cli import main

pytestmark = needs_llamacpp


def test_find_deploys_the_measured_gguf_and_scores_it_in_llama_cpp(tmp_path, capsys):
    tokenizer = byte_level_tokenizer()
    checkpoint = tmp_path / "tiny"
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    data = tmp_path / "prose.txt"
    data.write_text("\n\n".join([PROSE] * 30))
    profiles = tmp_path / "profiles"
    profile = ["profile", "--model", str(checkpoint), "--runtime", "llamacpp", "--quant", "q8_0"]
    assert main([*profile, "--phases", "decode", "--out", str(profiles)]) == 0
    table = next(profiles.glob("*-llamacpp-q8_0.csv"))
    out = tmp_path / "subnet"
    capsys.readouterr()
    args = ["find", "--model", str(checkpoint), "--data", str(data), "--eval-tokens", "256", "--trials", "6",
            "--budget", "100ms", "--out", str(tmp_path / "run"), "--json", "--verify",
            "--export", str(out)]  # fmt: skip
    assert main([*args, "--runtime", "llamacpp", "--profiles", str(profiles), "--format", "gguf"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["table"] == str(table) and report["threads"]
    verified = report["verify"]
    assert verified["runtime"] == "llamacpp" and verified["quant"] == "q8_0"
    assert verified["gguf"] == report["export"] == str(out / "model-q8_0.gguf")  # the file measured is the one shipped
    assert verified["measured_ms"] > 0 and report["best"]["quality_gguf"] > 1.0
    # a q8_0 file is close to the float model it came from
    assert abs(report["best"]["quality_gguf"] / report["best"]["quality"] - 1) < 0.05

    assert main([*args, "--profile", str(table), "--quant", "q4_k_m", "--study", "again"]) == 2
    assert "was timed at q8_0, not --quant q4_k_m" in capsys.readouterr().err
