"""`find` as a library call: price the shape space from a latency table, search it with Optuna,
and (optionally) export and measure the chosen subnet.

The model is loaded lazily: when every shape the study asks about is already in the quality
cache (a new budget, a new device, a rerun), `find` answers without touching the weights.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from amoebasearch.data import pad_token
from amoebasearch.elastic import elastic_logits
from amoebasearch.errors import UsageError
from amoebasearch.models import DEFAULT_MODEL, load, model_signature, resolve, shape_config
from amoebasearch.planfile import Plan
from amoebasearch.profile.accuracy import validation_warning
from amoebasearch.profile.predict import point_model, table_space
from amoebasearch.profile.runtimes import RUNTIMES
from amoebasearch.profile.table import LatencyTable, load_table
from amoebasearch.quality import (
    HIGHER_IS_BETTER,
    HeldOutPerplexity,
    InstructionPerplexity,
    LMEvalQuality,
    LMEvalTasks,
    LogitsFn,
    MultipleChoiceAccuracy,
    TaskScore,
    encode_items,
)
from amoebasearch.search.cache import QualityCache, cache_study_name
from amoebasearch.search.deploy import deploy, table_quant
from amoebasearch.search.margin import Margin, budget_margin
from amoebasearch.search.request import METRICS, FindRequest, QualitySettings, SearchSettings, TableChoice
from amoebasearch.search.storage import open_storage, shown_url
from amoebasearch.search.study import Candidate, InfeasibleBudget, search
from amoebasearch.search.tables import check_table_threads, choose_table
from amoebasearch.shape import ModelDims, Shape
from amoebasearch.train.instruct import DEFAULT_DATA_LABEL, held_out_pairs

CLOZE = {"context_words": 48, "ending_words": 12, "choices": 4}  # the default accuracy task (`cloze_items`)


def content_digest(data: str) -> dict[str, str]:
    """``{"data_sha256": ...}`` of a text file, so editing the file in place starts a new quality
    cache instead of serving perplexities measured on the old text; {} for the embedded corpus."""
    path = Path(data)
    if not path.is_file():
        return {}
    with path.open("rb") as handle:
        return {"data_sha256": hashlib.file_digest(handle, "sha256").hexdigest()[:16]}


class QualitySource:
    """The supernet (or plan-only base model) and its evaluation data, loaded on first use.

    ``ppl``: perplexity on held-out chunks of the plan's corpus (or ``data``). ``instruct``:
    response perplexity on the held-out instruction pairs of ``data`` (default: the supernet's
    training data, else the embedded ShareGPT pairs), the file's last pairs that `train` never
    reads. ``accuracy``: multiple-choice accuracy on the items of ``data`` (JSONL), else on a
    cloze task built from the embedded corpus's documents that no calibration chunk of the plan
    touched. ``lm-eval``: the mean acc_norm (else acc) on lm-evaluation-harness ``tasks``, the
    first ``eval_items`` items of each (`amoebasearch.quality.LMEvalTasks`).
    """

    def __init__(self, request: QualitySettings, plan: Plan) -> None:
        if request.metric not in METRICS:
            raise UsageError(f"unknown metric {request.metric!r}: choose one of {', '.join(METRICS)}")
        self.request = request
        self.plan = plan
        self._loaded: Any = None
        self._supernet: Any = None
        self._evaluate: Callable[[Shape], float] | None = None
        self.held_out = None  # ppl: the held-out token chunks, once loaded
        self._items = None
        self._tasks: LMEvalTasks | None = None
        self.task_caches: dict[str, QualityCache] = {}  # lm-eval: each task's scores, shared by every task set
        if request.metric == "accuracy" and request.data:  # a bad file fails now, before any search
            from amoebasearch.data import read_choice_items

            self._items = read_choice_items(request.data)[: request.eval_items]
        if request.metric == "lm-eval":  # unknown or unfit tasks fail now, before any search
            self._tasks = LMEvalTasks(request.tasks or [], request.tasks_dir, request.eval_items)
        elif request.tasks is not None or request.tasks_dir:
            raise UsageError("--tasks and --tasks-dir name lm-eval tasks: add --metric lm-eval, or drop them")

    @property
    def higher_is_better(self) -> bool:
        return HIGHER_IS_BETTER[self.request.metric]

    @cached_property
    def eval_settings(self) -> dict[str, Any]:
        """What a shape's quality depends on besides the shape (the quality cache key); worked out
        once, since it may hash the data file."""
        calib = self.plan.calibration
        settings = {
            "metric": self.request.metric,
            "data": self.request.data or calib.get("data", "default"),
            "seq_len": calib.get("seq_len", 256),
            "calibration_tokens": calib.get("calibration_tokens", 0),
            "seed": calib.get("seed", 0),
        }
        if self.request.metric == "ppl":
            return {**settings, "eval_tokens": self.request.eval_tokens, **content_digest(settings["data"])}
        if self._tasks is not None:  # the plan's data plays no part; the tasks and their files do
            return {"metric": self.request.metric, **self._tasks.settings}
        if self.request.metric == "instruct":
            data, seq_len = instruction_source(self.request, settings["seq_len"])
            source = {"data": data or DEFAULT_DATA_LABEL, "seq_len": seq_len, **content_digest(data or "")}
            return {**settings, **source, "items": self.request.eval_items}
        if self.request.data:  # the items themselves, so an edited file is a new task
            digest = hashlib.sha256(repr(self._items).encode()).hexdigest()[:16]
            return {**settings, "data": self.request.data, "items": digest}
        return {**settings, "data": "cloze:embedded", "items": self.request.eval_items, **CLOZE}

    def load(self) -> None:
        if self._loaded is not None:
            return
        if self.request.supernet:
            from amoebasearch.train.supernet import load_supernet

            self._supernet = load_supernet(self.request.supernet, base_override(self.request))
            self._loaded = self._supernet.loaded
            logits_fn = self._supernet.smol
        else:
            self._loaded = load(self.request.model)
            logits_fn = elastic_logits(self._loaded.model, self.plan.ordering)
        self._evaluate = self.evaluator(logits_fn, self._loaded.tokenizer)

    def evaluator(self, logits_fn: LogitsFn, tokenizer: Any) -> Callable[[Shape], float]:
        """The quality of a shape under this source's metric, computed through ``logits_fn``."""
        from amoebasearch.data import DEFAULT_CORPUS, cloze_items, held_out_documents, plan_split, read_documents

        if tokenizer is None:
            raise UsageError("this model ships no tokenizer: pass a checkpoint directory that includes one")
        settings = self.eval_settings
        calib_data = self.plan.calibration.get("data", "default")
        corpus = None if calib_data in ("default", DEFAULT_CORPUS) else calib_data
        if self.request.metric == "ppl":
            split = plan_split(tokenizer, self.plan.calibration, settings["eval_tokens"], path=self.request.data)
            self.held_out = split.held_out  # what `deploy.gguf_perplexity` scores the deployed file on
            return HeldOutPerplexity(logits_fn, split.held_out)
        if self.request.metric == "instruct":
            data, seq_len = instruction_source(self.request, settings["seq_len"])
            pairs = held_out_pairs(data, tokenizer, seq_len)
            return InstructionPerplexity(logits_fn, pairs[: self.request.eval_items], pad_token(tokenizer))
        if self._tasks is not None:
            from amoebasearch.quality.lm_eval_model import context_length

            config = self._loaded.model.config if self._loaded is not None else None  # None: the tokenizer's limit
            max_length = context_length(config, tokenizer)
            return LMEvalQuality(logits_fn, tokenizer, self._tasks, max_length, caches=self.task_caches)
        items = self._items
        if items is None:  # the cloze task: embedded corpus, minus what calibrated the plan
            docs = read_documents(None)
            if corpus is None:
                docs = held_out_documents(
                    docs, tokenizer, settings["seq_len"], settings["calibration_tokens"], settings["seed"]
                )
            items = cloze_items(docs, self.request.eval_items, seed=settings["seed"], **CLOZE)
        return MultipleChoiceAccuracy(logits_fn, encode_items(items, tokenizer))

    def __call__(self, shape: Shape) -> float:
        self.load()
        return self._evaluate(shape)

    def share_task_caches(self, storage: Any, source: str) -> None:
        """``lm-eval``: keep each task's score per shape in ``storage`` too, under the task's own key,
        so a search over another set of tasks that includes it reads it instead of scoring it again."""
        if self._tasks is not None:
            self.task_caches = {
                name: QualityCache(
                    storage, cache_study_name(source, {"metric": "lm-eval-task", **self._tasks.task_settings(name)})
                )
                for name in self._tasks.tasks
            }

    def task_scores(self, shape: Shape) -> list[TaskScore]:
        """``lm-eval``: each task's number for ``shape``, of which `__call__` is the mean."""
        if self._tasks is None:
            raise UsageError(f"per-task scores are of lm-eval tasks, not of metric {self.request.metric}")
        self.load()
        return self._evaluate.task_scores(shape)

    @property
    def tokenizer(self) -> Any:
        self.load()
        return self._loaded.tokenizer

    def subnet(self, shape: Shape) -> Any:
        """The standalone subnet (sliced weights; the shape's LoRAs merged for a trained supernet)."""
        from amoebasearch.export import extract

        self.load()
        if self._supernet is not None:
            return self._supernet.export(shape)
        return extract(self._loaded.model, shape, self.plan.ordering)

    def export(self, shape: Shape, out: str, fmt: str = "hf", quant: str | None = None) -> Path:
        """The subnet written to ``out``: a model directory, or (``fmt`` gguf) the GGUF file's path."""
        from amoebasearch.export import save_export

        return save_export(self.subnet(shape), out, self._loaded.tokenizer, fmt, quant, flag="--export")


def instruction_source(request: QualitySettings, plan_seq_len: int) -> tuple[str | None, int]:
    """(file, tokens per pair) of the held-out pairs ``instruct`` scores: a supernet's own training
    data (None: the embedded ShareGPT pairs) cut as it was trained, unless ``--data`` names other
    pairs; the plan's sequence length for the plan-only model."""
    if not request.supernet:
        return request.data, plan_seq_len
    from amoebasearch.train.supernet import training_data

    data, seq_len = training_data(Path(request.supernet))
    return request.data or data, seq_len


def base_override(request: QualitySettings) -> str | None:
    """A ``--model`` given with ``--supernet`` (the base moved, same weights); None: the recorded one."""
    return request.model if request.supernet and request.model != DEFAULT_MODEL else None


def _model_identity(request: QualitySettings) -> tuple[str, str, Any, Plan]:
    """(name, signature, config, plan) without loading any weights."""
    if request.supernet:
        from amoebasearch.train.supernet import check_base_signature, read_base

        directory = Path(request.supernet)
        base = read_base(directory)
        reference = base_override(request) or base["model"]
        config = shape_config(reference)
        check_base_signature(directory, base, config)
        plan = Plan.load(directory / "plan.json", config)
        name = resolve(reference)[0]
        return name, base["signature"], config, plan
    config = shape_config(request.model)
    plan = Plan.load(request.plan, config) if request.plan else Plan.identity(config)
    return resolve(request.model)[0], model_signature(config), config, plan


@dataclass
class QualityIdentity:
    """What a request's qualities are of: the model (name, signature), its plan, the quality source
    and its signature. Worked out once per `find` command, since it reads the model's config and
    hashes a trained supernet's adapter weights; `find` and `known_qualities` both take it."""

    name: str
    signature: str
    dims: ModelDims
    plan: Plan
    quality: QualitySource
    source: str


def quality_identity(request: QualitySettings) -> QualityIdentity:
    name, signature, config, plan = _model_identity(request)
    source = source_signature(request, signature, plan)
    return QualityIdentity(name, signature, ModelDims.from_config(config), plan, QualitySource(request, plan), source)


def source_signature(request: QualitySettings, signature: str, plan: Plan) -> str:
    """Identifies the quality source: base model + plan (+ SMoL weights for a trained supernet)."""
    digest = hashlib.sha256(signature.encode())
    digest.update(json.dumps(plan.ordering.to_dict(), sort_keys=True).encode())
    if request.supernet:
        for path in sorted(Path(request.supernet).glob("*.safetensors")):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def storage_url(request: SearchSettings) -> str | Path:
    """``--storage`` if given, else the journal file in the run directory."""
    return request.storage or request.out / "study.journal"


def open_quality_cache(request: SearchSettings, source: str, eval_settings: dict[str, Any]) -> tuple[Any, QualityCache]:
    """The request's Optuna storage and the quality cache of its source (`source_signature`) and
    evaluation settings."""
    storage = open_storage(storage_url(request), heartbeat_s=request.heartbeat)
    return storage, QualityCache(storage, cache_study_name(source, eval_settings))


def pick_table(request: TableChoice, name: str, signature: str) -> LatencyTable:
    from amoebasearch.profile.fingerprint import cpu_fingerprint, device_fingerprint, device_slug
    from amoebasearch.profile.runtimes import default_threads

    if request.table:
        table = load_table(request.table, signature, name)
        runtime = table.meta.get("runtime", {}).get("name", request.runtime)
        if table.threads is not None and runtime in RUNTIMES:
            check_table_threads(table, request.threads, default_threads(runtime), cpu_fingerprint())
        if request.quant and table_quant(table) != request.quant:
            raise UsageError(
                f"--profile {table.path} was timed at {table_quant(table) or table.meta.get('dtype')}, not "
                f"--quant {request.quant}: drop --quant, or pass that quantisation's table"
            )
        return table
    from amoebasearch.devices import check_device

    # the table is found by the device's fingerprint, so the device must be here
    device = check_device(request.device, instead="pass --profile TABLE to search its table")
    fingerprint = device_fingerprint(device)
    threads = None if device.startswith("cuda") else request.threads or default_threads(request.runtime)
    return choose_table(
        request.profiles,
        signature,
        fingerprint,
        device_slug(fingerprint),
        request.runtime,
        name,
        device,
        threads,
        request.quant,
    )


def study_name_for(request: FindRequest, table: LatencyTable, source: str, margin: Margin) -> str:
    """The search study of one question: table, point, budget (and margin), metric, sampler, seed,
    and the quality source, so a retrained supernet or a new plan never inherits the trial history
    (and the sampler's beliefs) of another."""
    stem = Path(table.path).stem if table.path else "table"
    margin_part = f"-m{margin.fraction * 100:.2f}" if margin.fraction else ""
    return (
        f"find-{stem}-{request.phase}-b{request.batch}-c{request.context}-{request.budget_ms:g}ms{margin_part}"
        f"-{request.metric}-{request.sampler}-s{request.seed}{'-pareto' if request.pareto else ''}-{source}"
    )


def _candidate_dict(candidate: Candidate) -> dict[str, Any]:
    return {
        "shape": candidate.shape.to_dict(),
        "latency_ms": round(candidate.latency_ms, 6),
        "quality": round(candidate.quality, 6),
    }


def find(
    request: FindRequest, warn: Callable[[str], None] = print, identity: QualityIdentity | None = None
) -> dict[str, Any]:
    """Search for the best subnet under ``request.budget_ms``; return a JSON-ready report.
    ``identity``: the request's `quality_identity`, when the caller has it already."""
    identity = identity or quality_identity(request)
    plan, quality, source = identity.plan, identity.quality, identity.source
    table = pick_table(request, identity.name, identity.signature)
    for warning in (table.warning(), validation_warning(table, request.phase, request.batch, request.context)):
        if warning:
            warn(warning)
    point = point_model(table, request.phase, request.batch, request.context)
    space = table_space(table, plan.ordering)  # the table was checked against this model's signature
    storage, cache = open_quality_cache(request, source, quality.eval_settings)
    quality.share_task_caches(storage, source)
    margin = budget_margin(request.margin, table, request.phase, request.batch, request.context)
    search_budget_ms = margin.search_budget(request.budget_ms)
    study_name = request.study or study_name_for(request, table, source, margin)
    try:
        result = search(
            space,
            lambda shape: point.predict(shape) / 1000.0,
            quality,
            cache,
            search_budget_ms,
            trials=request.trials,
            sampler=request.sampler,
            seed=request.seed,
            storage=storage,
            study_name=study_name,
            multi_objective=request.pareto,
            higher_is_better=quality.higher_is_better,
            progress=request.progress,
            guide=not request.explore,
        )
    except InfeasibleBudget as err:
        if not margin.fraction:
            raise
        raise UsageError(
            f"budget {request.budget_ms:g} ms less its {margin.fraction:.1%} margin for prediction error "
            f"({search_budget_ms:.4g} ms) is infeasible on this table: the fastest subnet ({err.fastest}) takes "
            f"{err.fastest_ms:.3g} ms; raise the budget, use a faster device/runtime, or search the whole "
            "budget with --margin 0"
        ) from None
    report: dict[str, Any] = {
        "budget_ms": request.budget_ms,
        "search_budget_ms": round(search_budget_ms, 6),
        "margin_pct": round(margin.fraction * 100.0, 3),
        "margin_source": margin.source,
        "metric": request.metric,
        "table": str(table.path),
        "table_source": "estimated" if table.estimated else "measured",
        "threads": table.threads,
        "point": {"phase": request.phase, "batch": request.batch, "context": request.context},
        "best": _candidate_dict(result.best),
        "front": [_candidate_dict(c) for c in result.front],
        "fastest_ms": round(result.fastest.latency_ms, 6),
        "trials": result.trials,
        "new_trials": result.new_trials,
        "guided": result.guided,
        "evaluations": result.evaluations,
        "evaluation_s": round(cache.evaluation_s, 3),  # of the search's wall time, the part spent evaluating
        "cached_shapes": len(cache),
        "study": study_name,
        "storage": shown_url(str(storage_url(request))),
    }
    with tempfile.TemporaryDirectory(prefix="amoebasearch-find-") as scratch:
        deployed = deploy(request, table, quality, result.best, report, Path(scratch))
        if deployed is not None and request.metric == "ppl":  # a quantised file: its quality in llama.cpp too
            from amoebasearch.profile.runtimes import default_threads
            from amoebasearch.search.deploy import gguf_perplexity

            quality.load()
            threads = table.threads or default_threads("llamacpp")
            report["best"]["quality_gguf"] = round(gguf_perplexity(deployed, quality.held_out, threads), 6)
    return report
