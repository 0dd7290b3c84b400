"""A shape of the supernet as an lm-evaluation-harness model: `ShapeLM` answers lm-eval's
log-likelihood requests through a `LogitsFn`, so any lm-eval task scores any shape in place, with
no export. Set ``lm.shape`` between evaluations; one wrapper serves every shape.

Requests are tokenised and scored as lm-eval's own Hugging Face model (``HFLM``) does: the
context alone and context + continuation are encoded, and the continuation is what the second
adds to the first (lm-eval's ``TemplateLM._encode_pair``, inherited); a request longer than the
model's context is cut from the left; the answer is the continuation's summed log-probability
and whether greedy decoding would produce it. How the rows run differs: the continuations of one
context (a multiple-choice item's choices) share one row behind a tree mask, as
`MultipleChoiceAccuracy` packs endings (`amoebasearch.quality.choice.pack`), so the context runs
once: about 2.5x fewer tokens for four choices, the same log-likelihoods up to float rounding
(tested against HFLM). Log-softmax runs in float32 whatever the model's dtype.

Importing this module imports lm-eval; `amoebasearch.quality.lm_eval_tasks` imports it only when
an lm-eval task is asked for.
"""

from __future__ import annotations

from typing import Any

import torch

from amoebasearch.errors import UsageError
from amoebasearch.quality.choice import EncodedItem, pack
from amoebasearch.quality.next_token import LogitsFn
from amoebasearch.shape import Shape

NEEDS_LM_EVAL = "`--metric lm-eval` needs lm-eval: pip install 'amoebasearch[lm-eval]'"
GENERATIVE = "generative tasks are not supported as a search metric: choose loglikelihood tasks"
UNSET_LENGTH = int(1e30)  # transformers' model_max_length when a tokenizer sets none
ROW_TOKENS = 1024  # a packed row's size: a context's continuations beyond it go into further rows

try:
    from lm_eval.api.model import TemplateLM
except ImportError:
    raise UsageError(NEEDS_LM_EVAL) from None


def context_length(config: Any, tokenizer: Any, default: int = 2048) -> int:
    """The longest row lm-eval's HFLM gives this model: its config's position limit, else the
    tokenizer's where it sets one, else lm-eval's default (2048)."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit is not None and limit < UNSET_LENGTH else default


class ShapeLM(TemplateLM):
    """lm-eval's model interface over ``logits_fn(shape, input_ids)`` at ``self.shape``."""

    def __init__(
        self,
        logits_fn: LogitsFn,
        tokenizer: Any,
        max_length: int,
        shape: Shape | None = None,
        batch: int = 8,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.logits_fn = logits_fn
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.shape = shape
        self.batch = batch
        self._device = torch.device(device)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is conditioned on: BOS, else EOS (as HFLM)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """The tokenizer's own special-token default, except for text that already starts with the
        prefix token (HFLM's rule)."""
        if add_special_tokens is None and string.startswith(self.tokenizer.decode(self.prefix_token_id)):
            add_special_tokens = False
        special = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return list(self.tokenizer.encode(string, **special))

    def loglikelihood(self, requests: list, disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=True)

    def _packs(self, requests: list) -> list[tuple[tuple[int, ...], list[int]]]:
        """The rows to run: (context ids, indices of the requests whose continuations follow it). A
        context's continuations share rows of up to `ROW_TOKENS` tokens; a request longer than the
        model's context is cut from the left and runs alone."""
        shared: dict[tuple[int, ...], list[int]] = {}
        packs = []
        for index, (_, context, continuation) in enumerate(requests):
            if not context or not continuation or len(continuation) > self.max_length:
                raise UsageError(
                    f"an lm-eval request has {len(context)} context and {len(continuation)} continuation tokens: "
                    f"each needs at least one, and the continuation at most the model's {self.max_length}"
                )
            if len(context) + len(continuation) > self.max_length + 1:  # the last token predicts nothing
                kept = (context + continuation)[-(self.max_length + 1) :]
                packs.append((tuple(kept[: len(kept) - len(continuation)]), [index]))
            else:
                shared.setdefault(tuple(context), []).append(index)
        for context, members in shared.items():
            row: list[int] = []
            used = len(context)
            for index in members:
                size = len(requests[index][2])
                if row and used + size > ROW_TOKENS:
                    packs.append((context, row))
                    row, used = [], len(context)
                row.append(index)
                used += size
            packs.append((context, row))
        return packs

    @torch.no_grad()
    def _loglikelihood_tokens(
        self, requests: list, disable_tqdm: bool = True, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(sum of the continuation's token log-probabilities, whether greedy decoding yields it) per
        ``(strings, context ids, continuation ids)`` request, in request order."""
        if self.shape is None:
            raise ValueError("ShapeLM.shape is unset: set the shape to score before evaluating")
        packs = self._packs(requests)
        packs.sort(key=lambda p: -(len(p[0]) + sum(len(requests[i][2]) for i in p[1])))  # little padding per batch
        answers: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for start in range(0, len(packs), self.batch):
            chosen = packs[start : start + self.batch]
            rows = pack(
                [EncodedItem(context, tuple(requests[i][2] for i in members), 0) for context, members in chosen]
            )
            logits = self.logits_fn(
                self.shape,
                rows["input_ids"].to(self._device),
                attention_mask=rows["attention_mask"].to(self._device),
                position_ids=rows["position_ids"].to(self._device),
            )
            at = (rows["rows"].to(logits.device), rows["predictors"].to(logits.device))
            logprobs = logits[at].float().log_softmax(-1)
            targets = rows["targets"].to(logits.device)
            picked = logprobs.gather(1, targets.unsqueeze(1)).squeeze(1).split(rows["lengths"])
            greedy = (logprobs.argmax(-1) == targets).split(rows["lengths"])
            members = [index for _, indices in chosen for index in indices]
            for index, token_logprobs, hits in zip(members, picked, greedy, strict=True):
                answers[index] = (float(token_logprobs.sum()), bool(hits.all()))
        return answers

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = True) -> list[float]:
        """Each text's log-likelihood over windows of the model's context, every token predicted once
        (lm-eval's rolling windows, as HFLM)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owners = [], []
        for owner, (text, *_) in enumerate(request.args for request in requests):
            tokens = self.tok_encode(text)
            for window in get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, context_len=1):
                windows.append((None, *make_disjoint_window(window)))
                owners.append(owner)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows), strict=True):
            totals[owner] += logprob
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = True) -> list[str]:
        raise UsageError(GENERATIVE)
