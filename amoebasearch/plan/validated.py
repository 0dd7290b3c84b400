"""Depth selection that holds on unseen text: the DP's set only where it beats the published
criteria on calibration text it was not fitted on, by more than that text's noise.

A search that minimises a metric on a few calibration chunks fits those chunks: the DP can pick a
contiguous run of layers whose removal happens to cost little there and much elsewhere. One-shot
rankings (ShortGPT's block influence, Shortened-LLaMA's one-shot perplexity) have little capacity
to overfit, but are often far from the best set. Which wins depends on the text and the depth,
so the choice is made per depth, on the user's own calibration text:

1. The chunks are cut into a *fit* half and a *validation* half (`split_in_two`).
2. The one-shot rankings are computed on all chunks: exactly the baselines a user would get.
3. The DP runs on the fit half only.
4. Every set is scored per validation chunk. The better baseline (lower validation perplexity)
   is the default; the DP's set replaces it only where its per-chunk losses are lower by more than
   one standard error of the paired difference (`dp_holds`). The baselines saw the validation
   chunks and the DP did not, so the comparison leans towards the baselines: the DP must win on
   unseen text, clearly.

So the result is a published baseline's set wherever the DP's advantage does not hold up, and the
DP's set wherever it does. Scores are perplexities; losses are mean negative log-likelihoods.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from amoebasearch.errors import UsageError
from amoebasearch.plan.depth import DepthSelection

ChunkLosses = Callable[[tuple[int, ...]], torch.Tensor]  # removed layers -> loss per validation chunk


def split_in_two(chunks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, validation): disjoint halves of the calibration chunks (validation takes the odd one out).
    The chunks are already a seeded random draw, so consecutive halves are as random as any."""
    if len(chunks) < 2:
        raise UsageError(
            f"validated depth selection needs at least 2 calibration chunks, got {len(chunks)}: "
            "raise --tokens or lower --seq-len"
        )
    half = len(chunks) // 2
    return chunks[:half], chunks[half:]


def dp_holds(dp_losses: torch.Tensor, baseline_losses: torch.Tensor) -> bool:
    """Whether the DP's per-chunk losses are lower than the baseline's by more than one standard
    error of their paired difference (with one chunk: simply lower)."""
    difference = (dp_losses - baseline_losses).double()
    spread = float(difference.std() / math.sqrt(len(difference))) if len(difference) > 1 else 0.0
    return float(difference.mean()) + spread < 0


def choose_on_validation(
    baselines: Mapping[str, DepthSelection], dp: DepthSelection, losses: ChunkLosses, name: str = "dp"
) -> DepthSelection:
    """Per removal count, the better baseline's set, or the DP's where `dp_holds` (module docstring).

    ``losses`` gives a set's loss per validation chunk. Ties between baselines go to the one named
    first. The result records every source's validation perplexity per removal count
    (``validation``) and the source chosen (``chosen_from``).
    """
    counts = sorted(set.intersection(*(set(s.removal) for s in [*baselines.values(), dp])))
    removal, values, validation, chosen_from = {}, {}, {}, {}
    for m in counts:
        sources = {**{source: s.removal[m] for source, s in baselines.items()}, name: dp.removal[m]}
        chunk_losses = {source: losses(tuple(removed)) for source, removed in sources.items()}
        row = {source: math.exp(float(value.mean())) for source, value in chunk_losses.items()}
        best = min(baselines, key=lambda source: row[source])  # min keeps the first of equal values
        winner = name if dp_holds(chunk_losses[name], chunk_losses[best]) else best
        removal[m], values[m], validation[m], chosen_from[m] = tuple(sources[winner]), row[winner], row, winner
    return DepthSelection("validated", removal, metric_values=values, validation=validation, chosen_from=chosen_from)
