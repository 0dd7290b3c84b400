"""Data module: readers, chunking, disjoint seeded splits, Alpaca records, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from plan_helpers import PROSE, char_tokenizer, tiny_checkpoint_with_tokenizer

from amoebasearch.cli import main
from amoebasearch.data import (
    IGNORE_INDEX,
    calibration_split,
    chunk_tokens,
    default_corpus_path,
    encode_instruction,
    read_documents,
    read_instructions,
    split_chunks,
)
from amoebasearch.errors import UsageError


def test_plain_text_splits_at_blank_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("First paragraph\nstill first.\n\nSecond one.\n\n\n")
    assert read_documents(path) == ["First paragraph\nstill first.", "Second one."]


def test_jsonl_text_and_alpaca_json(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert read_documents(jsonl) == ["one", "two"]
    alpaca = tmp_path / "b.json"
    alpaca.write_text(json.dumps([{"instruction": "Say hi", "input": "", "output": "Hi"}]))
    [doc] = read_documents(alpaca)
    assert "### Instruction:\nSay hi" in doc and doc.endswith("### Response:\nHi")


def test_default_corpus_is_real_english():
    assert default_corpus_path().is_file()
    docs = read_documents(None)
    assert len(docs) > 1000
    assert docs[0].startswith("In the beginning God created the heaven and the earth.")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", "  \n", "is empty"),
        ("keys.jsonl", json.dumps({"prompt": "x", "answer": "y"}) + "\n", "has keys ['answer', 'prompt']"),
        ("bad.jsonl", '{"text": "ok"}\n{oops\n', "line 2 is not valid JSON"),
        ("list.json", json.dumps({"a": 1}), "must hold a JSON list"),
    ],
)
def test_bad_files_raise_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        read_documents(path)
    assert "\n" not in str(err.value)


def test_chunks_and_seeded_disjoint_split():
    chunks = chunk_tokens(list(range(103)), 10)
    assert chunks.shape == (10, 10) and chunks[1, 0] == 10
    calib, held = split_chunks(chunks, 4, 3, seed=1)
    again, _ = split_chunks(chunks, 4, 3, seed=1)
    other, _ = split_chunks(chunks, 4, 3, seed=2)
    assert torch.equal(calib, again) and not torch.equal(calib, other)
    calib_rows = {tuple(r.tolist()) for r in calib}
    assert not calib_rows & {tuple(r.tolist()) for r in held}


def test_calibration_split_counts_and_too_few_tokens(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(PROSE)
    tokenizer = char_tokenizer()
    split = calibration_split(tokenizer, path, seq_len=16, calib_tokens=64, eval_tokens=40, seed=0)
    assert split.calibration.shape == (4, 16) and split.held_out.shape == (3, 16)
    assert split.settings["calibration_tokens"] == 64 and split.fingerprint() == split.fingerprint()
    with pytest.raises(UsageError, match="fewer than the 4096 requested"):
        calibration_split(tokenizer, path, seq_len=16, calib_tokens=4096)


def test_alpaca_instructions_mask_the_prompt(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    records = [{"instruction": "Add", "input": "1 and 2", "output": "3"}, {"instruction": "Greet", "output": "Hello"}]
    path.write_text("\n".join(json.dumps(r) for r in records))
    first, second = read_instructions(path)
    assert "### Input:\n1 and 2" in first.prompt and "### Input" not in second.prompt
    tokenizer = char_tokenizer()
    ids, labels = encode_instruction(second, tokenizer, max_len=4096)
    prompt_len = len(tokenizer.encode(second.prompt, add_special_tokens=False))
    assert len(ids) == len(labels) == prompt_len + len("Hello") + 1
    assert labels[:prompt_len] == [IGNORE_INDEX] * prompt_len and labels[-1] == tokenizer.eos_token_id
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q", "output": "a"}]))
    with pytest.raises(UsageError, match="needs keys 'instruction' and 'output'"):
        read_instructions(bad)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        (json.dumps([{"question": "q", "answer": "a"}]), "needs a 'text' field or Alpaca fields"),
        ("Too short.", "requested: give more text or ask for fewer tokens"),
    ],
)
def test_cli_bad_data_is_one_line_exit_2(tmp_path, capsys, content, message):
    checkpoint = tiny_checkpoint_with_tokenizer(tmp_path / "tiny")
    data = tmp_path / ("data.json" if content.startswith("[") else "data.txt")
    data.write_text(content)
    capsys.readouterr()
    code = main(["plan", "--model", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("amoebasearch plan: error:") and message in errors[0]
    assert errors[0] == err[-1]
