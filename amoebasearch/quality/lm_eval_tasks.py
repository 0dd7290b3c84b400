"""lm-evaluation-harness tasks as the quality of a shape: `LMEvalTasks` names, checks and loads
the tasks once; `LMEvalQuality` scores a shape on them through the supernet (`ShapeLM`).

A shape's quality is the mean over the tasks of each task's ``acc_norm`` (``acc`` where a task
reports no ``acc_norm``); a group or tag counts as its tasks, unweighted. lm-eval's ``acc_norm``
divides each choice's summed log-likelihood by the choice's length in characters; ``acc`` takes
the sum as it is. Only multiple-choice and log-likelihood tasks qualify: generating text per
shape per item would dwarf the search.

lm-eval is imported inside the functions, so ``amoebasearch`` starts without it.
`write_choice_task` turns multiple-choice items into an lm-eval task folder (YAML + JSONL) that
plain ``lm_eval --include_path DIR`` runs too.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import hashlib
import importlib.metadata
import io
import json
import re
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from amoebasearch import atomic
from amoebasearch.data import ChoiceItem
from amoebasearch.errors import UsageError, first_line
from amoebasearch.quality.next_token import LogitsFn
from amoebasearch.shape import Shape

PREFERRED_METRICS = ("acc_norm", "acc")  # the number a task contributes: the first it reports
FEWSHOT_SEED = 1234  # lm-eval's default: the same few-shot examples for every shape
LIST_TASKS = "`lm-eval ls tasks` lists them (add --include_path DIR for a --tasks-dir)"
PROGRESS_BAR = re.compile(r"\d+%\||\[\d+:\d\d")  # a tqdm line: "100%|####| 8/8 [00:00<00:00, ...]"


@dataclass(frozen=True)
class TaskScore:
    """One task's number for a shape: which metric it is, its value, and how many items it covers."""

    task: str
    metric: str
    value: float
    items: int


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide the progress bars lm-eval and datasets draw on every evaluation (a search runs hundreds);
    any other line they print (warnings) still reaches stderr."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    finally:
        for line in re.split(r"[\r\n]+", buffer.getvalue()):
            if line.strip() and not PROGRESS_BAR.search(line):
                print(line, file=sys.stderr)


def _local_files(pattern: Any) -> list[Path]:
    """The local files a task's ``data_files`` / ``dataset_path`` entry names (a path, a glob, a
    folder, or a list/dict of them); hub references name none."""
    if isinstance(pattern, dict):
        return [path for value in pattern.values() for path in _local_files(value)]
    if isinstance(pattern, (list, tuple)):
        return [path for value in pattern for path in _local_files(value)]
    if not isinstance(pattern, str):
        return []
    found = []
    for match in glob.glob(str(Path(pattern).expanduser())):
        path = Path(match)
        found += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return found


def _leaf_tasks(nested: dict[Any, Any]) -> dict[str, Any]:
    """The tasks of an lm-eval task dict, whose groups hold dicts of their tasks, by name."""
    tasks = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            tasks.update(_leaf_tasks(value))
        else:
            tasks[key if isinstance(key, str) else value.task_name] = value
    return tasks


def _stable_name(value: Any) -> str:
    """A task config's non-JSON value (a function its YAML names) as its qualified name, which,
    unlike its repr, does not change from run to run."""
    return getattr(value, "__qualname__", None) or type(value).__qualname__


def _file_sha256(path: Path) -> bytes:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").digest()


class LMEvalTasks:
    """The lm-eval tasks a shape is scored on: ``names`` (lm-eval task, group or tag names), found
    among lm-eval's own tasks and those of ``tasks_dir`` (lm-eval's ``--include_path``), at most
    ``limit`` items each. Unknown names, generative tasks and tasks without an accuracy are refused
    here, before any model runs.
    """

    def __init__(self, names: Sequence[str], tasks_dir: str | Path | None = None, limit: int | None = None) -> None:
        import amoebasearch.quality.lm_eval_model  # noqa: F401  (a one-line error when lm-eval is missing)

        if not names:
            raise UsageError(f"--metric lm-eval needs --tasks T1,T2: {LIST_TASKS}")
        self.names = list(dict.fromkeys(names))
        self.limit = limit
        self.tasks_dir = Path(tasks_dir) if tasks_dir else None
        if self.tasks_dir is not None and not self.tasks_dir.is_dir():
            raise UsageError(f"--tasks-dir {self.tasks_dir} is not a folder: pass a folder of lm-eval task YAML files")
        self.loaded = self._load(self._manager())
        for name, task in self.tasks.items():
            if task.OUTPUT_TYPE == "generate_until":
                from amoebasearch.quality.lm_eval_model import GENERATIVE

                raise UsageError(f"lm-eval task {name} generates text: {GENERATIVE}")
            reported = list(task.aggregation())
            if not set(PREFERRED_METRICS) & set(reported):
                raise UsageError(
                    f"lm-eval task {name} reports neither acc_norm nor acc (it reports {', '.join(reported)}): "
                    "choose multiple-choice tasks"
                )
            if task.get_config("num_fewshot") is None:  # as `lm_eval` does: zero-shot unless the task says
                task.set_config(key="num_fewshot", value=0)

    def _manager(self) -> Any:
        """lm-eval's task index: of ``tasks_dir`` alone when it holds every named task (indexing
        lm-eval's own ~15,000 tasks takes seconds), else of both."""
        from lm_eval.tasks import TaskManager

        include = [str(self.tasks_dir)] if self.tasks_dir else None
        if include:
            local = TaskManager(include_path=include, include_defaults=False)
            if set(self.names) <= set(local.all_subtasks):
                return local
        manager = TaskManager(include_path=include)
        known = set(manager.all_tasks)
        for name in self.names:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=3)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                raise UsageError(f"unknown lm-eval task {name!r}{hint}: {LIST_TASKS}")
        return manager

    def _load(self, manager: Any) -> dict[Any, Any]:
        """lm-eval's task dict (groups nest their tasks), in the form every lm-eval 0.4 reads."""
        from lm_eval.tasks import get_task_dict

        try:
            with quiet_progress(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # newer lm-evals prefer TaskManager.load
                return get_task_dict(self.names, manager)
        except Exception as err:  # a task's YAML, its data or its dataset loader may fail in any way
            raise UsageError(
                f"cannot load lm-eval task(s) {', '.join(self.names)}: {first_line(err)}: check the task's YAML and "
                "data (offline, a hub dataset must already be in the Hugging Face cache)"
            ) from None

    @cached_property
    def tasks(self) -> dict[str, Any]:
        """The tasks that run, by name: groups and tags expanded."""
        return _leaf_tasks(self.loaded)

    @cached_property
    def _folder_digest(self) -> str:
        """A digest of every file of ``tasks_dir`` (names and contents)."""
        digest = hashlib.sha256()
        if self.tasks_dir is not None:
            for path in sorted(p for p in self.tasks_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
                digest.update(path.relative_to(self.tasks_dir).as_posix().encode() + b"\0" + _file_sha256(path))
        return digest.hexdigest()[:16]

    def _data_digest(self, names: Sequence[str]) -> str:
        """A digest of the local data files the tasks ``names`` read."""
        data = []
        for name in names:
            task = self.tasks[name]
            kwargs = task.get_config("dataset_kwargs") or {}
            data += _local_files(kwargs.get("data_files"))
            path = task.get_config("dataset_path")
            if isinstance(path, str) and ("/" in path or Path(path).is_file()):  # a path, not a builder (json)
                data += _local_files(path)
        digest = hashlib.sha256()
        for path in sorted(set(data)):
            digest.update(_file_sha256(path))
        return digest.hexdigest()[:16]

    @cached_property
    def settings(self) -> dict[str, Any]:
        """What the scores depend on besides the model and shape: the task names, the item cap, the
        lm-eval version (its own tasks' definitions), and a digest of the local task files (every
        file of ``tasks_dir`` and the local data files the tasks name), so an edited task is a new
        task."""
        folder, data = self._folder_digest, self._data_digest(list(self.tasks))
        return {
            "tasks": sorted(self.names),
            "items": self.limit,
            "lm_eval": importlib.metadata.version("lm_eval"),
            "task_files_sha256": hashlib.sha256(f"{folder}{data}".encode()).hexdigest()[:16],
        }

    def task_settings(self, name: str) -> dict[str, Any]:
        """What one task's score depends on besides the model and shape (its cache key): the same
        for that task in any set of tasks named from the same ``tasks_dir``, and different when a
        group re-configures the task under its own name (few-shot count, prompt, delimiters)."""
        config = json.dumps(self.tasks[name].dump_config(), sort_keys=True, default=_stable_name)
        return {
            "task": name,
            "items": self.limit,
            "lm_eval": importlib.metadata.version("lm_eval"),
            "config_sha256": hashlib.sha256(config.encode()).hexdigest()[:16],
            "tasks_dir_sha256": self._folder_digest,
            "data_sha256": self._data_digest([name]),
        }

    def run(self, lm: Any, samples: bool = False, names: Sequence[str] | None = None) -> dict[str, Any]:
        """lm-eval's results dict for ``lm`` on these tasks, or on the tasks ``names`` of them
        (``samples``: with every request's answers)."""
        from lm_eval.evaluator import evaluate

        task_dict = self.loaded if names is None else {name: self.tasks[name] for name in names}
        for name in names or self.tasks:  # reseeded, so the order shapes come in changes nothing
            self.tasks[name].set_fewshot_seed(seed=FEWSHOT_SEED)
        with quiet_progress():
            return evaluate(lm=lm, task_dict=task_dict, limit=self.limit, bootstrap_iters=0, log_samples=samples)

    def scores(self, lm: Any, names: Sequence[str] | None = None) -> list[TaskScore]:
        """Each task's acc_norm (else acc) for ``lm``: of every task, or of the tasks ``names``."""
        results = self.run(lm, names=names)
        scores = []
        for name in names or self.tasks:
            reported = results["results"][name]
            for metric in PREFERRED_METRICS:
                keys = [key for key in reported if key.split(",")[0] == metric]  # "acc_norm,none": metric,filter
                if keys:
                    key = f"{metric},none" if f"{metric},none" in keys else keys[0]
                    items = results["n-samples"][name]["effective"]
                    scores.append(TaskScore(name, metric, float(reported[key]), int(items)))
                    break
        return scores


class LMEvalQuality:
    """A shape's mean acc_norm (else acc) over lm-eval tasks, through ``logits_fn``; higher is better.

    ``caches`` (task name -> anything with ``get(shape)`` and ``put(shape, value)``, such as
    `find`'s quality cache of that task's `LMEvalTasks.task_settings`): a task scored for a shape
    before, in this set of tasks or any other, is read instead of scored again.
    """

    def __init__(
        self,
        logits_fn: LogitsFn,
        tokenizer: Any,
        tasks: LMEvalTasks,
        max_length: int,
        batch: int = 8,
        caches: Mapping[str, Any] | None = None,
    ) -> None:
        from amoebasearch.quality.lm_eval_model import ShapeLM

        self.tasks = tasks
        self.lm = ShapeLM(logits_fn, tokenizer, max_length, batch=batch)
        self.caches = caches or {}
        self.scored = 0  # task scores computed (not read from ``caches``)

    def task_scores(self, shape: Shape, names: Sequence[str] | None = None) -> list[TaskScore]:
        self.lm.shape = shape
        scores = self.tasks.scores(self.lm, names)
        self.scored += len(scores)
        return scores

    def __call__(self, shape: Shape) -> float:
        values = {}
        for name in self.tasks.tasks:
            cache = self.caches.get(name)
            if cache is not None and (cached := cache.get(shape)) is not None:
                values[name] = cached
        missing = [name for name in self.tasks.tasks if name not in values]
        if missing:
            for score in self.task_scores(shape, None if len(missing) == len(self.tasks.tasks) else missing):
                values[score.task] = score.value
                if score.task in self.caches:
                    self.caches[score.task].put(shape, score.value)
        return sum(values[name] for name in self.tasks.tasks) / len(values)


def write_choice_task(directory: str | Path, name: str, items: Sequence[ChoiceItem], about: str) -> Path:
    """Multiple-choice items as an lm-eval task in ``directory``: ``NAME.jsonl`` (context, endings,
    label) and ``NAME.yaml``, which names the JSONL by its absolute path (so ``lm_eval`` finds it
    from any working directory; write the task again after moving the folder). Each ending follows
    its context after one space and is scored as a multiple-choice answer. Returns the YAML's path."""
    directory = Path(directory)
    data = (directory / f"{name}.jsonl").resolve()
    records = [{"context": item.context, "endings": list(item.endings), "label": item.gold} for item in items]
    atomic.write_text(data, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    metric = "  - metric: {}\n    aggregation: mean\n    higher_is_better: true\n"
    metrics = metric.format("acc") + metric.format("acc_norm")
    yaml = (
        f"# {about}\n"
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: context\n"
        "doc_to_choice: endings\n"
        "doc_to_target: label\n"
        'target_delimiter: " "\n'
        f"metric_list:\n{metrics}"
        "metadata:\n"
        "  version: 1.0\n"
    )
    return atomic.write_text(directory / f"{name}.yaml", yaml)
