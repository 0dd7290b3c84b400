"""Tiny random models of every supported family, built in-process (no hub, no files)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, torch.get_num_threads()))

# llama.cpp tests run wherever llama-cpp-python is installed (`make install` builds it) and always
# in CI, where a missing install must fail them rather than skip them
needs_llamacpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None and not os.environ.get("CI"),
    reason="llama-cpp-python is not installed (`make install` builds it)",
)

TINY = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A randomly initialised causal LM of ``family`` (llama, qwen2, mistral), eval mode, fp32."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
    }
    config_cls, model_cls = classes[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**TINY, **overrides}))
    return model.eval()


@pytest.fixture(params=["llama", "qwen2", "mistral"])
def family_model(request):
    return tiny_model(request.param)


@pytest.fixture
def llama_model():
    return tiny_model("llama")


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A tiny Llama saved as a Hugging Face checkpoint directory."""
    model = tiny_model("llama")
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    return path
