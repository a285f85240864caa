"""In-batch sampled softmax: hand-computed values, logQ correction, duplicate and row masks."""

from __future__ import annotations

import math

import pytest
import torch

from mfli.model.losses import mixture_log_q, sampled_softmax


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


def test_mixture_log_q_is_log_expected_count():
    log_p = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    got = mixture_log_q(log_p, n_batch=8, n_uniform=4, n_items=3)
    want = torch.log(8 * torch.tensor([0.5, 0.25, 0.25]) + 4 / 3)
    assert torch.allclose(got, want)
    # without uniform negatives: log_p shifted by a constant (the plain in-batch correction)
    assert torch.allclose(mixture_log_q(log_p, 8, 0, 3), log_p + math.log(8))


def test_uniform_negatives_match_a_hand_computed_softmax():
    torch.manual_seed(0)
    q, t, n = torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 4)
    ids, nids = torch.tensor([1, 2, 3]), torch.tensor([7, 2])  # negative 2 is row 1's positive
    lq, nlq = torch.tensor([0.1, -0.2, 0.3]), torch.tensor([-1.0, 0.5])
    got = sampled_softmax(q, t, ids, 0.5, lq, 1.0, None, n, nids, nlq)
    logits = torch.cat([q @ t.T / 0.5 - lq[None], q @ n.T / 0.5 - nlq[None]], 1)
    logits[1, 4] = float("-inf")  # never a negative of itself
    want = torch.nn.functional.cross_entropy(logits, torch.arange(3))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # more uniform negatives can only raise the loss of each row (more mass in the denominator)
    assert got.item() > sampled_softmax(q, t, ids, 0.5, lq, 1.0).item()
