"""lm-evaluation-harness tasks as the quality metric: the adapter scores as lm-eval's own Hugging Face
model and as the project's multiple-choice scorer, `find --metric lm-eval` runs offline end to end,
the shipped cloze task loads in plain lm-eval, and bad task names are one-line errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from conftest import tiny_model
from plan_helpers import PROSE, char_tokenizer, counting_logits, tiny_checkpoint_with_tokenizer
from table_helpers import fake_table
from test_train_smol import shuffled_ordering
from transformers import AutoModelForCausalLM

from amoebasearch import models
from amoebasearch.cli import main
from amoebasearch.data import ChoiceItem, cloze_items, read_documents
from amoebasearch.elastic import elastic_logits
from amoebasearch.models import load_config
from amoebasearch.quality import LMEvalQuality, LMEvalTasks, MultipleChoiceAccuracy, encode_items
from amoebasearch.quality.lm_eval_model import ShapeLM, context_length
from amoebasearch.search.cache import QualityCache
from amoebasearch.search.evaluate import CLOZE_TASK, write_cloze_task
from amoebasearch.search.find import CLOZE
from amoebasearch.search.storage import open_storage
from amoebasearch.shape import ModelDims, Shape, ShapeSpace

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
os.environ.update(OFFLINE)  # local JSON tasks need no network; nothing here may reach for one


def prose_items(count: int, context_words: int = 5) -> list[ChoiceItem]:
    """Items over the prose with endings of 1-3 words, so acc, acc_norm and the per-token mean differ."""
    words = PROSE.split()
    items = []
    for i in range(count):
        context = " ".join(words[i : i + context_words + i % 4])
        endings = [" ".join(words[j : j + 1 + (k + i) % 3]) for k, j in enumerate((i + 9, i + 20, i + 31, i + 40))]
        items.append(ChoiceItem(context, tuple(endings), i % 4))
    return items


def write_task(directory: Path, name: str, items: list[ChoiceItem], output_type: str = "multiple_choice") -> Path:
    """A local lm-eval task as a user writes one: JSONL data and a YAML naming it (`dataset_path: json`)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{name}.jsonl"
    records = [{"q": item.context, "options": list(item.endings), "gold": item.gold} for item in items]
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    metrics = {
        "multiple_choice": ("acc", "acc_norm"),
        "generate_until": ("exact_match",),
        "loglikelihood": ("perplexity",),
    }
    metric_list = "".join(
        f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n" for m in metrics[output_type]
    )
    (directory / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data.resolve()}\n"
        f"test_split: test\noutput_type: {output_type}\n"
        f"doc_to_text: q\ndoc_to_choice: options\ndoc_to_target: gold\nmetric_list:\n{metric_list}"
    )
    return directory


def accuracy(scores: list[torch.Tensor], items: list[ChoiceItem]) -> float:
    """The share of items whose gold choice scores highest."""
    return sum(int(row.argmax()) == item.gold for row, item in zip(scores, items, strict=True)) / len(items)


def per_item(results: dict, task: str) -> list[list[tuple[float, bool]]]:
    """Each item's (log-likelihood, is_greedy) per choice, in item order, from lm-eval's samples."""
    samples = sorted(results["samples"][task], key=lambda sample: sample["doc_id"])
    return [[tuple(resp) for resp in sample["filtered_resps"]] for sample in samples]


# ---------------------------------------------------------------- the adapter (tiny model)

VOCAB = 97
HIGH = 5.0


def test_scores_are_summed_continuation_logprobs_with_greedy_flags():
    from lm_eval.api.instance import Instance

    hit = HIGH - math.log(math.exp(HIGH) + VOCAB - 1)  # log-prob of the expected next token
    miss = -math.log(math.exp(HIGH) + VOCAB - 1)
    lm = ShapeLM(counting_logits(VOCAB, HIGH), char_tokenizer(), max_length=6, shape=Shape((0,), 1, 1), batch=2)
    pairs = [("ab", "cd"), ("ab", "ce"), ("abcdefghij", "k"), ("", "bc")]  # the third is cut to its last 6 tokens
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    # an empty context is conditioned on EOS (the tokenizer has no BOS), which "a" would follow, not "b"
    expected = [(2 * hit, True), (hit + miss, False), (hit, True), (miss + hit, False)]
    for (got, greedy), (want, want_greedy) in zip(lm.loglikelihood(requests), expected, strict=True):
        assert got == pytest.approx(want, abs=1e-5) and greedy == want_greedy
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("bcdefghijklmnopq",), 0)])
    assert rolling == pytest.approx([miss + 15 * hit], abs=1e-4)  # every token once, across 3 windows


@pytest.fixture
def tiny_tasks(tmp_path):
    items = prose_items(12)
    long = prose_items(3, context_words=40)  # contexts over the tiny model's 128 positions: cut from the left
    write_task(tmp_path / "tasks", "tiny_choice", items)
    write_task(tmp_path / "tasks", "tiny_long", long)
    return items, tmp_path / "tasks"


def test_the_adapter_is_lm_evals_hf_model_and_the_projects_own_scorer(tiny_tasks):
    from lm_eval.models.huggingface import HFLM

    items, directory = tiny_tasks
    model, tokenizer = tiny_model("llama"), char_tokenizer()
    dims = ModelDims.from_config(model.config)
    ordering = shuffled_ordering(dims)
    logits_fn = elastic_logits(model, ordering)
    tasks = LMEvalTasks(["tiny_choice", "tiny_long"], directory)
    lm = ShapeLM(logits_fn, tokenizer, context_length(model.config, tokenizer), Shape.full(dims), batch=3)

    # the full shape through the supernet is the model under lm-eval's own HFLM: same answers, same metrics
    ours = tasks.run(lm, samples=True)
    theirs = tasks.run(HFLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=4), samples=True)
    for task in ("tiny_choice", "tiny_long"):
        for mine, hf in zip(per_item(ours, task), per_item(theirs, task), strict=True):
            assert [greedy for _, greedy in mine] == [greedy for _, greedy in hf]
            assert torch.allclose(torch.tensor([ll for ll, _ in mine]), torch.tensor([ll for ll, _ in hf]), atol=1e-4)
        assert ours["results"][task] == theirs["results"][task]

    # a smaller shape: the same sums as `MultipleChoiceAccuracy` (its per-token means times token counts)
    shape = ShapeSpace(dims, ordering).shape(3, 2, 64)
    lm.shape = shape
    results = tasks.run(lm, samples=True)
    lls = [torch.tensor([ll for ll, _ in choices]) for choices in per_item(results, "tiny_choice")]
    encoded = encode_items(items, tokenizer)
    scorer = MultipleChoiceAccuracy(logits_fn, encoded, batch=5)
    token_counts = [torch.tensor([len(ending) for ending in item.endings], dtype=torch.float) for item in encoded]
    for got, means, counts in zip(lls, scorer.scores(shape), token_counts, strict=True):
        assert torch.allclose(got, means * counts, atol=1e-4)
    # so each normalisation gives the same accuracy from either scorer's numbers: per token (ours), per
    # character (lm-eval's acc_norm), none (acc)
    assert accuracy([ll / counts for ll, counts in zip(lls, token_counts, strict=True)], items) == scorer(shape)
    sums = [means * counts for means, counts in zip(scorer.scores(shape), token_counts, strict=True)]
    chars = [torch.tensor([float(len(ending)) for ending in item.endings]) for item in items]
    reported = results["results"]["tiny_choice"]
    assert reported["acc_norm,none"] == accuracy([total / n for total, n in zip(sums, chars, strict=True)], items)
    assert reported["acc,none"] == accuracy(sums, items)
    quality = LMEvalQuality(logits_fn, tokenizer, LMEvalTasks(["tiny_choice"], directory), 128)
    assert quality(shape) == reported["acc_norm,none"]


def test_the_cache_key_follows_the_task_files_and_names(tiny_tasks, tmp_path):
    items, directory = tiny_tasks
    settings = LMEvalTasks(["tiny_choice", "tiny_long"], directory, 8).settings
    assert LMEvalTasks(["tiny_long", "tiny_choice"], directory, 8).settings == settings  # the mean ignores order
    assert LMEvalTasks(["tiny_choice"], directory, 8).settings != settings
    assert LMEvalTasks(["tiny_choice", "tiny_long"], directory, 9).settings["items"] == 9
    write_task(directory, "tiny_choice", items[:-1])  # an edited task is a new task
    assert LMEvalTasks(["tiny_choice", "tiny_long"], directory, 8).settings != settings
    # a group that re-configures a task under the task's own name keeps that task's scores apart
    (directory / "tiny_group.yaml").write_text("group: tiny_group\ntask:\n  - task: tiny_choice\n    num_fewshot: 2\n")
    grouped = LMEvalTasks(["tiny_group"], directory, 8)
    assert list(grouped.tasks) == ["tiny_choice"]
    assert grouped.task_settings("tiny_choice") != LMEvalTasks(["tiny_choice"], directory, 8).task_settings(
        "tiny_choice"
    )


def test_a_task_scored_in_one_set_of_tasks_is_read_in_another(tiny_tasks):
    """Each task's score per shape is cached under the task's own key: a search over (A, B) after
    one over (A) scores only B, and its mean is what scoring both afresh gives."""
    _, directory = tiny_tasks
    model, tokenizer = tiny_model("llama"), char_tokenizer()
    dims = ModelDims.from_config(model.config)
    logits_fn = elastic_logits(model)
    shape = ShapeSpace(dims).shape(3, 2, 64)
    alone, both = LMEvalTasks(["tiny_choice"], directory, 8), LMEvalTasks(["tiny_choice", "tiny_long"], directory, 8)
    assert alone.task_settings("tiny_choice") == both.task_settings("tiny_choice")  # one key in any set
    storage = optuna.storages.InMemoryStorage()
    caches = {name: QualityCache(storage, name) for name in ("tiny_choice", "tiny_long")}

    first = LMEvalQuality(logits_fn, tokenizer, alone, 128, caches=caches)
    choice = first(shape)
    assert first.scored == 1 and caches["tiny_choice"].get(shape) == choice
    second = LMEvalQuality(logits_fn, tokenizer, both, 128, caches=caches)
    mean = second(shape)
    assert second.scored == 1 and caches["tiny_long"].get(shape) is not None  # only the new task ran
    fresh = LMEvalQuality(logits_fn, tokenizer, both, 128)
    assert mean == pytest.approx(fresh(shape), abs=1e-12) and fresh.scored == 2
    assert second(shape) == mean and second.scored == 1  # both cached now: nothing scored


# ---------------------------------------------------------------- the shipped cloze task


def test_the_shipped_cloze_task_loads_in_lm_evals_task_manager(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager, get_task_dict

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the YAML finds its data from any working directory
    assert main(["eval", "--write-task", str(tmp_path / "cloze"), "--eval-items", "10", "--json"]) == 0
    manager = TaskManager(include_path=str(tmp_path / "cloze"), include_defaults=False)
    task = get_task_dict([CLOZE_TASK], manager)[CLOZE_TASK]
    docs = list(task.eval_docs)
    items = cloze_items(read_documents(None), 10, seed=0, **CLOZE)
    assert len(docs) == 10 and task.OUTPUT_TYPE == "multiple_choice"
    assert [(d["context"], tuple(d["endings"]), d["label"]) for d in docs] == [
        (i.context, i.endings, i.gold) for i in items
    ]
    assert task.doc_to_choice(docs[0]) == list(items[0].endings) and task.doc_to_target(docs[0]) == items[0].gold


# ---------------------------------------------------------------- bad input


@pytest.fixture
def tiny_find(tmp_path):
    checkpoint = tiny_checkpoint_with_tokenizer(tmp_path / "tiny")
    table = fake_table(
        load_config(str(checkpoint)), checkpoint.name, tmp_path / "profiles" / "tiny-cpu-eager-float32.csv"
    )
    tasks = write_task(tmp_path / "tasks", "tiny_choice", prose_items(6))
    write_task(tasks, "tiny_generate", prose_items(2), output_type="generate_until")
    write_task(tasks, "tiny_perplexity", prose_items(2), output_type="loglikelihood")
    base = ["--model", str(checkpoint), "--profile", str(table), "--budget", "3ms", "--out", str(tmp_path / "run")]
    return base, tasks


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--metric", "lm-eval", "--tasks", "no_such_task"), "unknown lm-eval task 'no_such_task'"),
        (("--metric", "lm-eval"), "--metric lm-eval needs --tasks T1,T2"),
        (("--metric", "lm-eval", "--tasks", "tiny_generate", "--tasks-dir", "T"), "generative tasks are not supported"),
        (("--metric", "lm-eval", "--tasks", "tiny_perplexity", "--tasks-dir", "T"), "reports neither acc_norm nor acc"),
        (("--metric", "lm-eval", "--tasks", "tiny_choice", "--tasks-dir", "nowhere"), "is not a folder"),
        (("--tasks", "tiny_choice"), "add --metric lm-eval"),
    ],
)
def test_bad_tasks_are_one_line_errors_before_any_search(tiny_find, tmp_path, capsys, extra, message):
    base, tasks = tiny_find
    extra = [str(tasks) if value == "T" else value for value in extra]
    capsys.readouterr()
    assert main(["find", *base, *extra]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("amoebasearch")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    if "unknown" in message:
        assert "`lm-eval ls tasks` lists them" in lines[0]
    assert not (tmp_path / "run" / "study.journal").exists()


def test_eval_scores_a_shape_of_a_plan_only_model(tiny_find, tmp_path, capsys):
    base, tasks = tiny_find
    checkpoint = base[1]
    argv = ["eval", "--model", checkpoint, "--tasks", "tiny_choice", "--tasks-dir", str(tasks), "--shape", "2/2/64"]
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (score,) = report["tasks"]
    assert (score["task"], score["metric"], score["items"]) == ("tiny_choice", "acc_norm", 6)
    loaded = models.load(checkpoint)
    shape = Shape((0, 1), 2, 64)
    direct = LMEvalQuality(elastic_logits(loaded.model), loaded.tokenizer, LMEvalTasks(["tiny_choice"], tasks), 128)
    assert report["shape"] == shape.to_dict() and report["quality"] == score["value"] == direct(shape)
    assert main(argv) == 0
    assert f"tiny_choice  acc_norm  {score['value']:.4f}      6" in capsys.readouterr().out
    for bad, message in [("2x2", "neither DEPTH/HEADS/FFN"), ("9/2/64", "not between 1 and"), ("2/3/64", "KV groups")]:
        assert main([*argv[:-1], bad]) == 2
        assert message in capsys.readouterr().err
    assert main(["eval", "--model", checkpoint]) == 2
    assert "no tasks: give --tasks" in capsys.readouterr().err


def test_a_supernet_shape_scores_as_its_exported_subnet_under_lm_evals_hf_model(tmp_path, tiny_checkpoint, capsys):
    from lm_eval.models.huggingface import HFLM
    from test_train_cli import RECORDS, add_word_tokenizer, train_args

    from amoebasearch.data import ALPACA_TEMPLATE
    from amoebasearch.train.supernet import load_supernet

    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(RECORDS))
    add_word_tokenizer(tiny_checkpoint, [ALPACA_TEMPLATE] + [v for r in RECORDS for v in r.values()])
    items = [
        ChoiceItem("Name a", ("colour.", "animal.", "number."), 0),
        ChoiceItem("Add the", ("numbers.", "sum is five.", "hello"), 0),
        ChoiceItem("Say", ("hello.", "Blue is a colour.", "The sum"), 0),
        ChoiceItem("A cat is", ("an animal.", "a colour.", "five."), 0),
    ]
    tasks = write_task(tmp_path / "tasks", "words", items)
    supernet, exported = tmp_path / "supernet", tmp_path / "subnet"
    assert main(train_args(tiny_checkpoint, data, supernet, "--steps", "2")) == 0
    shape_flags = ["--depth", "3", "--heads", "2", "--ffn", "64"]
    assert main(["export", "--supernet", str(supernet), *shape_flags, "--out", str(exported)]) == 0
    capsys.readouterr()
    flags = ["--tasks", "words", "--tasks-dir", str(tasks), "--json"]
    assert main(["eval", "--supernet", str(supernet), "--shape", "3/2/64", *flags]) == 0
    in_place = json.loads(capsys.readouterr().out)
    assert main(["eval", "--model", str(exported), *flags]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == in_place["tasks"]

    trained = load_supernet(supernet)
    shape = trained.space.shape(3, 2, 64)
    assert in_place["shape"] == shape.to_dict()
    suite = LMEvalTasks(["words"], tasks)
    ours = suite.run(ShapeLM(trained.smol, trained.loaded.tokenizer, 128, shape), samples=True)
    model = AutoModelForCausalLM.from_pretrained(exported)
    theirs = suite.run(HFLM(pretrained=model, tokenizer=trained.loaded.tokenizer, device="cpu"), samples=True)
    for mine, hf in zip(per_item(ours, "words"), per_item(theirs, "words"), strict=True):
        assert torch.allclose(torch.tensor([ll for ll, _ in mine]), torch.tensor([ll for ll, _ in hf]), atol=1e-4)


def test_lm_eval_is_imported_only_when_asked_for_and_its_absence_is_one_line(tiny_find):
    base, _ = tiny_find
    lazy = "import sys; from amoebasearch.cli import main; assert 'lm_eval' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", lazy], check=False).returncode == 0
    missing = (
        "import sys; sys.modules['lm_eval'] = None; from amoebasearch.cli import main; "
        f"sys.exit(main(['eval', '--model', {base[1]!r}, '--tasks', 'hellaswag']))"
    )
    result = subprocess.run([sys.executable, "-c", missing], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "needs lm-eval: pip install 'amoebasearch[lm-eval]'" in result.stderr


# ---------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def smollm2():
    return models.load("smollm2-135m")


@pytest.mark.slow
def test_on_the_real_model_the_shipped_cloze_task_scores_as_the_projects_scorer(smollm2, tmp_path):
    write_cloze_task(tmp_path, 16)
    items = cloze_items(read_documents(None), 16, seed=0, **CLOZE)
    shape = Shape(tuple(range(8)), 6, 1024)
    logits_fn = elastic_logits(smollm2.model)
    lm = ShapeLM(logits_fn, smollm2.tokenizer, context_length(smollm2.model.config, smollm2.tokenizer), shape)
    results = LMEvalTasks([CLOZE_TASK], tmp_path).run(lm, samples=True)
    lls = [torch.tensor([ll for ll, _ in choices]) for choices in per_item(results, CLOZE_TASK)]
    encoded = encode_items(items, smollm2.tokenizer)
    scorer = MultipleChoiceAccuracy(logits_fn, encoded)
    counts = [torch.tensor([len(ending) for ending in item.endings], dtype=torch.float) for item in encoded]
    for got, means, count in zip(lls, scorer.scores(shape), counts, strict=True):
        assert torch.allclose(got, means * count, atol=1e-3)  # real BPE: joint and separate tokenisation agree
    assert accuracy([ll / count for ll, count in zip(lls, counts, strict=True)], items) == scorer(shape)


@pytest.mark.slow
def test_find_with_lm_eval_runs_offline_and_caches_the_adapters_number(smollm2, tmp_path):
    tasks = write_task(tmp_path / "tasks", "prose_choice", prose_items(8))
    table = fake_table(smollm2.model.config, "smollm2-135m", tmp_path / "profiles" / "smollm2-cpu-eager-float32.csv")
    out = tmp_path / "run"
    argv = [
        sys.executable, "-m", "amoebasearch", "find", "--metric", "lm-eval", "--tasks", "prose_choice",
        "--tasks-dir", str(tasks), "--eval-items", "6", "--profile", str(table), "--budget", "9ms",
        "--trials", "3", "--margin", "0", "--out", str(out), "--json",
    ]  # fmt: skip
    env = {**os.environ, **OFFLINE, "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout is the report alone: lm-eval's progress bars are hidden
    assert report["metric"] == "lm-eval" and report["evaluations"] >= 1 and report["best"]["latency_ms"] <= 9.0
    shape = Shape.from_dict(report["best"]["shape"])
    quality = LMEvalQuality(
        elastic_logits(smollm2.model),
        smollm2.tokenizer,
        LMEvalTasks(["prose_choice"], tasks, 6),
        context_length(smollm2.model.config, smollm2.tokenizer),
    )
    direct = quality(shape)
    assert report["best"]["quality"] == round(direct, 6)
    cached = pd.read_csv(out / "qualities.csv", dtype={"layers": str})
    row = cached[(cached["layers"] == " ".join(map(str, shape.layers))) & (cached["heads"] == shape.heads)]
    assert list(row[row["ffn"] == shape.ffn]["quality"]) == [direct]
    # the task's own cache holds every shape the search scored, for any later set of tasks naming it
    storage = open_storage(out / "study.journal")
    caches = [n for n in optuna.get_all_study_names(storage) if n.startswith("amoebasearch-quality-")]
    counts = sorted(len(optuna.load_study(study_name=n, storage=storage).trials) for n in caches)
    assert len(caches) == 2 and counts == [report["cached_shapes"]] * 2
