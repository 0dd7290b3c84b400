"""Stage 1 on the real SmolLM2-135M and the embedded KJV corpus (small calibration, one removal)."""

from __future__ import annotations

import pytest
import torch

from amoebasearch.data import calibration_split
from amoebasearch.models import load
from amoebasearch.plan import PlanConfig, make_plan, select_depth
from amoebasearch.plan.evaluate import SubsetScorer


@pytest.mark.slow
def test_real_plan_one_removal_matches_the_one_shot_optimum():
    torch.set_num_threads(2)
    loaded = load()
    split = calibration_split(loaded.tokenizer, None, seq_len=128, calib_tokens=256, eval_tokens=0, seed=0)
    # the paper's DP alone, in the model's own dtype
    config = PlanConfig(depth_method="dp", metric="perplexity", max_remove=1, search_dtype=None)
    plan = make_plan(loaded.model, split, config)
    plan.ordering.validate(loaded.dims)
    one_shot = select_depth(loaded.model, split.calibration, "ppl", max_remove=1)
    # with one removal the DP scores every single-layer removal, so it equals the one-shot optimum
    assert plan.metrics["removed_layers"]["1"] == list(one_shot.removal[1])
    scorer = SubsetScorer(loaded.model, split.calibration)
    assert plan.metrics["depth_values"]["29"] == pytest.approx(scorer(one_shot.removal[1]), rel=1e-4)
    assert plan.metrics["depth_values"]["29"] < scorer((29,))  # beats dropping the last layer
