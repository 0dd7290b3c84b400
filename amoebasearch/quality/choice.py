"""Multiple-choice accuracy of a shape: does the subnet find the gold ending the most likely?

Each ending is scored by its mean token log-probability given the context: the sum of its
tokens' log-probabilities divided by its token count, so longer endings are not penalised for
length. That is not lm-evaluation-harness's ``acc_norm``, which divides the same sum by the
ending's length in characters (``acc_bytes``: in UTF-8 bytes; ``acc``: no division), so the two
can rank endings differently where tokens per character differ. The sums themselves equal
lm-eval's log-likelihoods of the same items (tested); `find --metric lm-eval` reports lm-eval's
own ``acc_norm``. The accuracy is the share of items whose gold ending scores highest (ties go
to the first ending, as ``argmax`` does).

The context is run once per item: context and endings are packed into one row with a tree
attention mask (each ending sees the context and itself) and position ids that restart every
ending at the end of the context. That gives the logits of one row per ending (tested) with 2.5x
fewer tokens for a 64-token context and four 16-token endings (128 instead of 320).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from amoebasearch.data import ChoiceItem, encode_text
from amoebasearch.errors import UsageError
from amoebasearch.quality.next_token import LogitsFn
from amoebasearch.shape import Shape


@dataclass(frozen=True)
class EncodedItem:
    """A `ChoiceItem` as token ids: the context, one id tuple per ending, the gold index."""

    context: tuple[int, ...]
    endings: tuple[tuple[int, ...], ...]
    gold: int


def encode_items(items: Sequence[ChoiceItem], tokenizer: Any, max_context: int = 512) -> list[EncodedItem]:
    """Tokenise items; an ending follows its context after one space unless either side already has
    whitespace there. Contexts keep their last ``max_context`` tokens.
    """
    encoded = []
    for number, item in enumerate(items, start=1):
        context = encode_text(tokenizer, item.context)[-max_context:]
        endings = []
        for ending in item.endings:
            joined = item.context[-1:].isspace() or ending[:1].isspace()
            endings.append(tuple(encode_text(tokenizer, ending if joined else " " + ending)))
        if not context or not all(endings):
            raise UsageError(f"item {number} tokenises to an empty context or ending: give it real text")
        encoded.append(EncodedItem(tuple(context), tuple(endings), item.gold))
    return encoded


def pack(items: Sequence[EncodedItem]) -> dict[str, Any]:
    """One row per item: input ids, the additive 4D tree mask, position ids, and for every ending
    token which (row, position) predicts it.
    """
    width = max(len(item.context) + sum(map(len, item.endings)) for item in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    positions = torch.zeros(len(items), width, dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(len(items), 1, 1)  # padding sees itself only
    rows, predictors, targets, lengths = [], [], [], []
    for row, item in enumerate(items):
        n = len(item.context)
        ids[row, :n] = torch.tensor(item.context)
        positions[row, :n] = torch.arange(n)
        allowed[row, :n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
        start = n
        for ending in item.endings:
            end = start + len(ending)
            ids[row, start:end] = torch.tensor(ending)
            positions[row, start:end] = torch.arange(n, n + len(ending))
            allowed[row, start:end, :n] = True
            allowed[row, start:end, start:end] = torch.ones(len(ending), len(ending), dtype=torch.bool).tril()
            predictors.extend([n - 1, *range(start, end - 1)])  # the context's last token predicts the first
            rows.extend([row] * len(ending))
            targets.extend(ending)
            lengths.append(len(ending))
            start = end
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf")).unsqueeze(1)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions,
        "rows": torch.tensor(rows),
        "predictors": torch.tensor(predictors),
        "targets": torch.tensor(targets),
        "lengths": lengths,
    }


class MultipleChoiceAccuracy:
    """Share of items whose gold ending has the highest mean token log-probability under a shape."""

    def __init__(self, logits_fn: LogitsFn, items: Sequence[EncodedItem], batch: int = 8) -> None:
        if not items:
            raise UsageError("the multiple-choice task has no items: give it at least one")
        self.logits_fn = logits_fn
        self.items = list(items)
        self.batch = batch

    @torch.no_grad()
    def scores(self, shape: Shape) -> list[torch.Tensor]:
        """Per item, the mean log-probability of each ending's tokens given the context."""
        out: list[torch.Tensor] = []
        for start in range(0, len(self.items), self.batch):
            items = self.items[start : start + self.batch]
            packed = pack(items)
            logits = self.logits_fn(
                shape, packed["input_ids"], attention_mask=packed["attention_mask"], position_ids=packed["position_ids"]
            )
            picked = logits[packed["rows"], packed["predictors"]].float().log_softmax(-1)
            token_logprobs = picked.gather(1, packed["targets"].unsqueeze(1)).squeeze(1)
            per_ending = torch.stack([part.mean() for part in token_logprobs.split(packed["lengths"])])
            out.extend(per_ending.split([len(item.endings) for item in items]))
        return out

    def __call__(self, shape: Shape) -> float:
        scores = self.scores(shape)
        correct = sum(int(s.argmax()) == item.gold for s, item in zip(scores, self.items, strict=True))
        return correct / len(self.items)
