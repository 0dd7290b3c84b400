"""Instruction data: Alpaca/ShareGPT readers, response-only labels, padding, disjoint held-out split."""

from __future__ import annotations

import json

import pytest
from plan_helpers import char_tokenizer

from amoebasearch.data import IGNORE_INDEX, InstructionExample
from amoebasearch.data.instructions import collate
from amoebasearch.errors import UsageError
from amoebasearch.train.instruct import (
    iter_json_list,
    read_examples,
    split,
    tokenise_examples,
    tokenise_text,
)


def test_labels_cover_only_the_response_and_eos():
    [item] = tokenise_examples([InstructionExample("Q: hi\n", "yes")], char_tokenizer(), seq_len=64)
    assert item.labels[:6] == (IGNORE_INDEX,) * 6
    assert item.labels[6:] == item.input_ids[6:] and item.input_ids[-1] == char_tokenizer().eos_token_id  # 'yes' + EOS


def test_a_chat_model_is_trained_on_its_own_chat_template():
    """With a chat template the prompt is the user's turn through it (as the model is served), not
    the Alpaca text; the labels still cover only the response and EOS."""
    from amoebasearch.data import alpaca_example

    tokenizer = char_tokenizer()
    example = alpaca_example({"instruction": "hi", "input": "there", "output": "yes"})
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    alpaca = tokenise_examples([example], tokenizer, seq_len=400)[0]
    assert alpaca.input_ids[: len(encode(example.prompt))] == tuple(encode(example.prompt))
    tokenizer.chat_template = "{% for m in messages %}({{ m['role'] }}) {{ m['content'] }}{% endfor %}(assistant) "
    [item] = tokenise_examples([example], tokenizer, seq_len=400)
    assert item.input_ids == tuple(encode("(user) hi\n\nthere(assistant) yes") + [tokenizer.eos_token_id])
    assert [t for t in item.labels if t != IGNORE_INDEX] == list(item.input_ids[-4:])  # 'yes' + EOS


def test_examples_whose_prompt_fills_the_window_are_dropped():
    tokenised = tokenise_examples(
        [InstructionExample("x" * 30, "answer"), InstructionExample("q", "answer")], char_tokenizer(), seq_len=32
    )
    assert len(tokenised) == 1


def test_plain_text_chunks_label_every_token():
    chunks = tokenise_text("abcdefghij", char_tokenizer(), seq_len=4)
    assert len(chunks) == 2 and all(c.labels == c.input_ids for c in chunks)


def test_collate_pads_without_loss():
    batch = collate(
        tokenise_text("abcdefgh", char_tokenizer(), 4)[:1] + tokenise_text("ab", char_tokenizer(), 2), pad_id=0
    )
    assert batch["input_ids"].shape == (2, 4)
    assert batch["attention_mask"][1].tolist() == [1, 1, 0, 0]
    assert batch["labels"][1, 2:].tolist() == [IGNORE_INDEX, IGNORE_INDEX]


def test_alpaca_json_and_jsonl(tmp_path):
    records = [{"instruction": "Add", "input": "2 and 3", "output": "5"}, {"instruction": "Greet", "output": "Hi"}]
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    for name in ("a.json", "a.jsonl"):
        examples = read_examples(tmp_path / name)
        assert [e.response for e in examples] == ["5", "Hi"]
        assert "### Input:\n2 and 3" in examples[0].prompt and "### Input" not in examples[1].prompt


def test_sharegpt_reader_survives_a_truncated_file(tmp_path):
    conv = {"id": "1", "conversations": [{"from": "human", "value": "Why?"}, {"from": "gpt", "value": "Because."}]}
    text = json.dumps([conv, conv])
    (tmp_path / "s.json").write_text(text[:-20])  # cut inside the second record
    examples = read_examples(tmp_path / "s.json")
    assert len(examples) == 1 and examples[0].response == "Because."
    assert len(list(iter_json_list(text))) == 2


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.json", None, "does not exist"),
        ("bad.json", "{not json", "not valid JSON"),
        ("keys.json", json.dumps([{"prompt": "x"}]), "needs keys"),
        ("empty.txt", "  ", "empty"),
        ("data.csv", "a,b", "must end in"),
    ],
)
def test_bad_data_files_give_one_line_errors(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(UsageError, match=message) as err:
        read_examples(tmp_path / name)
    assert "\n" not in str(err.value)


def test_split_is_disjoint_and_seeded():
    train, held = split(list(range(20)), 5, seed=3)
    assert len(held) == 5 and not set(train) & set(held) and sorted(train + held) == list(range(20))
    assert (train, held) == split(list(range(20)), 5, seed=3)
    with pytest.raises(UsageError):
        split([1, 2], 2, seed=0)
