"""In-batch sampled softmax: hand-computed values, logQ correction, duplicate and row masks."""

from __future__ import annotations

import math

import pytest
import torch

from mfli.model.losses import sampled_softmax


def test_matches_hand_computed_cross_entropy():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # row 0 logits (tau=0.5): [2.0, 1.2]; row 1: [0.0, 1.6]
    expect = (-(2.0 - math.log(math.exp(2.0) + math.exp(1.2))) - (1.6 - math.log(1 + math.exp(1.6)))) / 2
    got = sampled_softmax(q, t, torch.tensor([10, 11]), 0.5)
    assert got.item() == pytest.approx(expect, rel=1e-6)


def test_logq_correction_shifts_logits_by_log_probability():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    log_q = torch.log(torch.tensor([0.5, 0.1]))
    # row 0 logits: [2.0 - ln .5, 1.2 - ln .1]
    a, b = 2.0 - math.log(0.5), 1.2 - math.log(0.1)
    row0 = -(a - math.log(math.exp(a) + math.exp(b)))
    got = sampled_softmax(q, t, torch.tensor([1, 2]), 0.5, log_q=log_q, row_mask=torch.tensor([True, False]))
    assert got.item() == pytest.approx(row0, rel=1e-6)
    half = sampled_softmax(q, t, torch.tensor([1, 2]), 0.5, log_q=log_q, logq_alpha=0.0)
    assert half.item() == pytest.approx(sampled_softmax(q, t, torch.tensor([1, 2]), 0.5).item())


def test_duplicate_positives_are_not_negatives_and_empty_mask_is_zero():
    q = torch.eye(3)
    t = torch.eye(3)
    t[2] = t[0]
    ids = torch.tensor([7, 8, 7])  # rows 0 and 2 share their positive
    masked = sampled_softmax(q, t, ids, 1.0)
    # row 0: logits [1, 0, -inf]; row 1: [0, 1, 0]; row 2: [-inf, 0, 0] with target 2 (value 0)
    r0 = -(1 - math.log(math.e + 1))
    r1 = -(1 - math.log(math.e + 2))
    r2 = -(0 - math.log(2))
    assert masked.item() == pytest.approx((r0 + r1 + r2) / 3, rel=1e-6)
    x = torch.randn(3, 3, requires_grad=True)
    zero = sampled_softmax(x, t, ids, 1.0, row_mask=torch.zeros(3, dtype=torch.bool))
    assert zero.item() == 0.0
    zero.backward()  # keeps the graph
    assert x.grad.abs().sum() == 0
