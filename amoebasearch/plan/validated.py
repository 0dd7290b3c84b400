"""Depth selection that holds on unseen text: candidates fitted on one part of the calibration text,
chosen per depth on another.

A search that minimises a metric on a few calibration chunks fits those chunks: the DP can pick
a contiguous run of layers whose removal happens to cost little there and much elsewhere. The
remedy is the ordinary one of model selection. The calibration chunks are split in two disjoint
parts (`split_for_validation`); every method proposes its removal set for each depth from the
*fit* part (the DP's best sets, ShortGPT's block influence, Shortened-LLaMA's one-shot
perplexity), and `choose_on_validation` keeps, per depth, the proposal with the lowest metric on
the *validation* part. No proposal ever sees the text it is judged on, so a set that only fits
the fit part loses to one that generalises, and the result is never worse on the validation
text than any baseline it includes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from amoebasearch.errors import UsageError
from amoebasearch.plan.depth import DepthSelection

VALIDATION_SHARE = 0.5  # of the calibration chunks, at least one


def split_for_validation(chunks: torch.Tensor, share: float = VALIDATION_SHARE) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, validation): disjoint chunk sets, the validation part ``share`` of the chunks (at least
    one, and at least one left to fit on). The chunks are already a seeded random draw, so the
    last ones are as random as any."""
    if len(chunks) < 2:
        raise UsageError(
            f"validated depth selection needs at least 2 calibration chunks, got {len(chunks)}: "
            "raise --tokens or lower --seq-len"
        )
    held = min(len(chunks) - 1, max(1, round(len(chunks) * share)))
    return chunks[: len(chunks) - held], chunks[len(chunks) - held :]


def choose_on_validation(
    proposals: Mapping[str, DepthSelection],
    score: Callable[[tuple[int, ...]], float],
    extra: Mapping[int, Mapping[str, tuple[int, ...]]] | None = None,
) -> DepthSelection:
    """Per removal count, the proposed removal set with the lowest ``score`` (validation metric).

    ``proposals`` maps a source name to its selection (every one covering the same removal counts);
    ``extra`` adds further named sets per removal count (e.g. the DP's runner-up entries). Ties go
    to the source named first. The result records every candidate's score per removal count
    (``validation``) and which source won (``chosen_from``).
    """
    counts = sorted(set.intersection(*(set(p.removal) for p in proposals.values())))
    removal, values, validation, chosen_from = {}, {}, {}, {}
    for m in counts:
        named = {name: tuple(p.removal[m]) for name, p in proposals.items()}
        for name, removed in (extra or {}).get(m, {}).items():
            named.setdefault(name, tuple(removed))
        scored: dict[tuple[int, ...], float] = {}
        row = {}
        for name, removed in named.items():
            if removed not in scored:
                scored[removed] = score(removed)
            row[name] = scored[removed]
        winner = min(row, key=lambda name: row[name])  # min keeps the first of equal values
        removal[m], values[m], validation[m], chosen_from[m] = named[winner], row[winner], row, winner
    return DepthSelection("validated", removal, metric_values=values, validation=validation, chosen_from=chosen_from)
