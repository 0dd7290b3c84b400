"""`amoebasearch eval` as a library call: one shape of a trained supernet or of a plan-only base
model, or a whole exported subnet, scored on lm-evaluation-harness tasks by the evaluator that
`find --metric lm-eval` caches, so both report the same numbers; and amoebasearch's default
cloze task written as an lm-eval task.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from amoebasearch.data import cloze_items, read_documents
from amoebasearch.errors import UsageError
from amoebasearch.ordering import Ordering
from amoebasearch.quality import write_choice_task
from amoebasearch.search.find import CLOZE, quality_identity
from amoebasearch.search.request import QualitySettings
from amoebasearch.shape import ModelDims, Shape

CLOZE_TASK = "amoebasearch_cloze"
SHAPE_TEXT = re.compile(r"(\d+)/(\d+)/(\d+)")


def parse_shape(text: str | None, dims: ModelDims, ordering: Ordering) -> Shape:
    """The shape ``text`` names, checked against the model: ``DEPTH/HEADS/FFN`` (the plan's layers
    for that depth), a shape JSON file (such as `find`'s best_shape.json), or None for the whole model."""
    if text is None:
        return Shape.full(dims)
    match = SHAPE_TEXT.fullmatch(text.strip())
    if match:
        depth, heads, ffn = (int(value) for value in match.groups())
        if not 1 <= depth <= dims.num_layers:
            raise UsageError(f"--shape {text}: depth {depth} is not between 1 and the model's {dims.num_layers} layers")
        return Shape(ordering.layers_for_depth(depth), heads, ffn).validate(dims)
    if not Path(text).is_file():
        raise UsageError(
            f"--shape {text!r} is neither DEPTH/HEADS/FFN (such as 24/6/1024) nor a shape JSON file (best_shape.json)"
        )
    return Shape.load(text).validate(dims)


def evaluate_tasks(request: QualitySettings, shape: str | None = None) -> dict[str, Any]:
    """``shape`` (see `parse_shape`) of the request's supernet, plan or model scored on its lm-eval
    ``tasks``: each task's acc_norm (else acc) and their mean, as a JSON-ready report."""
    if request.supernet and request.plan:
        raise UsageError("--plan comes from the supernet directory: pass --supernet or --plan, not both")
    start = time.perf_counter()
    request = replace(request, metric="lm-eval")
    identity = quality_identity(request)  # checks the tasks before any weights load
    chosen = parse_shape(shape, identity.dims, identity.plan.ordering)
    scores = identity.quality.task_scores(chosen)
    return {
        "model": identity.name,
        "supernet": request.supernet,
        "plan": request.plan,
        "shape": chosen.to_dict(),
        "items": request.eval_items,
        "tasks": [asdict(score) for score in scores],
        "quality": sum(score.value for score in scores) / len(scores),
        "wall_s": round(time.perf_counter() - start, 2),
    }


def write_cloze_task(directory: str | Path, n_items: int = 200) -> Path:
    """amoebasearch's default multiple-choice task (the cloze items `find --metric accuracy` scores a
    model without a calibrated plan on) as the lm-eval task ``amoebasearch_cloze`` in ``directory``;
    returns its YAML's path."""
    items = cloze_items(read_documents(None), n_items, seed=0, **CLOZE)
    about = (
        f"amoebasearch's cloze task: {n_items} items from the embedded KJV corpus, each a {CLOZE['context_words']}-"
        f"word context and its true next {CLOZE['ending_words']} words among {CLOZE['choices']} equally long spans "
        "(`amoebasearch eval --write-task` wrote it)"
    )
    return write_choice_task(directory, CLOZE_TASK, items, about)
