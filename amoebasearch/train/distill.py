"""The fine-tuning objective (AmoebaLLM §3.4): sandwich sampling, in-place distillation and
loss-magnitude balancing. Pure functions of tensors and shapes; the trainer wires them.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from amoebasearch.data import IGNORE_INDEX
from amoebasearch.errors import UsageError
from amoebasearch.shape import Shape, ShapeSpace


def sandwich(space: ShapeSpace, rng: random.Random, k: int) -> list[Shape]:
    """K shapes for one step: the largest, the smallest, then K−2 uniform random ones.

    The largest comes first because it is the teacher of the others.
    """
    if k < 2:
        raise UsageError(f"--sandwich {k} must be at least 2 (the largest and the smallest subnet)")
    return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(k - 2)]


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions at positions 0..n-2 scored against the tokens at 1..n-1."""
    return logits[:, :-1, :], labels[:, 1:]


def ground_truth_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over labelled tokens (response tokens for instruction data)."""
    logits, labels = _shifted(logits, labels)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) per token, averaged over the same tokens the ground-truth loss uses.

    The teacher (the largest subnet's logits) must already be detached: only the student learns.
    """
    student, targets = _shifted(student, labels)
    teacher = teacher[:, :-1, :]
    mask = targets != IGNORE_INDEX
    log_p_student = F.log_softmax(student[mask].float(), dim=-1)
    log_p_teacher = F.log_softmax(teacher[mask].float(), dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")


def balance(loss: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Rescale ``loss`` to the magnitude of ``reference`` (the largest subnet's loss).

    The factor |reference| / |loss| is detached, so the value becomes |reference| while the gradient
    is the loss's own gradient times that factor: small-magnitude losses (a KL near zero) are not
    drowned out by the large ones, and vice versa.
    """
    factor = reference.detach().abs() / loss.detach().abs().clamp_min(1e-12)
    return loss * factor


def subnet_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor | None,
    reference: torch.Tensor | None,
    distill: bool = True,
    balanced: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to backpropagate, raw loss for the log) of one sampled subnet.

    With ``teacher`` None this is the largest subnet: ground truth, no rescaling. Otherwise the
    subnet learns from the teacher (or from ground truth with ``distill=False``) and, with
    ``balanced``, is rescaled to ``reference``.
    """
    if teacher is None:
        raw = ground_truth_loss(logits, labels)
        return raw, raw.detach()
    raw = distillation_loss(logits, teacher, labels) if distill else ground_truth_loss(logits, labels)
    scaled = balance(raw, reference) if balanced and reference is not None else raw
    return scaled, raw.detach()
