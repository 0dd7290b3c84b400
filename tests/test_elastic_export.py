import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from amoebasearch.elastic import active_shape, use_shape
from amoebasearch.export import extract, save_subnet
from amoebasearch.ordering import Ordering
from amoebasearch.shape import ModelDims, Shape, ShapeSpace


def random_ordering(dims: ModelDims, seed: int) -> Ordering:
    """A shuffled ordering, so slicing is tested with non-prefix heads/channels and gapped layer sets."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    return Ordering(
        layer_sets={d: tuple(sorted(rng.sample(range(dims.num_layers), d))) for d in range(1, dims.num_layers + 1)},
        head_order=tuple(
            tuple(tuple(torch.randperm(dims.heads_per_group, generator=g).tolist()) for _ in range(dims.num_kv_heads))
            for _ in range(dims.num_layers)
        ),
        ffn_order=tuple(tuple(torch.randperm(dims.ffn, generator=g).tolist()) for _ in range(dims.num_layers)),
    ).validate(dims)


def test_full_shape_reproduces_the_model_exactly(family_model):
    dims = ModelDims.from_config(family_model.config)
    tokens = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = family_model(tokens).logits
        with use_shape(family_model, Shape.full(dims), random_ordering(dims, 1)):
            elastic = family_model(tokens).logits
    assert torch.equal(reference, elastic)


def test_elastic_forward_equals_exported_subnet(family_model, tmp_path):
    dims = ModelDims.from_config(family_model.config)
    ordering = random_ordering(dims, 3)
    space = ShapeSpace(dims, ordering, ffn_step=32)
    rng = random.Random(0)
    shapes = {space.sample(rng) for _ in range(12)} | {space.smallest()}
    tokens = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(1))
    for shape in sorted(shapes):
        with torch.no_grad():
            with use_shape(family_model, shape, ordering):
                elastic = family_model(tokens).logits
            subnet = extract(family_model, shape, ordering)
            exported = subnet(tokens).logits
        assert exported.shape == elastic.shape
        assert (elastic - exported).abs().max().item() <= 1e-4, shape
        assert subnet.config.num_hidden_layers == shape.depth
        assert subnet.config.num_attention_heads == shape.heads
        assert subnet.config.intermediate_size == shape.ffn


def test_exported_subnet_reloads_with_plain_transformers_and_generates(family_model, tmp_path):
    dims = ModelDims.from_config(family_model.config)
    ordering = random_ordering(dims, 5)
    shape = Shape(ordering.layers_for_depth(2), dims.num_kv_heads, 64)
    out = save_subnet(extract(family_model, shape, ordering), tmp_path / "subnet")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = torch.tensor([[5, 17, 3, 44]])
    with torch.no_grad(), use_shape(family_model, shape, ordering):
        expected = family_model.generate(prompt, max_new_tokens=6, do_sample=False)
    generated = reloaded.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(expected, generated)
    assert (out / "amoebasearch-shape.json").is_file()


def test_use_shape_restores_the_model_even_after_an_error(llama_model):
    dims = ModelDims.from_config(llama_model.config)
    tokens = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        before = llama_model(tokens).logits
        with pytest.raises(RuntimeError), use_shape(llama_model, Shape((1, 3), 2, 64)):
            assert active_shape(llama_model) == Shape((1, 3), 2, 64)
            raise RuntimeError("boom")
        after = llama_model(tokens).logits
    assert active_shape(llama_model) is None
    assert llama_model.config.num_hidden_layers == dims.num_layers
    assert len(llama_model.model.layers) == dims.num_layers
    assert torch.equal(before, after)


def test_elastic_forward_backpropagates_into_kept_weights_only(llama_model):
    shape = Shape((0, 2), 2, 64)
    tokens = torch.randint(0, 97, (1, 7))
    with use_shape(llama_model, shape):
        llama_model(tokens, labels=tokens).loss.backward()
    layers = llama_model.model.layers
    assert layers[1].mlp.up_proj.weight.grad is None
    grad = layers[0].mlp.up_proj.weight.grad
    assert grad[:64].abs().sum() > 0 and grad[64:].abs().sum() == 0


def test_extract_builds_the_subnet_on_the_parents_device():
    """A subnet of a GPU model must be a GPU model: built on the parent's device (meta stands in for cuda)."""
    from conftest import tiny_model

    parent = tiny_model("llama").to(device="meta", dtype=torch.bfloat16)
    subnet = extract(parent, Shape((0, 1), 2, 32))
    assert {(p.device.type, p.dtype) for p in subnet.parameters()} == {("meta", torch.bfloat16)}
