"""The objective: sandwich sampling, response-only cross-entropy, KL distillation, loss-magnitude balancing."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from amoebasearch.data import IGNORE_INDEX
from amoebasearch.errors import UsageError
from amoebasearch.shape import ModelDims, ShapeSpace
from amoebasearch.train.distill import (
    balance,
    distillation_loss,
    ground_truth_loss,
    sandwich,
    subnet_losses,
)

DIMS = ModelDims(num_layers=6, num_heads=4, num_kv_heads=2, ffn=128, hidden=64, head_dim=16)


def test_balance_rescales_value_and_gradient_by_the_detached_ratio():
    # loss = x^2 at x=2 -> value 4, d/dx = 4. Reference 8 -> factor 8/4 = 2 (detached):
    # value 8, gradient 2 * 4 = 8; the reference gets no gradient.
    x = torch.tensor(2.0, requires_grad=True)
    reference = torch.tensor(8.0, requires_grad=True)
    scaled = balance(x**2, reference)
    scaled.backward()
    assert scaled.detach().item() == pytest.approx(8.0)
    assert float(x.grad) == pytest.approx(8.0)
    assert reference.grad is None


def test_balance_hand_computed_pair_of_subnets():
    # Largest CE 3.0; a subnet's KL 0.5 with gradient 1 w.r.t. its parameter -> scaled to 3.0, gradient 6.
    w = torch.tensor(0.5, requires_grad=True)
    scaled = balance(w * 1.0, torch.tensor(3.0))
    scaled.backward()
    assert scaled.detach().item() == pytest.approx(3.0)
    assert float(w.grad) == pytest.approx(6.0)


def test_subnet_losses_switches():
    torch.manual_seed(0)
    labels = torch.randint(0, 11, (2, 6))
    labels[:, :2] = IGNORE_INDEX
    teacher = torch.randn(2, 6, 11)
    student = torch.randn(2, 6, 11)
    reference = ground_truth_loss(teacher, labels)

    largest, raw = subnet_losses(teacher, labels, None, None)
    assert torch.equal(largest, ground_truth_loss(teacher, labels)) and torch.equal(raw, largest)

    balanced, raw = subnet_losses(student, labels, teacher, reference)
    assert float(raw) == pytest.approx(distillation_loss(student, teacher, labels).item())
    assert balanced.item() == pytest.approx(float(reference))

    plain, raw = subnet_losses(student, labels, teacher, reference, balanced=False)
    assert plain.item() == pytest.approx(float(raw))

    ground, _ = subnet_losses(student, labels, teacher, reference, distill=False, balanced=False)
    assert ground.item() == pytest.approx(float(ground_truth_loss(student, labels)))


def test_distillation_is_zero_for_identical_logits_and_matches_kl():
    torch.manual_seed(1)
    logits = torch.randn(1, 5, 7)
    labels = torch.randint(0, 7, (1, 5))
    assert float(distillation_loss(logits, logits, labels)) == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(1, 5, 7)
    p = F.softmax(logits[0, :-1], -1)
    expected = (p * (p.log() - F.log_softmax(student[0, :-1], -1))).sum(-1).mean()
    assert float(distillation_loss(student, logits, labels)) == pytest.approx(float(expected), rel=1e-5)


def test_ground_truth_ignores_prompt_tokens():
    torch.manual_seed(2)
    logits = torch.randn(1, 6, 9)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 4, 5, 6]])
    changed = logits.clone()
    changed[0, :2] += 10 * torch.randn(2, 9)  # positions 0,1 predict prompt tokens 1,2: no loss there
    assert torch.allclose(ground_truth_loss(logits, labels), ground_truth_loss(changed, labels))


def test_sandwich_is_largest_smallest_then_random_and_seeded():
    space = ShapeSpace(DIMS, ffn_step=32, min_depth=2)
    shapes = sandwich(space, random.Random(7), 5)
    assert len(shapes) == 5
    assert shapes[0] == space.largest() and shapes[1] == space.smallest()
    assert all(s in space for s in shapes)
    assert shapes == sandwich(space, random.Random(7), 5)
    with pytest.raises(UsageError, match="at least 2"):
        sandwich(space, random.Random(0), 1)
