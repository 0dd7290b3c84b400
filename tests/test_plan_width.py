"""Width ranking: nested orderings, the importance formula, and plans that export consumes."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from plan_helpers import PROSE, tiny_checkpoint_with_tokenizer

from amoebasearch.cli import main
from amoebasearch.data import TextSplit
from amoebasearch.plan import PlanConfig, make_plan, select_width
from amoebasearch.plan.width import ffn_contribution, importance_scores
from amoebasearch.planfile import Plan
from amoebasearch.shape import ModelDims


@pytest.fixture(scope="module")
def chunks():
    return torch.randint(0, 97, (4, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["importance", "magnitude", "random"])
def test_orderings_are_nested_permutations(method, chunks):
    model = tiny_model("qwen2")
    dims = ModelDims.from_config(model.config)
    scores = select_width(model, chunks, method)
    head_order, ffn_order = scores.head_order(dims), scores.ffn_order()
    for layer in range(dims.num_layers):
        assert sorted(ffn_order[layer]) == list(range(dims.ffn))
        assert all(sorted(group) == list(range(dims.heads_per_group)) for group in head_order[layer])
        # a narrower width keeps a subset of a wider one's units
        kept = [set(ffn_order[layer][:k]) for k in range(1, dims.ffn + 1)]
        assert all(a <= b for a, b in zip(kept, kept[1:], strict=False))
        # most important first
        ffn = scores.ffn[layer]
        assert all(ffn[a] >= ffn[b] for a, b in zip(ffn_order[layer], ffn_order[layer][1:], strict=False))


def test_ffn_score_is_the_norm_of_the_channel_contribution():
    torch.manual_seed(0)
    activations = torch.randn(50, 8)  # tokens x channels
    down = torch.randn(6, 8)  # hidden x channels
    score = ffn_contribution(activations.pow(2).sum(0), down)
    for j in range(8):
        contribution = torch.outer(activations[:, j], down[:, j])
        assert score[j] == pytest.approx(contribution.norm().item(), rel=1e-4)


def test_importance_ranks_a_dead_channel_and_head_last(chunks):
    model = tiny_model("llama")
    dims = ModelDims.from_config(model.config)
    with torch.no_grad():
        layer = model.model.layers[1]
        layer.mlp.down_proj.weight[:, 5] = 0
        layer.self_attn.o_proj.weight[:, dims.head_dim * 3 : dims.head_dim * 4] = 0  # head 3 = group 1, local 1
    scores = importance_scores(model, chunks)
    assert scores.ffn_order()[1][-1] == 5
    assert scores.head_order(dims)[1][1] == (0, 1)


def test_make_plan_round_trip_and_export_uses_it(tmp_path, chunks, capsys):
    checkpoint = tiny_checkpoint_with_tokenizer(tmp_path / "tiny")
    data = tmp_path / "prose.txt"
    data.write_text(PROSE)
    out = tmp_path / "plan.json"
    code = main(["plan", "--model", str(checkpoint), "--data", str(data), "--tokens", "48", "--seq-len", "16",
                 "--max-remove", "3", "--out", str(out)])  # fmt: skip
    assert code == 0 and out.is_file()
    assert not (tmp_path / "plan.json.dp-checkpoint.json").exists()
    plan = Plan.load(out, tiny_model("llama").config)
    assert plan.depth_method == "validated" and plan.width_method == "importance"
    assert sorted(plan.ordering.layer_sets) == [1, 2, 3, 4]
    assert plan.calibration["calibration_tokens"] == 48 and plan.metrics["depth_metric"] == "kl"
    assert set(plan.metrics["depth_values"]) == {"1", "2", "3", "4"}

    export_dir = tmp_path / "sub"
    code = main(["export", "--model", str(checkpoint), "--plan", str(out), "--depth", "2", "--ffn", "64",
                 "--out", str(export_dir)])  # fmt: skip
    assert code == 0
    shape = json.loads((export_dir / "amoebasearch-shape.json").read_text())
    assert shape["layers"] == list(plan.ordering.layer_sets[2]) and shape["ffn"] == 64


def test_make_plan_library_call(chunks):
    model = tiny_model("mistral")
    split = TextSplit(chunks, chunks[:0], {"data": "random ids"})
    plan = make_plan(model, split, PlanConfig(depth_method="bi", width_method="magnitude", max_remove=2))
    assert sorted(plan.ordering.layer_sets) == [2, 3, 4]
    assert len(plan.metrics["layer_scores"]) == 4
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.ordering == plan.ordering
