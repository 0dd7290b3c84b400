"""Validated depth selection: proposals fitted on one half of the calibration chunks, chosen on the other."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from plan_helpers import PROSE, tiny_checkpoint_with_tokenizer

from amoebasearch.cli import main
from amoebasearch.errors import UsageError
from amoebasearch.plan.depth import DepthSelection
from amoebasearch.plan.evaluate import SubsetScorer
from amoebasearch.plan.select import select_depth
from amoebasearch.plan.validated import choose_on_validation, split_for_validation


def test_the_calibration_best_set_loses_to_the_validation_best():
    """The DP's set fits the fit chunks (lowest calibration value) but is worse on validation text
    than block influence's at 2 removed; at 1 removed the DP's set also validates best and stays."""
    dp = DepthSelection("dp", {0: (), 1: (3,), 2: (3, 4)}, metric_values={0: 1.0, 1: 1.1, 2: 1.2})
    bi = DepthSelection("bi", {0: (), 1: (1,), 2: (1, 4)})
    ppl = DepthSelection("ppl", {0: (), 1: (3,), 2: (1, 3)})
    validation = {(): 10.0, (3,): 11.0, (1,): 12.0, (3, 4): 20.0, (1, 4): 14.0, (1, 3): 15.0}
    scored = []

    def score(removed):
        scored.append(removed)
        return validation[removed]

    chosen = choose_on_validation({"dp": dp, "bi": bi, "ppl": ppl}, score)
    assert chosen.method == "validated"
    assert chosen.removal == {0: (), 1: (3,), 2: (1, 4)}
    assert chosen.chosen_from == {0: "dp", 1: "dp", 2: "bi"}  # ties go to the source named first
    assert chosen.validation[2] == {"dp": 20.0, "bi": 14.0, "ppl": 15.0}
    assert chosen.metric_values == {0: 10.0, 1: 11.0, 2: 14.0}
    assert len(scored) == len(set(scored))  # a set proposed twice is scored once


def test_runners_up_compete_too():
    dp = DepthSelection("dp", {0: (), 1: (2,)})
    bi = DepthSelection("bi", {0: (), 1: (0,)})
    chosen = choose_on_validation(
        {"dp": dp, "bi": bi}, lambda r: {(): 1, (2,): 3, (0,): 4, (1,): 2}[r], {1: {"dp#2": (1,)}}
    )
    assert chosen.removal[1] == (1,) and chosen.chosen_from[1] == "dp#2"


def test_the_validation_chunks_are_disjoint_from_the_fit_chunks():
    chunks = torch.arange(8 * 4).view(8, 4)
    fit, validation = split_for_validation(chunks)
    assert len(fit) == len(validation) == 4
    rows = {tuple(row) for row in fit.tolist()} | {tuple(row) for row in validation.tolist()}
    assert len(rows) == 8  # every chunk in exactly one part
    assert split_for_validation(chunks[:3])[1].shape[0] in (1, 2)
    with pytest.raises(UsageError, match="at least 2 calibration chunks"):
        split_for_validation(chunks[:1])


def test_validated_selection_on_a_tiny_model_never_loses_on_its_validation_text():
    model = tiny_model("llama", num_hidden_layers=6)
    chunks = torch.randint(0, 97, (6, 12), generator=torch.Generator().manual_seed(0))
    chosen = select_depth(model, chunks, "validated", "kl", max_remove=3, batch_size=2)
    _, validation = split_for_validation(chunks)
    scorer = SubsetScorer(model, validation, batch_size=2)
    for m in range(1, 4):
        row = chosen.validation[m]
        assert {"dp", "bi", "ppl"} <= set(row)
        assert row[chosen.chosen_from[m]] == min(row.values()) == pytest.approx(scorer(chosen.removal[m]))
        assert len(chosen.removal[m]) == m


def test_the_paper_recurrence_is_still_selectable():
    """`--method dp --no-split-ends --beam 1` is the paper's DP on all calibration chunks, and it
    differs from validated selection only in what the sets are fitted and chosen on."""
    model = tiny_model("llama", num_hidden_layers=5)
    chunks = torch.randint(0, 97, (4, 12), generator=torch.Generator().manual_seed(1))
    paper = select_depth(model, chunks, "dp", "perplexity", max_remove=2, batch_size=2, beam=1, split_ends=False)
    assert paper.method == "dp" and not paper.validation
    scorer = SubsetScorer(model, chunks, batch_size=2)
    assert paper.metric_values[1] == pytest.approx(min(scorer((layer,)) for layer in range(5)))


def test_plan_cli_validated_prints_the_per_depth_table(tmp_path, capsys):
    checkpoint = tiny_checkpoint_with_tokenizer(tmp_path / "tiny")
    data = tmp_path / "prose.txt"
    data.write_text(PROSE)
    out = tmp_path / "plan.json"
    args = ["plan", "--model", str(checkpoint), "--data", str(data), "--tokens", "64", "--seq-len", "16",
            "--max-remove", "3", "--method", "validated", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "validation perplexity" in printed and "chosen" in printed
    plan = json.loads(out.read_text())
    assert plan["depth_method"] == "validated"
    per_depth = plan["metrics"]["depth_validation"]
    assert sorted(per_depth, key=int) == ["1", "2", "3", "4"]
    for scores in per_depth.values():
        assert scores[scores["chosen"]] == min(v for k, v in scores.items() if k != "chosen")
