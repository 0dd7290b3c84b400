"""Multiple-choice accuracy: hand-checkable scores, packed == one row per ending, file layouts, cloze task."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_model
from plan_helpers import PROSE, char_tokenizer, counting_logits
from test_train_smol import randomise, shuffled_ordering

from amoebasearch.data import ChoiceItem, calibration_split, cloze_items, held_out_documents, read_choice_items
from amoebasearch.elastic import elastic_logits
from amoebasearch.errors import UsageError
from amoebasearch.quality import EncodedItem, MultipleChoiceAccuracy, encode_items
from amoebasearch.shape import ModelDims, ShapeSpace
from amoebasearch.train.smol import SMoLConfig, SMoLModel

VOCAB = 10
HIGH = 5.0


def test_scores_are_mean_token_logprobs_given_the_context():
    hit = HIGH - math.log(math.exp(HIGH) + VOCAB - 1)  # log-prob of the expected next token
    miss = -math.log(math.exp(HIGH) + VOCAB - 1)
    items = [
        EncodedItem(context=(1, 2, 3), endings=((4, 5), (9,), (4, 6)), gold=0),
        EncodedItem(context=(7,), endings=((1, 2, 3), (8, 9, 0, 1)), gold=0),  # 7 -> 1 misses: gold loses
        EncodedItem(context=(5,), endings=((7,), (6, 8)), gold=0),  # (6, 8) has one hit: gold loses
        EncodedItem(context=(2,), endings=((3, 4), (3,)), gold=0),  # a tie goes to the first ending
    ]
    evaluator = MultipleChoiceAccuracy(counting_logits(VOCAB, HIGH), items, batch=3)
    expected = [[hit, miss, (hit + miss) / 2], [(miss + 2 * hit) / 3, hit], [miss, (hit + miss) / 2], [hit, hit]]
    for got, want in zip(evaluator.scores(None), expected, strict=True):
        assert torch.allclose(got, torch.tensor(want), atol=1e-6)
    assert evaluator(None) == 0.5


def naive_scores(logits_fn, shape, item):
    """One row per ending, no mask, no position ids: the reference the packed rows must match."""
    out = []
    for ending in item.endings:
        ids = torch.tensor([list(item.context) + list(ending)])
        logprobs = logits_fn(shape, ids)[0].float().log_softmax(-1)
        n = len(item.context)
        out.append(torch.stack([logprobs[n - 1 + j, token] for j, token in enumerate(ending)]).mean())
    return torch.stack(out)


def random_items(count=5, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def ids(n):
        return tuple(torch.randint(0, 97, (n,), generator=gen).tolist())

    return [EncodedItem(ids(3 + 4 * i), tuple(ids(1 + (i + k) % 4) for k in range(2 + i % 3)), 0) for i in range(count)]


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_packed_rows_equal_one_row_per_ending(family):
    model = tiny_model(family)
    dims = ModelDims.from_config(model.config)
    ordering = shuffled_ordering(dims)
    shape = ShapeSpace(dims, ordering).shape(3, 2, 64)
    logits_fn = elastic_logits(model, ordering)
    items = random_items()
    packed = MultipleChoiceAccuracy(logits_fn, items, batch=3).scores(shape)
    with torch.no_grad():
        for got, item in zip(packed, items, strict=True):
            assert torch.allclose(got, naive_scores(logits_fn, shape, item), atol=1e-5)


def test_packed_rows_through_a_trained_supernet():
    model = tiny_model()
    smol = randomise(SMoLModel(model, SMoLConfig(num_loras=3, top_k=2, rank=4)))
    shape = ShapeSpace(ModelDims.from_config(model.config)).shape(2, 2, 64)
    items = random_items(3, seed=1)
    packed = MultipleChoiceAccuracy(smol, items).scores(shape)
    with torch.no_grad():
        for got, item in zip(packed, items, strict=True):
            assert torch.allclose(got, naive_scores(smol, shape, item), atol=1e-5)


def test_accuracy_on_a_tiny_model_is_a_deterministic_share():
    model = tiny_model()
    space = ShapeSpace(ModelDims.from_config(model.config))
    docs = [" ".join(PROSE.split()[i:] + PROSE.split()[:i]) for i in range(0, 60, 6)]
    items = encode_items(cloze_items(docs, n_items=12, context_words=8, ending_words=3), char_tokenizer())
    evaluator = MultipleChoiceAccuracy(elastic_logits(model), items, batch=5)
    for shape in (space.shape(4, 2, 128), space.shape(2, 2, 64)):
        first = evaluator(shape)
        assert 0.0 <= first <= 1.0 and first * 12 == round(first * 12) and evaluator(shape) == first


def test_cloze_items_are_seeded_real_continuations():
    docs = [f"doc{i} " + " ".join(f"w{i}x{j}" for j in range(40)) for i in range(6)]
    items = cloze_items(docs, n_items=30, context_words=10, ending_words=4, seed=3)
    assert items == cloze_items(docs, n_items=30, context_words=10, ending_words=4, seed=3)
    assert items != cloze_items(docs, n_items=30, context_words=10, ending_words=4, seed=4)
    for item in items:
        assert len(item.endings) == 4 and len(set(item.endings)) == 4
        assert all(len(ending.split()) == 4 for ending in item.endings)
        [doc] = [d for d in docs if item.context in d]
        assert f"{item.context} {item.endings[item.gold]}" in doc  # the true next words
        assert all(ending not in doc for k, ending in enumerate(item.endings) if k != item.gold)
    assert len({item.gold for item in items}) == 4  # the gold position is shuffled
    with pytest.raises(UsageError, match="needs 4 documents"):
        cloze_items(docs[:3], context_words=10, ending_words=4)


def test_held_out_documents_never_share_a_calibration_chunk():
    tokenizer = char_tokenizer()
    docs = [letter * (20 + 7 * i) for i, letter in enumerate("abcdefghijklmnopqrst")]  # one token id per doc
    kept = held_out_documents(docs, tokenizer, seq_len=16, calib_tokens=64, seed=0)
    split = calibration_split(tokenizer, seq_len=16, calib_tokens=64, seed=0, docs=docs)
    calibration_ids = set(split.calibration.flatten().tolist()) - {tokenizer.eos_token_id}
    dropped = [doc for doc in docs if doc not in kept]
    assert 0 < len(dropped) < len(docs)
    assert set(tokenizer.convert_tokens_to_ids([doc[0] for doc in dropped])) == calibration_ids
    assert held_out_documents(docs, tokenizer, seq_len=16, calib_tokens=0) == docs


LAYOUTS = [
    ({"context": "The sky is", "endings": ["blue", "loud", "sour"], "label": 0}, 0),
    ({"ctx": "The sky is", "endings": ["loud", "blue"], "label": "1"}, 1),  # HellaSwag: label as text
    ({"question": "Sky colour?", "choices": ["red", "green", "blue", "pink"], "answer": "C"}, 2),
    ({"question": "Sky?", "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]}, "answerKey": "B"}, 1),
    ({"question": "Sky?", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]}, "answerKey": "3"}, 2),
    ({"question": "Sky?", "choices": ["no", "yes"], "gold": 1}, 1),
]


def test_choice_file_layouts(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(record) for record, _ in LAYOUTS) + "\n")
    items = read_choice_items(path)
    assert [item.gold for item in items] == [gold for _, gold in LAYOUTS]
    assert items[0] == ChoiceItem("The sky is", ("blue", "loud", "sour"), 0)
    assert items[3].endings == ("a", "b", "c")


def test_endings_follow_the_context_after_one_space():
    tokenizer = char_tokenizer()
    [a, b] = encode_items([ChoiceItem("ab", ("c",), 0), ChoiceItem("ab ", ("c",), 0)], tokenizer)
    space, c = tokenizer.convert_tokens_to_ids([" ", "c"])
    assert a.endings == ((space, c),) and b.endings == ((c,),)
