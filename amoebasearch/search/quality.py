"""Quality of a shape through the supernet (or the plan-only base model): held-out perplexity and
response perplexity on held-out instruction pairs here, multiple-choice accuracy in
`amoebasearch.search.choice`.

``logits_fn(shape, input_ids)`` is the only thing a quality source must provide: a trained
supernet runs its SMoL forward, a plan-only supernet runs the base model's elastic forward
(`amoebasearch.elastic.elastic_logits`). Both also take an optional custom 4D ``attention_mask``
and ``position_ids``, which the multiple-choice evaluator uses to score all endings in one row.
"""

from __future__ import annotations

from typing import Protocol

import torch

from amoebasearch.plan.evaluate import logits_metric
from amoebasearch.shape import Shape
from amoebasearch.train.evaluate import response_perplexity
from amoebasearch.train.instruct import Tokenised

# Every quality metric and its direction: held-out perplexity and instruction response perplexity
# (lower is better), multiple-choice accuracy (`amoebasearch.search.choice`, higher is better).
HIGHER_IS_BETTER = {"ppl": False, "instruct": False, "accuracy": True}
METRIC_LABELS = {
    "ppl": "held-out perplexity",
    "instruct": "held-out instruction perplexity",
    "accuracy": "multiple-choice accuracy",
}


class LogitsFn(Protocol):
    def __call__(
        self,
        shape: Shape,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


class HeldOutPerplexity:
    """exp(mean next-token NLL) of a shape over fixed held-out chunks ([n, seq_len] token ids)."""

    def __init__(self, logits_fn: LogitsFn, chunks: torch.Tensor, batch: int = 4) -> None:
        self.logits_fn = logits_fn
        self.chunks = chunks
        self.batch = batch

    def __call__(self, shape: Shape) -> float:
        return logits_metric(self.logits_fn, shape, self.chunks, batch_size=self.batch)


class InstructionPerplexity:
    """exp(mean NLL of the response tokens) of a shape over fixed instruction pairs, each prompt in
    the chat template the model is served with (`amoebasearch.data.prompt_ids`)."""

    def __init__(self, logits_fn: LogitsFn, pairs: list[Tokenised], pad_id: int, batch: int = 8) -> None:
        self.logits_fn = logits_fn
        self.pairs = pairs
        self.pad_id = pad_id
        self.batch = batch

    def __call__(self, shape: Shape) -> float:
        return response_perplexity(self.logits_fn, shape, self.pairs, self.batch, self.pad_id)
