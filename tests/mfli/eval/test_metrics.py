"""Every metric against hand-computed examples (REFERENCE.md section 4)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mfli.eval.metrics import (
    METRIC_KEYS,
    categories_by_item,
    codebook_health,
    cold_recall_at_k,
    coverage_at_k,
    evaluate_retrieval,
    index_health,
    long_tail_share_at_k,
    positives_by_user,
    recall_at_k,
    tail_items,
    topic_match_at_k,
    train_counts,
)

RETRIEVED = np.array([[1, 2, 3, 4], [5, 6, -1, -1], [7, 8, 9, 10]])
POSITIVES = [np.array([2, 4, 11]), np.array([6]), np.array([], dtype=np.int64)]
CATS = {1: {"A"}, 2: {"B"}, 3: {"A", "C"}, 4: {"D"}, 5: {"E"}, 6: {"E"}, 11: {"C"}}
COUNTS = {1: 10, 2: 9, 3: 8, 5: 7, 7: 1}
CATALOGUE = np.arange(1, 13)


def test_recall():
    # user 0: {1,2} hits 2 of {2,4,11}; user 1: hits its only positive; user 2 has none (skipped)
    assert recall_at_k(RETRIEVED, POSITIVES, 2) == pytest.approx((1 / 3 + 1) / 2)
    assert recall_at_k(RETRIEVED, POSITIVES, 4) == pytest.approx((2 / 3 + 1) / 2)
    assert math.isnan(recall_at_k(RETRIEVED[2:], POSITIVES[2:], 4))
    with pytest.raises(ValueError, match="fewer than K=5"):
        recall_at_k(RETRIEVED, POSITIVES, 5)
    with pytest.raises(ValueError, match="positive lists"):
        recall_at_k(RETRIEVED, POSITIVES[:2], 2)


def test_cold_recall():
    cold = [4, 6, 11]  # user 0 cold positives {4, 11}, user 1 {6}
    assert cold_recall_at_k(RETRIEVED, POSITIVES, cold, 2) == pytest.approx((0 + 1) / 2)
    assert cold_recall_at_k(RETRIEVED, POSITIVES, cold, 4) == pytest.approx((1 / 2 + 1) / 2)
    # only users with a cold positive count
    assert cold_recall_at_k(RETRIEVED, POSITIVES, [11], 4) == pytest.approx(0.0)


def test_topic_match():
    # user 0 positives' categories {B, D, C}: of 1{A} 2{B} 3{A,C} 4{D} three match; user 1: 5{E} 6{E} both
    assert topic_match_at_k(RETRIEVED, POSITIVES, CATS, 4) == pytest.approx((3 / 4 + 1) / 2)
    assert topic_match_at_k(RETRIEVED, POSITIVES, CATS, 2) == pytest.approx((1 / 2 + 1) / 2)


def test_long_tail_and_coverage():
    # 12 items, tail = 9 least popular by (count, id): 4 6 8 9 10 11 12 (0 events), 7 (1), 5 (7)
    assert tail_items(CATALOGUE, COUNTS).tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 12]
    # 10 retrieved slots, of which 4 5 6 7 8 9 10 are tail items
    assert long_tail_share_at_k(RETRIEVED, CATALOGUE, COUNTS, 4) == pytest.approx(0.7)
    assert coverage_at_k(RETRIEVED, CATALOGUE, 4) == pytest.approx(10 / 12)
    assert coverage_at_k(RETRIEVED, CATALOGUE, 2) == pytest.approx(6 / 12)


def test_evaluate_retrieval_keys_and_values():
    wide = np.full((3, 200), -1)
    wide[:, :4] = RETRIEVED
    out = evaluate_retrieval(wide, POSITIVES, cold_items=[4, 6, 11], item_categories=CATS, train_counts=COUNTS,
                             catalogue=CATALOGUE)
    assert tuple(out) == METRIC_KEYS
    assert out["recall@50"] == out["recall@200"] == pytest.approx(5 / 6)
    assert out["cold_recall@100"] == pytest.approx(0.75)
    assert out["topic_match@100"] == pytest.approx(0.875)
    assert out["long_tail@100"] == pytest.approx(0.7)
    assert out["coverage@100"] == pytest.approx(10 / 12)


def test_inputs_from_canonical_tables():
    test = pd.DataFrame({"user_id": [1, 1, 2, 1], "item_id": [10, 11, 12, 10]})
    pos = positives_by_user(test, [2, 1, 3])
    assert [sorted(p.tolist()) for p in pos] == [[12], [10, 11], []]
    items = pd.DataFrame({"item_id": [10, 11], "categories": [["T", "T>a"], []]})
    assert categories_by_item(items) == {10: frozenset({"T", "T>a"}), 11: frozenset()}
    assert train_counts(test) == {10: 2, 11: 1, 12: 1}


def test_codebook_health_hand_computed():
    codes = np.array([[0, 0], [0, 1], [0, 1], [1, 1]])[:, None, :]  # (N=4, F=1, L=2), M=2
    h = codebook_health(codes, M=2)
    p = np.array([0.75, 0.25])
    perplexity = float(np.exp(-(p * np.log(p)).sum()))
    assert h["f0.l0.utilisation"] == 1.0 and h["f0.l0.perplexity"] == pytest.approx(perplexity)
    assert h["f0.l1.perplexity"] == pytest.approx(perplexity)
    # paths 0, 1, 1, 3: two of four items share a path; the largest path holds half the items
    assert h["f0.collision_rate"] == 0.5 and h["f0.max_cluster_share"] == 0.5 and h["f0.paths_used"] == 3
    h4 = codebook_health(codes, M=4)
    assert h4["f0.l0.utilisation"] == 0.5


def test_index_health():
    from types import SimpleNamespace

    index = SimpleNamespace(facets=[SimpleNamespace(sizes=lambda: np.array([2, 2, 4]))])
    h = index_health(index)
    assert h["f0.clusters"] == 3 and h["f0.max_size"] == 4 and h["f0.max_cluster_share"] == 0.5
    # sorted 2, 2, 4: sum (2i - n - 1) x_i = -2*2 + 0*2 + 2*4 = 4; / (3 * 8)
    assert h["f0.gini"] == pytest.approx(4 / 24)
