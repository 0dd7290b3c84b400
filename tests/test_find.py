"""`amoebasearch find` end to end on a tiny checkpoint with a hand-made latency table."""

import json

import optuna
import pandas as pd
import pytest
import table_helpers
from plan_helpers import PROSE, tiny_checkpoint_with_tokenizer
from transformers import AutoModelForCausalLM

from amoebasearch.cli import main
from amoebasearch.errors import UsageError
from amoebasearch.models import load_config
from amoebasearch.profile.table import load_table, validation_path
from amoebasearch.search.find import FindRequest, study_name_for
from amoebasearch.search.margin import Margin, budget_hit_rates, budget_margin, parse_margin
from amoebasearch.search.storage import open_storage


def fake_table(checkpoint, path, source="measured"):
    """The shared hand-made decode table (0.5 ms fixed + depth x block(heads, ffn)) for a tiny checkpoint."""
    return table_helpers.fake_table(load_config(str(checkpoint)), checkpoint.name, path, source=source)


@pytest.fixture
def setup(tmp_path):
    checkpoint = tiny_checkpoint_with_tokenizer(tmp_path / "tiny")
    data = tmp_path / "prose.txt"
    data.write_text("\n\n".join([PROSE] * 30))
    table = fake_table(checkpoint, tmp_path / "profiles" / "tiny-test-cpu-eager-float32.csv")
    return checkpoint, data, table


def find_args(setup, tmp_path, *extra):
    checkpoint, data, table = setup
    return [
        "find", "--model", str(checkpoint), "--data", str(data), "--profile", str(table),
        "--eval-tokens", "512", "--trials", "12", "--out", str(tmp_path / "run"), "--json", *extra,
    ]  # fmt: skip


def test_find_respects_budget_caches_quality_and_exports(setup, tmp_path, capsys):
    capsys.readouterr()
    assert main(find_args(setup, tmp_path, "--budget", "3ms", "--export", str(tmp_path / "sub"))) == 0
    report = json.loads(capsys.readouterr().out)
    best = report["best"]
    assert best["latency_ms"] <= 3.0 and report["table_source"] == "measured"
    assert report["evaluations"] >= 1 and all(c["latency_ms"] <= 3.0 for c in report["front"])
    assert json.loads((tmp_path / "run" / "best_shape.json").read_text()) == best["shape"]
    front = pd.read_csv(tmp_path / "run" / "pareto.csv")
    assert len(front) == len(report["front"]) and {"depth", "heads", "ffn", "latency_ms", "quality"} <= set(front)
    assert front["latency_ms"].is_monotonic_increasing and front["quality"].is_monotonic_decreasing
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "sub")
    assert exported.config.num_hidden_layers == len(best["shape"]["layers"])

    # A new budget reuses every quality already measured: same seed, same proposals, no evaluation.
    assert main(find_args(setup, tmp_path, "--budget", "3ms", "--study", "again")) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["evaluations"] == 0 and again["best"] == best


def test_estimated_table_warns(setup, tmp_path, capsys):
    checkpoint, data, _ = setup
    estimated = fake_table(checkpoint, tmp_path / "est" / "tiny-a5000-roofline-bfloat16.csv", source="estimated")
    capsys.readouterr()
    assert main(find_args((checkpoint, data, estimated), tmp_path, "--budget", "5ms", "--trials", "3")) == 0
    assert "ESTIMATED" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--budget", "0.1ms"), "infeasible"),
        (("--budget", "fast"), "is not a latency"),
        (("--budget=-3ms",), "is not a latency"),
        (("--budget", "0ms"), "must be a positive latency"),
        (("--budget", "3ms", "--phase", "prefill"), "no complete rows for prefill"),
        (("--budget", "3ms", "--storage", "redis://x"), "not understood"),
        (("--budget", "3ms", "--device", "tpu"), "unknown device 'tpu'"),
        (("--budget", "3ms", "--device", "cuda:x"), "write cuda:N"),
    ],
)
def test_bad_find_inputs_are_one_line_errors(setup, tmp_path, capsys, extra, message):
    capsys.readouterr()
    assert main(find_args(setup, tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_bad_data_file_found_inside_a_trial_is_still_one_line(setup, tmp_path, capsys):
    # the data file is first read by the first quality evaluation, inside an Optuna trial
    binary = tmp_path / "binary.json"
    binary.write_bytes(bytes(range(256)) * 8)
    capsys.readouterr()
    assert main(find_args(setup, tmp_path, "--budget", "3ms", "--data", str(binary))) == 2
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("amoebasearch")]  # not transformers' load bar
    assert "Traceback" not in out + err and len(errors) == 1 and "is not UTF-8 text" in errors[0]


def test_a_search_whose_trials_all_overrun_returns_the_fastest_shape(setup, tmp_path, capsys):
    capsys.readouterr()
    argv = find_args(setup, tmp_path, "--budget", "1ms", "--trials", "1", "--sampler", "brute", "--margin", "0")
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["best"]["latency_ms"] == report["fastest_ms"] <= 1.0 and report["trials"] == 1


def test_missing_table_says_which_profile_command_to_run(setup, tmp_path, capsys):
    checkpoint, data, _ = setup
    capsys.readouterr()
    code = main(["find", "--model", str(checkpoint), "--budget", "3ms", "--profiles", str(tmp_path / "none")])
    assert code == 2
    assert "amoebasearch profile --device cpu --runtime eager" in capsys.readouterr().err


def test_verify_measures_the_chosen_subnet(setup, tmp_path, capsys):
    capsys.readouterr()
    assert main(find_args(setup, tmp_path, "--budget", "3ms", "--trials", "4", "--verify")) == 0
    verify = json.loads(capsys.readouterr().out)["verify"]
    assert verify["measured_ms"] > 0 and verify["repeats"] >= 20
    assert verify["p10_ms"] <= verify["measured_ms"] <= verify["p90_ms"]
    rounds = verify["round_medians_ms"]  # repeated rounds; the quietest one is reported
    assert 1 <= len(rounds) <= 3 and verify["measured_ms"] == min(rounds)
    # measured under the allocation policy its table was measured with
    table = json.loads(setup[2].with_suffix(".json").read_text())
    recorded = table["settings"].get("malloc", "default")
    assert verify["malloc"].startswith(recorded.split(";")[0])


def choice_file(path, count=12):
    """Multiple-choice items over the prose (the tiny random model answers at about chance)."""
    words = PROSE.split()
    lines = []
    for i in range(count):
        context = " ".join(words[i : i + 6])
        endings = [" ".join(words[j : j + 2]) for j in (i + 6, i + 20, i + 30)]
        lines.append(json.dumps({"context": context, "endings": endings, "label": 0}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_find_accuracy_maximises_and_keeps_its_own_cache(setup, tmp_path, capsys):
    checkpoint, data, table = setup
    items = choice_file(tmp_path / "items.jsonl")
    accuracy_args = find_args((checkpoint, items, table), tmp_path, "--budget", "3ms", "--metric", "accuracy")
    capsys.readouterr()
    assert main(accuracy_args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metric"] == "accuracy" and report["best"]["latency_ms"] <= 3.0
    assert all(0.0 <= c["quality"] <= 1.0 for c in report["front"])
    assert report["best"]["quality"] == max(c["quality"] for c in report["front"])
    front = pd.read_csv(tmp_path / "run" / "pareto.csv")  # same columns; quality now rises with latency
    assert front["latency_ms"].is_monotonic_increasing and front["quality"].is_monotonic_increasing

    assert main(find_args(setup, tmp_path, "--budget", "3ms", "--trials", "4")) == 0  # ppl, same storage
    ppl = json.loads(capsys.readouterr().out)
    assert ppl["metric"] == "ppl" and ppl["evaluations"] >= 1 and ppl["best"]["quality"] > 1.0
    names = optuna.get_all_study_names(open_storage(ppl["storage"]))
    caches = [name for name in names if name.startswith("amoebasearch-quality-")]
    assert len(caches) == 2  # one quality cache per metric: ppl and accuracy never mix

    text_args = [a for a in accuracy_args if a != "--json"] + ["--study", "text"]
    assert main(text_args) == 0
    out = capsys.readouterr().out
    assert f"multiple-choice accuracy {report['best']['quality']:.3f}" in out and "0 new quality" in out


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "is empty"),
        ([{"endings": ["a", "b"], "label": 0}], "has no context"),
        ([{"context": "x", "label": 0}], "has no endings"),
        ([{"context": "x", "endings": ["a"], "label": 0}], "needs at least 2"),
        ([{"context": "x", "endings": ["a", "b"], "label": 2}], "gold answer 2 for 2 endings"),
        ([{"context": "x", "endings": ["a", "b"], "answer": "E"}], "gold answer 'E'"),
        ([{"context": "x", "endings": ["a", "b"]}], "gold answer None"),
        (["not json"], "is not valid JSON"),
    ],
)
def test_bad_choice_files_are_one_line_errors(setup, tmp_path, capsys, lines, message):
    checkpoint, _, table = setup
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines))
    capsys.readouterr()
    assert main(find_args((checkpoint, path, table), tmp_path, "--budget", "3ms", "--metric", "accuracy")) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run" / "study.journal").exists()  # rejected before any search


def test_accuracy_data_must_be_jsonl(setup, tmp_path, capsys):
    capsys.readouterr()
    assert main(find_args(setup, tmp_path, "--budget", "3ms", "--metric", "accuracy")) == 2
    assert "is not a .jsonl file" in capsys.readouterr().err


def test_perplexity_cache_key_follows_the_data_file_contents(tmp_path):
    from amoebasearch.search.find import content_digest

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(PROSE)
    before = content_digest(str(corpus))
    corpus.write_text(PROSE + " An edited ending.")
    assert before and content_digest(str(corpus)) != before  # same path, new text: a new cache
    assert content_digest("kjv") == {}  # the embedded corpus is keyed by name


def validation_file(table, overruns, phase="decode"):
    """A validation file beside ``table``: held-out subnets measured ``overruns`` (fractions) over
    their prediction, plus calibration rows that run 50 % over and must not count."""
    rows = [
        {"split": "heldout", "phase": phase, "batch": 1, "context": 128, "predicted_us": 1000.0,
         "measured_us": 1000.0 * (1 + o)} for o in overruns
    ] + [
        {"split": "calibration", "phase": phase, "batch": 1, "context": 128, "predicted_us": 1000.0,
         "measured_us": 1500.0}
    ] * 5  # fmt: skip
    pd.DataFrame(rows).to_csv(validation_path(table), index=False)


def test_margin_is_the_95th_percentile_of_held_out_overruns(setup):
    _, _, table_path = setup
    table = load_table(table_path)
    assert budget_margin("auto", table, "decode", 1, 128).fraction == 0.0  # no validation file
    overruns = [i / 100 for i in range(-10, 11)]  # -10 % .. +10 %, 21 held-out subnets
    validation_file(table_path, overruns)
    margin = budget_margin("auto", table, "decode", 1, 128)
    assert margin.fraction == pytest.approx(0.09)  # pandas' linear 95th percentile of -0.10 .. 0.10
    assert margin.search_budget(10.9) == pytest.approx(10.0)
    assert budget_margin("auto", table, "prefill", 1, 128).fraction == 0.0  # no rows at that point
    assert budget_margin(0.02, table, "decode", 1, 128) == Margin(0.02, "given with --margin")
    validation_file(table_path, [-0.05] * 20)  # a predictor that only over-predicts needs no margin
    assert budget_margin("auto", table, "decode", 1, 128).fraction == 0.0
    validation_file(table_path, [0.2] * 9)  # too few held-out subnets to trust a 95th percentile
    assert budget_margin("auto", table, "decode", 1, 128).fraction == 0.0


@pytest.mark.parametrize(("text", "value"), [("3%", 0.03), ("3", 0.03), ("0", 0.0), (" .5% ", 0.005)])
def test_parse_margin_reads_percentages(text, value):
    assert parse_margin(text) == pytest.approx(value)
    assert parse_margin(" AUTO ") == "auto"


@pytest.mark.parametrize("text", ["x", "-3%", "100%", "5ms"])
def test_bad_margins_are_usage_errors(text):
    with pytest.raises(UsageError, match="margin"):
        parse_margin(text)


def test_find_searches_under_the_validated_margin(setup, tmp_path, capsys):
    _, _, table_path = setup
    validation_file(table_path, [0.10] * 20)  # every held-out subnet ran 10 % over its prediction
    capsys.readouterr()
    assert main(find_args(setup, tmp_path, "--budget", "3ms", "--trials", "6")) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out)
    assert report["margin_pct"] == pytest.approx(10.0) and report["search_budget_ms"] == pytest.approx(3 / 1.1)
    assert report["best"]["latency_ms"] * 1.1 <= 3.0 and "validation" in report["margin_source"]
    assert "miss the accuracy bar" in printed.err  # 20 subnets, all 10 % over: the user is told
    assert main(find_args(setup, tmp_path, "--budget", "3ms", "--trials", "6", "--margin", "0")) == 0
    whole = json.loads(capsys.readouterr().out)
    assert whole["margin_pct"] == 0 and whole["search_budget_ms"] == 3.0 and whole["study"] != report["study"]
    # a budget only the margin makes infeasible says so, and how to search the whole budget
    # (the fastest subnet takes 1 ms: 1.05 ms fits it, 1.05 ms less 10 % does not)
    assert main(find_args(setup, tmp_path, "--budget", "1.05ms", "--trials", "3")) == 2
    err = capsys.readouterr().err
    assert "--margin 0" in err and "budget 1.05 ms less its 10.0% margin" in err
    assert main(find_args(setup, tmp_path, "--budget", "1.05ms", "--trials", "3", "--margin", "0")) == 0


def test_search_study_is_keyed_by_the_quality_source(setup):
    _, _, table_path = setup
    request = FindRequest(budget_ms=3.0)
    table, none = load_table(table_path), Margin(0.0, "given")
    assert study_name_for(request, table, "aaaa", none) == study_name_for(request, table, "aaaa", none)
    assert study_name_for(request, table, "aaaa", none) != study_name_for(request, table, "bbbb", none)
    assert study_name_for(request, table, "aaaa", none) != study_name_for(request, table, "aaaa", Margin(0.05, "x"))


def test_budget_hit_rates_score_each_half_with_the_other_halfs_margin():
    overruns = [0.0, 0.1, 0.02, -0.05]  # subnets 0..3; halves {0, 2} and {1, 3}
    rows = pd.DataFrame(
        {
            "subnet": [3, 1, 2, 0],
            "predicted_us": 1000.0,
            "measured_us": [1000.0 * (1 + overruns[i]) for i in (3, 1, 2, 0)],
        }
    )
    rates = budget_hit_rates(rows)
    assert rates["met_no_margin"] == 0.5  # subnets 0 (exactly on) and 3
    # {0, 2} under {1, 3}'s margin (95th pct of -5 %, +10 % = 9.25 %): both met; {1, 3} under 1.9 %: only 3
    assert rates["met_auto_margin"] == 0.75
    assert rates["cross_margin_pct"] == pytest.approx((9.25 + 1.9) / 2)


def test_a_bad_margin_on_the_command_line_says_how_to_write_one(setup, tmp_path, capsys):
    capsys.readouterr()
    assert main(find_args(setup, tmp_path, "--budget", "3ms", "--margin", "150%")) == 2
    err = capsys.readouterr().err.strip()
    assert "percentage below 100" in err and len(err.splitlines()) == 1


def test_find_refuses_a_table_of_this_cpu_at_other_threads(setup, tmp_path, capsys):
    """A table timed on this very CPU at another thread count than the runtime's default here is
    refused unless --threads asks for that count; the report says the threads it priced at."""
    from amoebasearch.profile.fingerprint import cpu_fingerprint
    from amoebasearch.profile.runtimes import default_threads

    other = default_threads("eager") + 1
    table = load_table(setup[2])
    table.meta["device"] = dict(cpu_fingerprint(), threads_used=other)
    table.meta["settings"]["threads"] = other
    table.save(setup[2])
    capsys.readouterr()
    assert main(find_args(setup, tmp_path, "--budget", "3ms", "--trials", "2")) == 2
    assert f"pass --threads {other}" in capsys.readouterr().err
    assert main(find_args(setup, tmp_path, "--budget", "3ms", "--trials", "2", "--threads", str(other))) == 0
    assert json.loads(capsys.readouterr().out)["threads"] == other


def test_find_instruct_scores_the_pairs_train_never_reads(setup, tmp_path, capsys):
    from amoebasearch.data import pad_token
    from amoebasearch.elastic import elastic_logits
    from amoebasearch.models import load
    from amoebasearch.quality import response_perplexity
    from amoebasearch.shape import Shape
    from amoebasearch.train.instruct import held_out_pairs, held_out_split, read_examples

    checkpoint, _, table = setup
    words = PROSE.split()
    records = [
        {"instruction": " ".join(words[i : i + 5]), "output": " ".join(words[i + 5 : i + 12])} for i in range(40)
    ]
    pairs_file = tmp_path / "pairs.json"
    pairs_file.write_text(json.dumps(records))
    train_part, held = held_out_split(read_examples(pairs_file))
    assert len(held) == 4 and train_part + held == read_examples(pairs_file)  # the last tenth, disjoint

    capsys.readouterr()
    args = find_args((checkpoint, pairs_file, table), tmp_path, "--budget", "3ms", "--metric", "instruct")
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metric"] == "instruct" and report["best"]["latency_ms"] <= 3.0
    assert report["best"]["quality"] == min(c["quality"] for c in report["front"])

    loaded = load(str(checkpoint))  # the same number computed here, outside the search
    pairs = held_out_pairs(pairs_file, loaded.tokenizer, 256)
    shape = Shape.from_dict(report["best"]["shape"])
    expected = response_perplexity(elastic_logits(loaded.model), shape, pairs, pad_id=pad_token(loaded.tokenizer))
    assert report["best"]["quality"] == pytest.approx(expected, rel=1e-5)


def test_instruct_needs_instruction_pairs(setup, tmp_path, capsys):
    checkpoint, data, table = setup  # data: plain text
    assert main(find_args(setup, tmp_path, "--budget", "3ms", "--metric", "instruct")) == 2
    assert "plain text" in capsys.readouterr().err
