import pytest
import torch
from conftest import tiny_model
from transformers import GPT2Config, GPT2LMHeadModel

from amoebasearch.errors import UsageError
from amoebasearch.models import describe, load, load_config, model_signature, shape_config


def test_load_a_local_checkpoint_directory(tiny_checkpoint):
    loaded = load(str(tiny_checkpoint))
    assert loaded.name == "tiny-llama"
    assert loaded.tokenizer is None
    assert not loaded.model.training
    summary = describe(loaded)
    assert summary["layers"] == 4 and summary["kv_heads"] == 2 and summary["family"].startswith("Llama")


def test_missing_path_and_missing_config(tmp_path):
    with pytest.raises(UsageError, match="neither an embedded model"):
        load(str(tmp_path / "nowhere"))
    with pytest.raises(UsageError, match="no config.json"):
        load(str(tmp_path))


def test_unsupported_architecture_names_the_supported_families(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UsageError, match=r"unsupported architecture 'gpt2'.*Llama.*Mistral.*Qwen2"):
        load_config(str(tmp_path / "gpt2"))


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_shape_config_read_without_transformers_has_the_same_signature(tmp_path, family):
    """find names the model from config.json alone; a field the file leaves out goes through
    transformers' defaults, so both roads give one signature."""
    import json

    path = tmp_path / family
    tiny_model(family).save_pretrained(path)
    assert model_signature(shape_config(str(path))) == model_signature(load_config(str(path)))
    if family == "llama":  # its config.json states every field: read without transformers
        assert not hasattr(shape_config(str(path)), "to_dict")
    fields = json.loads((path / "config.json").read_text())
    fields.pop("num_key_value_heads")  # left to the family's default
    (path / "config.json").write_text(json.dumps(fields))
    assert model_signature(shape_config(str(path))) == model_signature(load_config(str(path)))
    (path / "config.json").write_text(json.dumps({**fields, "model_type": "gpt2"}))
    with pytest.raises(UsageError, match="unsupported architecture 'gpt2'"):
        shape_config(str(path))


def test_signature_depends_on_shape_relevant_config_only():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    assert model_signature(a.config) == model_signature(b.config)
    assert model_signature(a.config) != model_signature(tiny_model("llama", num_hidden_layers=3).config)
    assert model_signature(a.config) != model_signature(tiny_model("qwen2").config)


def test_loaded_dtype_is_respected(tiny_checkpoint):
    assert next(load(str(tiny_checkpoint), dtype=torch.bfloat16).model.parameters()).dtype == torch.bfloat16
