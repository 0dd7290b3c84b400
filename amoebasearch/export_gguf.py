"""Write a subnet as one GGUF file that llama.cpp serves: weights, tokenizer and chat template.

A subnet has one width in every kept layer, so the standard GGUF description of its family holds
it: ``llama`` for Llama and Mistral checkpoints, ``qwen2`` for Qwen2, with ``attention.key_length``
given explicitly (the kept query heads times the head size no longer equals the hidden size).
Tensors are written in float32 or float16 with the ``gguf`` package; ``q8_0`` and ``q4_k_m`` are
then made from the float16 file by llama.cpp's own quantiser (``llama_model_quantize`` through
llama-cpp-python), the path llama.cpp's own converter and ``llama-quantize`` take.

The Llama layout rotates pairs of adjacent channels (GPT-J style) while Hugging Face checkpoints
rotate the two halves of each head, so the query and key rows of every head are reordered
(first half to even rows, second half to odd rows); Qwen2's GGUF layout keeps the halves.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amoebasearch import atomic
from amoebasearch.errors import UsageError
from amoebasearch.models import check_family, decoder_layers
from amoebasearch.shape import ModelDims

QUANTS = ("f32", "f16", "q8_0", "q4_k_m")
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
# how llama.cpp names a BPE pre-tokenizer, for the pre-tokenizer layouts of tokenizer.json it is told apart by
PRE_TOKENIZERS = {
    (("ByteLevel", True),): "gpt-2",
    (("Digits", True), ("ByteLevel", True)): "smollm",
}


def gguf_name(quant: str) -> str:
    """The file name an export of quantisation ``quant`` gets inside its folder."""
    return f"model-{quant}.gguf"


def check_quant(quant: str, flag: str = "--quant") -> str:
    if quant not in QUANTS:
        raise UsageError(f"{flag} {quant!r} is not a GGUF type this export writes: choose one of {', '.join(QUANTS)}")
    return quant


def write_gguf(model: nn.Module, tokenizer: Any, path: str | Path, quant: str = "f16", threads: int = 1) -> Path:
    """Write ``model`` (a Hugging Face causal LM of a supported family, e.g. an extracted subnet)
    as one GGUF file at ``path``, atomically; ``tokenizer`` may be None (a placeholder vocabulary of
    the model's size is written, enough for llama.cpp to load and time it, not to read text)."""
    check_quant(quant)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if quant in ("f32", "f16"):
        with atomic.replacing(path) as tmp:
            _write_float(model, tokenizer, tmp, quant)
        return path
    with tempfile.TemporaryDirectory(prefix="amoebasearch-gguf-", dir=path.parent) as scratch:
        source = Path(scratch) / "f16.gguf"
        _write_float(model, tokenizer, source, "f16")
        with atomic.replacing(path) as tmp:
            quantize(source, tmp, quant, threads)
    return path


def quantize(source: Path, target: Path, quant: str, threads: int = 1) -> None:
    """llama.cpp's quantiser: ``source`` (a float GGUF) to ``target`` at ``quant`` (q8_0, q4_k_m)."""
    import llama_cpp

    from amoebasearch.llamacpp import quiet_logs

    ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[quant]
    quiet_logs()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    # the quantiser prints a line per tensor it cannot block-quantise (widths not a multiple of 256
    # take q5_0/q8_0 instead, as llama-quantize does); keep stderr for a failure only
    with tempfile.TemporaryFile() as log, _stderr_into(log):
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
        if status != 0:
            log.seek(0)
            said = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
            raise UsageError(f"llama.cpp could not quantise to {quant}: {said[-1] if said else f'status {status}'}")


@contextlib.contextmanager
def _stderr_into(handle):
    """The process's file descriptor 2 (C libraries write there) redirected into ``handle``."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(handle.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _write_float(model: nn.Module, tokenizer: Any, path: Path, quant: str) -> None:
    import gguf

    config = model.config
    check_family(config)
    family = config.model_type
    arch = GGUF_ARCH[family]
    writer = gguf.GGUFWriter(str(path), arch)
    _add_hyperparameters(writer, config, family, quant)
    _add_tokenizer(writer, tokenizer, config.vocab_size)
    dtype = np.float16 if quant == "f16" else np.float32
    for name, tensor in _tensors(model, arch):
        # norms and biases stay float32, as llama.cpp's own converter keeps 1-d tensors
        data = tensor.detach().to(torch.float32).cpu().numpy()
        writer.add_tensor(name, data if data.ndim == 1 else data.astype(dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_hyperparameters(writer: Any, config: Any, family: str, quant: str) -> None:
    import gguf

    dims = ModelDims.from_config(config)
    rope = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise UsageError(f"the GGUF export writes default RoPE only; this model uses {rope_type!r} RoPE scaling")
    writer.add_name(str(getattr(config, "name_or_path", "") or family))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(dims.hidden)
    writer.add_block_count(dims.num_layers)
    writer.add_feed_forward_length(dims.ffn)
    writer.add_head_count(dims.num_heads)
    writer.add_head_count_kv(dims.num_kv_heads)
    writer.add_key_length(dims.head_dim)
    writer.add_value_length(dims.head_dim)
    writer.add_rope_dimension_count(dims.head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))


def _rotate_pairs(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head from the Hugging Face half-split order to llama.cpp's adjacent-pair order."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _tensors(model: nn.Module, arch: str):
    """(GGUF name, tensor) for every weight of the model, in llama.cpp's naming."""
    dims = ModelDims.from_config(model.config)
    yield "token_embd.weight", model.model.embed_tokens.weight
    for index, layer in enumerate(decoder_layers(model)):
        attention, mlp = layer.self_attn, layer.mlp
        block = f"blk.{index}"
        yield f"{block}.attn_norm.weight", layer.input_layernorm.weight
        for role, linear, heads in (
            ("attn_q", attention.q_proj, dims.num_heads),
            ("attn_k", attention.k_proj, dims.num_kv_heads),
            ("attn_v", attention.v_proj, None),
        ):
            rotate = heads is not None and arch == "llama"
            yield f"{block}.{role}.weight", _rotate_pairs(linear.weight, heads) if rotate else linear.weight
            if linear.bias is not None:
                yield f"{block}.{role}.bias", _rotate_pairs(linear.bias, heads) if rotate else linear.bias
        yield f"{block}.attn_output.weight", attention.o_proj.weight
        yield f"{block}.ffn_norm.weight", layer.post_attention_layernorm.weight
        yield f"{block}.ffn_gate.weight", mlp.gate_proj.weight
        yield f"{block}.ffn_up.weight", mlp.up_proj.weight
        yield f"{block}.ffn_down.weight", mlp.down_proj.weight
    yield "output_norm.weight", model.model.norm.weight
    if not getattr(model.config, "tie_word_embeddings", False):
        yield "output.weight", model.lm_head.weight


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    """The tokenizer as llama.cpp reads it (byte-level BPE: tokens, types, merges, special ids,
    chat template), from the tokenizer's own files; a placeholder when there is none."""
    import gguf

    if tokenizer is None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list([f"<|placeholder{i}|>" for i in range(vocab_size)])
        writer.add_token_types([gguf.TokenType.NORMAL] * vocab_size)
        writer.add_token_merges(["<|placeholder0|> <|placeholder1|>"])  # llama.cpp requires one
        return
    pre, tokens, types, special = _tokenizer_fields(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special.add_to_gguf(writer, quiet=True)


_TOKENIZERS: dict[tuple[int, int], tuple[Any, tuple]] = {}


def _tokenizer_fields(tokenizer: Any, vocab_size: int) -> tuple:
    """(pre-tokenizer name, tokens, token types, `gguf.SpecialVocab`) of a tokenizer, read from its
    saved files once per tokenizer object (the profiler exports hundreds of models with one)."""
    import gguf

    key = (id(tokenizer), vocab_size)
    cached = _TOKENIZERS.get(key)
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    with tempfile.TemporaryDirectory(prefix="amoebasearch-tokenizer-") as folder:
        tokenizer.save_pretrained(folder)
        spec_path = Path(folder) / "tokenizer.json"
        if not spec_path.is_file():
            raise UsageError("the GGUF export needs a fast (tokenizer.json) tokenizer: this model's has none")
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
        if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
            raise UsageError("the GGUF export writes byte-level BPE tokenizers (GPT-2 style); this one is another kind")
        tokens, types = _vocabulary(spec, vocab_size)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    fields = (_pre_tokenizer(spec, tokenizer), tokens, types, special)
    _TOKENIZERS[key] = (tokenizer, fields)
    return fields


def _vocabulary(spec: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings by id and llama.cpp token types (special added tokens are CONTROL); ids the
    tokenizer leaves unused up to the embedding's size are padding entries."""
    import gguf

    by_id = {int(index): token for token, index in spec["model"]["vocab"].items()}
    types = {index: gguf.TokenType.NORMAL for index in by_id}
    for added in spec.get("added_tokens", []):
        by_id[int(added["id"])] = added["content"]
        types[int(added["id"])] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    if max(by_id) >= vocab_size:
        raise UsageError(f"the tokenizer has ids up to {max(by_id)} but the model embeds only {vocab_size} tokens")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    kinds = [types.get(i, gguf.TokenType.UNUSED) for i in range(vocab_size)]
    return tokens, kinds


def _pre_tokenizer(spec: dict, tokenizer: Any) -> str:
    """llama.cpp's name for how text is split before BPE: the source GGUF's own where the model was
    converted from one (`models.resolve`), else read off tokenizer.json ("default" when unknown)."""
    source = Path(str(getattr(tokenizer, "name_or_path", ""))) / "amoebasearch-source.json"
    if source.is_file():
        original = json.loads(source.read_text()).get("gguf")
        if original and Path(original).is_file():
            from gguf import GGUFReader

            field = GGUFReader(original).get_field("tokenizer.ggml.pre")
            if field is not None:
                return str(field.contents())
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    layout = tuple(
        (step.get("type"), bool(step.get("use_regex", step.get("individual_digits", False)))) for step in steps
    )
    return PRE_TOKENIZERS.get(layout, "default")
