"""`make demo`: the main job on the embedded SmolLM2-135M, end to end, through the library.

Loads the real model (converting the GGUF once, then from the safetensors cache), prints its
summary and shape space, exports a smaller subnet, reloads that with plain transformers and
generates from it. Later stages (plan, profile, find) join this script as they land.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from amoebasearch.export import extract, save_subnet
from amoebasearch.models import DEFAULT_MODEL, cache_root, describe, load
from amoebasearch.shape import ShapeSpace

OUT = Path("build/demo")
PROMPT = "Give three tips for staying healthy."


def greedy_reply(model, tokenizer, prompt: str, tokens: int = 40) -> str:
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def main() -> None:
    cached = (cache_root() / "models" / DEFAULT_MODEL / "config.json").is_file()
    start = time.perf_counter()
    loaded = load(DEFAULT_MODEL)
    print(f"loaded {DEFAULT_MODEL} in {time.perf_counter() - start:.1f}s ({'cache' if cached else 'GGUF conversion'})")
    for key, value in describe(loaded).items():
        print(f"  {key:>11}: {value}")
    space = ShapeSpace(loaded.dims)
    print(
        f"  shape space: {len(space):,} shapes ({len(space.depths)} depths x heads {list(space.head_options)} "
        f"x {len(space.ffn_options)} FFN widths)"
    )

    print(f"\nfull model: {greedy_reply(loaded.model, loaded.tokenizer, PROMPT)!r}")
    shape = space.shape(depth=28, heads=9, ffn=1536)
    subnet_dir = save_subnet(extract(loaded.model, shape), OUT / "subnet", loaded.tokenizer)
    print(f"\nexported subnet {shape} to {subnet_dir}")

    # Reload with plain transformers: nothing of amoebasearch is needed to run the subnet.
    model = AutoModelForCausalLM.from_pretrained(subnet_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(subnet_dir)
    params = sum(p.numel() for p in model.parameters())
    print(f"reloaded with AutoModelForCausalLM: {params:,} parameters")
    print(f"subnet: {greedy_reply(model, tokenizer, PROMPT)!r}")
    print(f"\nartefacts: {subnet_dir}/ (standalone Hugging Face model), model cache: {cache_root()}")


if __name__ == "__main__":
    main()
