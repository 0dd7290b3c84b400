"""What `find` is asked, in four groups: the latency table and its point, the quality source, the
search, and what happens to the subnet it picks. Each field declares its `find` flag (`option`).

`FindRequest` is the four groups in one flat dataclass, so ``FindRequest(budget_ms=30, metric=...)``
and ``request.metric`` read as before, and a function that needs one group takes that group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amoebasearch.models import DEFAULT_MODEL, MODEL_HELP
from amoebasearch.options import comma_list, option, positive_int, positive_int_up_to
from amoebasearch.planfile import PLAN_HELP
from amoebasearch.profile.request import QUANTS
from amoebasearch.quality import HIGHER_IS_BETTER
from amoebasearch.search.storage import GRACE_HEARTBEATS, HEARTBEAT_S
from amoebasearch.search.study import SAMPLERS

METRICS = tuple(HIGHER_IS_BETTER)
PHASES = ("decode", "prefill")
MAX_EVAL_ITEMS = 10_000  # a cap with a reason beats a run that never ends


@dataclass(kw_only=True)
class TableChoice:
    """The latency table that prices each shape, and the point of it."""

    table: str | None = option(
        None, name="--profile", help="latency table CSV (default: pick one for --device/--runtime)"
    )
    profiles: Path = option(Path("profiles"), type=Path, help="folder searched for tables (default profiles/)")
    device: str = option("cpu", unset=True, help="device whose table to use (default cpu)")
    runtime: str = option(
        "eager", unset=True, help="runtime whose table to use (default: cudagraph on CUDA, eager on CPU)"
    )
    threads: int | None = option(  # None: the runtime's default on this host
        None,
        type=positive_int,
        help="CPU threads the subnet will run at (default: the runtime's own default here); picks the table "
        "timed at that count and refuses one timed at another",
    )
    quant: str | None = option(  # None: its table's, or q8_0 for an export
        None,
        choices=QUANTS,
        help="llamacpp: the GGUF quantisation deployed (picks that table; default: the table's); "
        "--format gguf: the export's (default: the llamacpp table's, else q8_0)",
    )
    phase: str = option("decode", choices=PHASES, help="what the budget is for (default decode)")
    batch: int = option(1, type=positive_int, help="batch size of the table point (default 1)")
    context: int = option(128, type=positive_int, help="context length (default 128)")


@dataclass(kw_only=True)
class QualitySettings:
    """The quality each shape is scored by: which weights, which metric, which data."""

    supernet: str | None = option(None, help="supernet directory from `amoebasearch train`")
    model: str = option(DEFAULT_MODEL, help=MODEL_HELP)
    plan: str | None = option(None, help=PLAN_HELP)
    metric: str = option(  # lower is better for ppl and instruct (perplexities), higher for the accuracies
        "ppl",
        choices=METRICS,
        help="quality: held-out perplexity (ppl, default), response perplexity on held-out instruction pairs "
        "(instruct), multiple-choice accuracy (accuracy) or the mean acc_norm (else acc) on lm-evaluation-harness "
        "tasks (lm-eval, with --tasks)",
    )
    data: str | None = option(
        None,
        help="ppl: held-out text; instruct: Alpaca/ShareGPT pairs (its last ones, which train never reads); "
        "accuracy: multiple-choice JSONL (context/question/ctx, endings/choices, label/answer/gold). Default: "
        "the embedded corpus (accuracy: a cloze task on its held-out chapters; instruct: the supernet's "
        "training data, else the embedded ShareGPT pairs)",
    )
    eval_tokens: int = option(2048, type=positive_int, help="ppl: held-out tokens per shape (2048)")
    eval_items: int = option(
        200,
        type=positive_int_up_to(MAX_EVAL_ITEMS, "each item costs a forward pass per choice per shape (200: 20-51 s)"),
        help=f"accuracy: items per shape; instruct: held-out pairs per shape; lm-eval: items per task per shape, "
        f"the first ones (lm-eval's --limit) (200, at most {MAX_EVAL_ITEMS:,})",
    )
    tasks: list[str] | None = option(
        None,
        type=comma_list(str),
        metavar="T1,T2",
        help="lm-eval: lm-evaluation-harness tasks, groups or tags, comma-separated (`lm-eval ls tasks` lists "
        "them); multiple-choice and log-likelihood tasks only",
    )
    tasks_dir: str | None = option(
        None,
        metavar="DIR",
        help="lm-eval: a folder of your own lm-eval task YAMLs (lm-eval's --include_path); `amoebasearch eval "
        "--write-task DIR` writes the default cloze task there as amoebasearch_cloze",
    )


@dataclass(kw_only=True)
class SearchSettings:
    """The search: its margin, the Optuna study, and the run directory."""

    margin: str | float = option(  # "auto" (from the table's validation) or a fraction of the budget
        "auto",
        help="share of the budget kept free for prediction error: auto (default: the 95th percentile of "
        "how far held-out subnets ran over their prediction in the table's validation file; 0 without "
        "one), or a percentage such as 3%%",
    )
    trials: int = option(
        60,
        type=positive_int,
        help="Optuna trials to run (default 60); a study that already holds this many answers from them "
        "without new trials (pass a larger number to search further). A new budget on a warm quality cache "
        "runs none: the quality model picks its few evaluations (--explore to run the trials instead)",
    )
    sampler: str = option("tpe", choices=SAMPLERS, help="Optuna sampler (default tpe)")
    explore: bool = option(
        False,
        help="run the sampler's --trials even when the quality cache already holds enough shapes to answer "
        "a new budget with a few evaluations picked by a quality model (the default then)",
    )
    pareto: bool = option(False, help="multi-objective study (quality, latency)")
    storage: str | None = option(None, help="Optuna storage: postgresql://…, sqlite:///f.db or f.journal")
    heartbeat: int = option(
        HEARTBEAT_S,
        type=positive_int,
        metavar="S",
        help=f"database storages: a running trial's heartbeat in seconds (default {HEARTBEAT_S}); a trial silent "
        f"for {GRACE_HEARTBEATS} is a lost worker's, failed and run again",
    )
    study: str | None = option(None, help="study name (default: derived from table, point, budget)")
    out: Path = option(Path("runs/find"), type=Path, help="run directory: storage, shape JSON, front CSV")
    seed: int = option(0, type=int, help="sampler seed (default 0)")
    progress: bool = True


@dataclass(kw_only=True)
class Deployment:
    """What happens to the chosen subnet."""

    export: str | None = option(
        None, metavar="DIR", help="write the chosen subnet: a Hugging Face model, or with --format gguf a GGUF"
    )
    export_format: str = option(
        "hf",
        name="--format",
        choices=("hf", "gguf"),
        help="--export as a Hugging Face model directory (hf, default) or one GGUF file for llama.cpp (gguf)",
    )
    verify: bool = option(False, help="measure the chosen subnet on the device")


@dataclass(kw_only=True)
class FindRequest(Deployment, SearchSettings, QualitySettings, TableChoice):
    """One question for `find`: the best subnet under ``budget_ms`` milliseconds, and the groups above."""

    budget_ms: float
