"""Quality of a shape, in one place for every stage: the calibration metrics `plan` minimises, the
held-out perplexities `train` and `find` report, and multiple-choice accuracy."""

from amoebasearch.quality.choice import EncodedItem, MultipleChoiceAccuracy, encode_items
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
# perplexity (lower is better), multiple-choice accuracy (higher is better).
HIGHER_IS_BETTER = {"ppl": False, "instruct": False, "accuracy": True}
METRIC_LABELS = {
    "ppl": "held-out perplexity",
    "instruct": "held-out instruction perplexity",
    "accuracy": "multiple-choice accuracy",
}

__all__ = [
    "HIGHER_IS_BETTER",
    "METRIC_LABELS",
    "EncodedItem",
    "HeldOutPerplexity",
    "InstructionPerplexity",
    "KLToFull",
    "LogitsFn",
    "Metric",
    "MultipleChoiceAccuracy",
    "Perplexity",
    "encode_items",
    "logits_metric",
    "model_perplexity",
    "response_perplexity",
    "shape_metric",
]
