"""GGUF export: files llama.cpp loads, whose logits match transformers, with the tokenizer inside."""

import numpy as np
import pytest
import torch
from conftest import needs_llamacpp, tiny_model
from plan_helpers import PROSE

from amoebasearch.errors import UsageError
from amoebasearch.export_gguf import check_quant, write_gguf
from amoebasearch.llamacpp import Engine, greedy

pytestmark = needs_llamacpp


def byte_level_tokenizer(size: int = 300):
    """A byte-level BPE tokenizer trained on the test prose (GPT-2 style, as SmolLM2's)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([PROSE] * 10, vocab_size=size, min_frequency=2, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def gguf_logits(path, ids: list[int]) -> np.ndarray:
    engine = Engine(path, context=64, threads=1)
    engine.decode(ids, 0, all_logits=True)
    logits = np.stack([engine.logits(i) for i in range(len(ids))])
    engine.close()
    return logits


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize(("quant", "tolerance"), [("f32", 1e-3), ("f16", 1e-2)])
def test_float_exports_match_transformers_logits(tmp_path, family, quant, tolerance):
    """Llama's query/key rows are reordered for llama.cpp's rotary layout, Qwen2's biases kept: the
    logits of every position agree with transformers' (to llama.cpp's float16 KV cache, and for f16
    weights their rounding too; relative to the largest logit)."""
    model = tiny_model(family)
    ids = [5, 17, 3, 60, 42, 8, 91, 7, 33, 2, 64, 12]
    path = write_gguf(model, None, tmp_path / f"{family}.gguf", quant)
    expected, got = hf_logits(model, ids), gguf_logits(path, ids)
    assert np.abs(got - expected).max() <= tolerance * max(1.0, np.abs(expected).max())


def test_a_subnet_exports_with_its_head_size_explicit(tmp_path, llama_model):
    """A subnet keeps the head size: key_length is written explicitly, and the file still matches."""
    from amoebasearch.export import extract
    from amoebasearch.shape import Shape

    subnet = extract(llama_model, Shape((0, 2, 3), heads=2, ffn=64))
    ids = [1, 2, 3, 4, 5, 6, 7, 8]
    path = write_gguf(subnet, None, tmp_path / "subnet.gguf", "f32")
    expected = hf_logits(subnet, ids)
    assert np.abs(gguf_logits(path, ids) - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max())


def test_q8_0_export_carries_the_tokenizer_and_generates(tmp_path):
    """Through `amoebasearch export --format gguf`: one file, tokenised by llama.cpp exactly as by
    transformers, that generates greedily (its first tokens those transformers picks)."""
    from amoebasearch.cli import main

    tokenizer = byte_level_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer), num_hidden_layers=2)
    checkpoint = tmp_path / "tiny"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    out = tmp_path / "export"
    assert main(["export", "--model", str(checkpoint), "--depth", "2", "--out", str(out), "--format", "gguf"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["amoebasearch-shape.json", "model-q8_0.gguf"]

    import llama_cpp

    engine = Engine(out / "model-q8_0.gguf", context=128, threads=1)
    text = PROSE[:80].encode()
    buffer = (llama_cpp.llama_token * 128)()
    vocab = llama_cpp.llama_model_get_vocab(engine._model)
    count = llama_cpp.llama_tokenize(vocab, text, len(text), buffer, 128, False, False)
    assert list(buffer[:count]) == tokenizer(PROSE[:80])["input_ids"]
    prompt = tokenizer(PROSE[:40])["input_ids"]
    generated = greedy(engine, prompt, 6)
    assert len(generated) == 6 and all(0 <= t < len(tokenizer) for t in generated)
    with torch.no_grad():
        first = int(model(torch.tensor([prompt])).logits[0, -1].argmax())
    assert generated[0] == first


def test_bad_quant_and_foreign_tokenizers_are_one_line_errors(tmp_path):
    from plan_helpers import char_tokenizer

    with pytest.raises(UsageError, match="choose one of"):
        check_quant("q3_k")
    with pytest.raises(UsageError, match="byte-level BPE"):
        write_gguf(tiny_model("llama"), char_tokenizer(), tmp_path / "x.gguf", "f16")
    assert not (tmp_path / "x.gguf").exists()
