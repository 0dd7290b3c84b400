"""SMoL: the gate picks exactly k LoRAs per shape, slicing is consistent, merged export == elastic forward."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import tiny_model

from amoebasearch.export import extract
from amoebasearch.models import decoder_layers, projections
from amoebasearch.ordering import Ordering
from amoebasearch.shape import ModelDims, Shape, ShapeSpace
from amoebasearch.train.smol import SMoLConfig, SMoLModel, load_balancing_loss, shape_encoding


def randomise(smol: SMoLModel, seed: int = 1) -> SMoLModel:
    """Non-zero B matrices and gate weights, so the LoRAs actually change the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in smol.smol_layers():
            layer.lora_B.copy_(0.05 * torch.randn(layer.lora_B.shape, generator=gen))
        for param in smol.gate.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    return smol


def shuffled_ordering(dims: ModelDims, seed: int = 0) -> Ordering:
    """A non-identity plan: permuted head and channel rankings, non-prefix layer sets."""
    rng = random.Random(seed)
    identity = Ordering.identity(dims)

    def perm(n: int) -> tuple[int, ...]:
        order = list(range(n))
        rng.shuffle(order)
        return tuple(order)

    layer_sets = {d: tuple(sorted(rng.sample(range(dims.num_layers), d))) for d in identity.layer_sets}
    layer_sets[dims.num_layers] = tuple(range(dims.num_layers))
    heads = tuple(tuple(perm(dims.heads_per_group) for _ in range(dims.num_kv_heads)) for _ in range(dims.num_layers))
    ffn = tuple(perm(dims.ffn) for _ in range(dims.num_layers))
    return Ordering(layer_sets, heads, ffn).validate(dims)


def test_gate_depends_on_shape_and_selects_exactly_k():
    smol = randomise(SMoLModel(tiny_model(), SMoLConfig(num_loras=5, top_k=2, rank=4)))
    space = ShapeSpace(smol.dims, ffn_step=32)
    routes = {}
    for shape in space:
        with torch.no_grad():
            route = smol.route(shape)
        routed = route.routed
        assert routed.numel() == 2 and len(set(routed.tolist())) == 2 and 5 not in routed.tolist()
        assert torch.all(route.weight > 0) and float(route.weight[:2].sum()) == pytest.approx(1.0)
        assert route.index[-1] == 5 and float(route.weight[-1]) == 1.0  # the shared LoRA, in every route
        assert torch.equal(route.index, smol.route(shape).index)  # deterministic at inference
        routes[shape] = (tuple(route.index.tolist()), tuple(round(float(w), 5) for w in route.weight))
    assert len(set(routes.values())) > 1, "the gate gives every shape the same LoRAs and weights"


def test_noisy_gate_still_selects_k_and_explores():
    smol = SMoLModel(tiny_model(), SMoLConfig(num_loras=5, top_k=2, rank=4, noise=1.0, prior=0.0))
    shape = ShapeSpace(smol.dims).largest()
    torch.manual_seed(0)
    picks = {tuple(sorted(smol.route(shape, noisy=True).routed.tolist())) for _ in range(50)}
    assert all(len(p) == 2 for p in picks)
    assert len(picks) > 1, "noisy top-k never explored another pair"


def test_only_selected_loras_receive_gradients():
    smol = randomise(SMoLModel(tiny_model(), SMoLConfig(num_loras=5, top_k=2, rank=4)))
    shape = Shape((0, 1, 3), 2, 96)
    route = smol.route(shape)
    logits = smol(shape, torch.randint(0, 97, (2, 8)), route=route)
    logits.square().mean().backward()
    chosen = set(route.index.tolist())
    assert len(chosen) == 3 and 5 in chosen  # top-2 plus the shared LoRA
    for _, layer in smol.smol_layers():
        if layer.lora_A.grad is None:
            continue  # a layer the shape skips
        norms = layer.lora_A.grad.flatten(1).norm(dim=1)
        assert {i for i in range(6) if norms[i] > 0} == chosen
    assert smol.gate.net[0].weight.grad is not None  # the gate learns through the mixture weights
    assert not route._columns  # the per-forward expansion of the gate weights is dropped on exit
    assert all(not p.requires_grad for n, p in smol.base.named_parameters() if "lora_" not in n)  # base frozen


def test_fresh_adapter_leaves_the_model_unchanged():
    base = tiny_model()
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        smol = SMoLModel(base, SMoLConfig(rank=4))
        got = smol(ShapeSpace(smol.dims).largest(), ids)
    assert torch.allclose(expected, got, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_merged_export_equals_elastic_forward(family):
    base = tiny_model(family)
    dims = ModelDims.from_config(base.config)
    smol = randomise(SMoLModel(base, SMoLConfig(num_loras=5, top_k=2, rank=4), shuffled_ordering(dims)))
    smol.eval()
    original = {k: v.clone() for k, v in base.state_dict().items() if "lora" not in k}
    ids = torch.randint(0, 97, (2, 12))
    space = ShapeSpace(dims, smol.ordering, ffn_step=32)
    for shape in [space.largest(), space.smallest(), space.shape(3, 2, 96), space.shape(2, 4, 64)]:
        with torch.no_grad():
            elastic = smol(shape, ids)
            with smol.merged(shape) as merged:
                subnet = extract(merged, shape, smol.ordering)
            exported = subnet(input_ids=ids).logits
        assert exported.shape == elastic.shape
        assert (exported - elastic).abs().max() <= 1e-4, f"{family} {shape}"
    restored = {k: v for k, v in base.state_dict().items() if "lora" not in k}
    assert all(torch.equal(original[k], restored[k]) for k in original), "merge did not restore the base weights"


def test_adapter_round_trip(tmp_path):
    smol = randomise(SMoLModel(tiny_model(), SMoLConfig(num_loras=3, top_k=2, rank=4)))
    smol.save_adapter(tmp_path)
    again = SMoLModel.from_adapter(tiny_model(), tmp_path)
    assert again.config == smol.config
    ids, shape = torch.randint(0, 97, (1, 9)), Shape((0, 2), 2, 64)
    with torch.no_grad():
        assert torch.equal(smol(shape, ids), again(shape, ids))


def test_load_balancing_loss_is_one_when_uniform_and_higher_when_skewed():
    uniform = torch.full((4, 4), 0.25)
    assert float(load_balancing_loss(uniform, torch.tensor([[0], [1], [2], [3]]), 4)) == pytest.approx(1.0)
    skewed = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 4)
    assert float(load_balancing_loss(skewed, torch.tensor([[0]] * 4), 4)) > 1.0


def test_config_rejects_top_k_above_loras():
    from amoebasearch.errors import UsageError

    with pytest.raises(UsageError, match="top-k"):
        SMoLConfig(num_loras=2, top_k=3)


def test_gate_prior_anchors_small_and_large_shapes_to_different_loras():
    """With the size-anchored prior (and no noise) the largest shape uses the top anchors and the
    smallest the bottom ones, whatever the random init of the learned part."""
    torch.manual_seed(0)
    smol = SMoLModel(tiny_model(), SMoLConfig(num_loras=5, top_k=2, rank=4, prior=4.0))
    space = ShapeSpace(smol.dims, ffn_step=32)
    largest, smallest = space.largest(), space.smallest()
    assert set(smol.route(largest).routed.tolist()) == {3, 4}
    assert 4 not in set(smol.route(smallest).routed.tolist())
    probabilities = smol.gate.probabilities(torch.stack([shape_encoding(s, smol.dims) for s in (largest, smallest)]))
    assert probabilities[0, 4] > probabilities[1, 4] and probabilities[1, 0] > probabilities[0, 0]


def test_adapters_saved_before_the_gate_prior_load_without_it():
    from amoebasearch.errors import UsageError

    assert SMoLConfig.from_dict({"num_loras": 5, "top_k": 2, "rank": 4}).prior == 0.0
    assert SMoLConfig.from_dict({"num_loras": 5, "top_k": 2, "rank": 4}).shared is False
    assert SMoLConfig.from_dict(SMoLConfig(rank=4).to_dict()).shared is True
    assert SMoLConfig.from_dict(SMoLConfig(rank=4).to_dict()).prior == SMoLConfig.prior
    with pytest.raises(UsageError):
        SMoLConfig(prior=-1.0)


def test_routed_only_mixture_selects_exactly_k_and_a_single_lora_is_not_doubled():
    """``shared=False`` is the paper's mixture (k LoRAs, weights summing to 1); with one LoRA there
    is nothing to share beside it, so --no-smol stays one plain LoRA."""
    smol = randomise(SMoLModel(tiny_model(), SMoLConfig(num_loras=5, top_k=2, rank=4, shared=False)))
    with torch.no_grad():
        route = smol.route(ShapeSpace(smol.dims).smallest())
    assert route.index.numel() == 2 and not route.shared and torch.equal(route.routed, route.index)
    assert float(route.weight.sum()) == pytest.approx(1.0)
    assert all(layer.lora_A.shape[0] == 5 for _, layer in smol.smol_layers())
    single = SMoLConfig(num_loras=1, top_k=1, rank=4)
    assert single.shared is False and single.slots == 1


def test_the_shared_lora_learns_from_every_shape():
    smol = randomise(SMoLModel(tiny_model(), SMoLConfig(num_loras=5, top_k=1, rank=4, prior=4.0)))
    space = ShapeSpace(smol.dims, ffn_step=32)
    for shape in (space.largest(), space.smallest()):
        smol.zero_grad(set_to_none=True)
        smol(shape, torch.randint(0, 97, (1, 8))).square().mean().backward()
        layer = dict(smol.smol_layers())["model.layers.0.self_attn.q_proj"]
        norms = layer.lora_A.grad.flatten(1).norm(dim=1)
        assert norms[5] > 0 and int((norms[:5] > 0).sum()) == 1


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("loras, shared", [(4, True), (4, False), (1, False)])
def test_a_shape_as_a_peft_adapter_loads_in_peft_and_equals_the_merged_export(tmp_path, family, loras, shared):
    """`export --adapter`: the sliced base plus one standard LoRA that `PeftModel.from_pretrained`
    loads; its logits equal the merged export's (and the elastic SMoL forward's)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from amoebasearch.train.peft_adapter import ADAPTER_DIR, save_adapter_export

    base = tiny_model(family)
    dims = ModelDims.from_config(base.config)
    config = SMoLConfig(num_loras=loras, top_k=min(2, loras), rank=4, shared=shared)
    smol = randomise_plain(randomise(SMoLModel(base, config, shuffled_ordering(dims)))).eval()
    space = ShapeSpace(dims, smol.ordering, ffn_step=32)
    ids = torch.randint(0, 97, (2, 12))
    for number, shape in enumerate([space.shape(3, 2, 96), space.largest()]):
        out = save_adapter_export(smol, shape, tmp_path / f"export-{number}")
        adapter_config = json.loads((out / ADAPTER_DIR / "adapter_config.json").read_text())
        assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == (min(2, loras) + shared) * 4
        assert (out / ADAPTER_DIR / "adapter_model.safetensors").is_file()
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out), out / ADAPTER_DIR).eval()
        with torch.no_grad():
            with smol.merged(shape) as merged:
                merged_logits = extract(merged, shape, smol.ordering)(input_ids=ids).logits
            adapter_logits = peft_model(input_ids=ids).logits
            assert (adapter_logits - merged_logits).abs().max() <= 1e-4, f"{family} {shape}"
            assert (adapter_logits - smol(shape, ids)).abs().max() <= 1e-4
            plain = AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
        assert (plain - adapter_logits).abs().max() > 1e-3  # the adapter does change the sliced base


def test_evaluation_routes_each_shape_without_gate_noise():
    """Outside training the gate picks its plain top-k: the same shape gives the same route and the
    same logits every time, whatever the global random state (evaluation, search and export rely on it)."""
    smol = randomise(SMoLModel(tiny_model(), SMoLConfig(num_loras=5, top_k=2, rank=4, noise=5.0))).eval()
    shape, ids = Shape((0, 2, 3), 2, 64), torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        first_route, first = smol.route(shape), smol(shape, ids)
        torch.manual_seed(123)
        second_route, second = smol.route(shape), smol(shape, ids)
        noisy = {tuple(smol.route(shape, noisy=True).index.tolist()) for _ in range(20)}
    assert torch.equal(first_route.index, second_route.index) and torch.equal(first_route.weight, second_route.weight)
    assert torch.equal(first, second)
    assert len(noisy) > 1  # the training route does explore


def randomise_plain(smol: SMoLModel, seed: int = 1) -> SMoLModel:
    """Non-zero B matrices in a plain LoRA's peft layers."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in smol.peft_layers():
            weight = layer.lora_B["default"].weight
            weight.copy_(0.05 * torch.randn(weight.shape, generator=gen))
    return smol


def test_the_plain_lora_is_a_standard_peft_lora_that_peft_loads(tmp_path):
    """`train --no-smol`: peft's own LoRA layers (LoraConfig + injection), sliced per shape by the
    elastic forward, merged for export, and saved as a directory `PeftModel.from_pretrained` loads."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    base = tiny_model()
    dims = ModelDims.from_config(base.config)
    smol = randomise_plain(SMoLModel(base, SMoLConfig(num_loras=1, top_k=1, rank=4), shuffled_ordering(dims))).eval()
    layers = projections(decoder_layers(smol.base)[0])
    assert all(isinstance(layer, LoraLayer) for layer in layers.values()) and not smol.smol_layers()
    assert all(p.requires_grad == ("lora_" in n) for n, p in smol.base.named_parameters())
    space = ShapeSpace(dims, smol.ordering, ffn_step=32)
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        for shape in [space.largest(), space.shape(3, 2, 96), space.smallest()]:
            with smol.merged(shape) as merged:
                exported = extract(merged, shape, smol.ordering)(input_ids=ids).logits
            assert (exported - smol(shape, ids)).abs().max() <= 1e-4, shape
        smol.save_adapter(tmp_path)
        config = json.loads((tmp_path / "smol_config.json").read_text())
        assert config["adapter_format"] == "peft-lora" and (tmp_path / "adapter_model.safetensors").is_file()
        plain_base = tiny_model()
        plain_base.load_state_dict({k: v for k, v in base.state_dict().items() if "lora_" not in k}, strict=False)
        peft_model = PeftModel.from_pretrained(plain_base, tmp_path).eval()
        assert (peft_model(input_ids=ids).logits - smol(space.largest(), ids)).abs().max() <= 1e-5
        again = SMoLModel.from_adapter(tiny_model(), tmp_path, smol.ordering)
        assert torch.equal(again(space.largest(), ids), smol(space.largest(), ids))
