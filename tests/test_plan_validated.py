"""Validated depth selection: per depth, a baseline's set or the DP's where it holds on validation chunks."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_model
from plan_helpers import PROSE, tiny_checkpoint_with_tokenizer

from amoebasearch.cli import main
from amoebasearch.errors import UsageError
from amoebasearch.plan.depth import DepthSelection
from amoebasearch.plan.evaluate import SubsetScorer
from amoebasearch.plan.select import select_depth
from amoebasearch.plan.validated import choose_on_validation, dp_holds, split_in_two


def test_the_calibration_best_set_loses_where_it_does_not_hold_on_validation_text():
    """The DP's sets are its best on the fit chunks (metric_values), but only at 1 removed do they
    hold on validation chunks by more than the noise; at 2 removed the DP is worse there, at 3 it is
    lower on average only through one chunk. Elsewhere the better baseline's set is kept."""
    dp = DepthSelection("dp", {0: (), 1: (3,), 2: (3, 4), 3: (2, 3, 4)}, metric_values={1: 0.1, 2: 0.2, 3: 0.3})
    bi = DepthSelection("bi", {0: (), 1: (1,), 2: (1, 4), 3: (1, 2, 4)})
    ppl = DepthSelection("ppl", {0: (), 1: (1,), 2: (1, 3), 3: (1, 3, 4)})
    losses = {(): [2.0, 2.0, 2.0, 2.0], (3,): [2.1, 2.2, 2.1, 2.2], (1,): [2.3, 2.4, 2.3, 2.4],
              (3, 4): [3.0, 3.1, 3.0, 3.1], (1, 4): [2.6, 2.7, 2.6, 2.7], (1, 3): [2.7, 2.8, 2.7, 2.8],
              (2, 3, 4): [2.0, 2.0, 2.0, 4.6], (1, 2, 4): [3.0, 3.0, 3.0, 3.0],
              (1, 3, 4): [3.1, 3.1, 3.1, 3.1]}  # fmt: skip

    def chunk_losses(removed):
        return torch.tensor(losses[removed], dtype=torch.float64)

    chosen = choose_on_validation({"bi": bi, "ppl": ppl}, dp, chunk_losses)
    assert chosen.method == "validated"
    assert chosen.removal == {0: (), 1: (3,), 2: (1, 4), 3: (1, 2, 4)}
    assert chosen.chosen_from == {0: "bi", 1: "dp", 2: "bi", 3: "bi"}  # ties go to the baseline named first
    assert chosen.validation[2] == pytest.approx({"bi": math.exp(2.65), "ppl": math.exp(2.75), "dp": math.exp(3.05)})
    assert chosen.validation[3]["dp"] < chosen.validation[3]["bi"]  # lower on average, yet not kept
    assert chosen.metric_values[1] == pytest.approx(math.exp(2.15))
    assert dp_holds(torch.tensor([1.0]), torch.tensor([1.5])) and not dp_holds(torch.tensor([1.5]), torch.tensor([1.5]))


def test_the_fit_and_validation_halves_are_disjoint_and_cover_the_calibration_chunks():
    chunks = torch.arange(7 * 4).view(7, 4)
    fit, validation = split_in_two(chunks)
    assert (len(fit), len(validation)) == (3, 4)
    rows = [tuple(row) for row in fit.tolist()] + [tuple(row) for row in validation.tolist()]
    assert sorted(rows) == sorted(tuple(row) for row in chunks.tolist())  # every chunk in exactly one half
    with pytest.raises(UsageError, match="at least 2 calibration chunks"):
        split_in_two(chunks[:1])


def test_validated_selection_on_a_tiny_model_keeps_the_baselines_a_user_gets():
    model = tiny_model("llama", num_hidden_layers=6)
    chunks = torch.randint(0, 97, (6, 12), generator=torch.Generator().manual_seed(0))
    chosen = select_depth(model, chunks, "validated", "kl", max_remove=3, batch_size=2, split_ends=False)
    baselines = {method: select_depth(model, chunks, method, max_remove=3, batch_size=2) for method in ("bi", "ppl")}
    fit, validation = split_in_two(chunks)
    paper_dp_on_fit = select_depth(model, fit, "dp", "kl", max_remove=3, batch_size=2, split_ends=False)
    scorer = SubsetScorer(model, validation, batch_size=2)
    for m in range(1, 4):
        row, source = chosen.validation[m], chosen.chosen_from[m]
        assert set(row) == {"dp", "bi", "ppl"}
        expected = paper_dp_on_fit if source == "dp" else baselines[source]
        assert chosen.removal[m] == expected.removal[m]
        assert row[source] == pytest.approx(scorer(chosen.removal[m]), rel=1e-5)
        if source != "dp":
            assert row[source] == min(row["bi"], row["ppl"])


def test_search_dtype_runs_on_a_copy():
    model = tiny_model("llama", num_hidden_layers=4)
    chunks = torch.randint(0, 97, (4, 12), generator=torch.Generator().manual_seed(2))
    chosen = select_depth(model, chunks, "validated", "kl", max_remove=2, batch_size=2, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.float32
    assert sorted(chosen.removal) == [0, 1, 2]


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
    assert "validation perplexity per depth" in printed and "chosen" in printed
    plan = json.loads(out.read_text())
    assert plan["depth_method"] == "validated"
    per_depth = plan["metrics"]["depth_validation"]
    assert sorted(per_depth, key=int) == ["1", "2", "3", "4"]
    for scores in per_depth.values():
        assert scores["chosen"] == "dp" or scores[scores["chosen"]] == min(scores["bi"], scores["ppl"])
