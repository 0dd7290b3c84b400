"""Quality of a shape, in one place for every stage: the calibration metrics `plan` minimises, the
held-out perplexities `train` and `find` report, multiple-choice accuracy, and lm-evaluation-harness
tasks (imported from lm-eval only when asked for)."""

from amoebasearch.quality.choice import EncodedItem, MultipleChoiceAccuracy, encode_items
from amoebasearch.quality.lm_eval_tasks import LMEvalQuality, LMEvalTasks, TaskScore, write_choice_task
from amoebasearch.quality.next_token import (
    HeldOutPerplexity,
    InstructionPerplexity,
    KLToFull,
    LogitsFn,
    Metric,
    Perplexity,
    logits_metric,
    model_perplexity,
    response_perplexity,
    shape_metric,
)

# `find`'s quality metrics and their direction: held-out perplexity and instruction response
# perplexity (lower is better), multiple-choice accuracy and the mean accuracy on lm-eval tasks
# (higher is better).
HIGHER_IS_BETTER = {"ppl": False, "instruct": False, "accuracy": True, "lm-eval": True}
METRIC_LABELS = {
    "ppl": "held-out perplexity",
    "instruct": "held-out instruction perplexity",
    "accuracy": "multiple-choice accuracy",
    "lm-eval": "mean lm-eval accuracy (acc_norm, else acc)",
}

__all__ = [
    "HIGHER_IS_BETTER",
    "METRIC_LABELS",
    "EncodedItem",
    "HeldOutPerplexity",
    "InstructionPerplexity",
    "KLToFull",
    "LMEvalQuality",
    "LMEvalTasks",
    "LogitsFn",
    "Metric",
    "MultipleChoiceAccuracy",
    "Perplexity",
    "TaskScore",
    "encode_items",
    "logits_metric",
    "model_perplexity",
    "response_perplexity",
    "shape_metric",
    "write_choice_task",
]
