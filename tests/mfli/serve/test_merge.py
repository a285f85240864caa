"""Merging per-query results into one list per request (item-to-item ANN baselines)."""

from __future__ import annotations

import numpy as np

from mfli.serve.merge import merge_best


def test_item_to_item_merge_keeps_each_item_at_its_best_score():
    ids = np.array([[5, 7, -1], [7, 9, 5], [1, 2, 3]], np.int64)
    sc = np.array([[0.9, 0.5, -np.inf], [0.8, 0.7, 0.1], [0.3, 0.2, 0.1]], np.float32)
    out = merge_best(ids, sc, np.array([0, 0, 2]), B=3, k=3)
    np.testing.assert_array_equal(out, [[5, 7, 9], [-1, -1, -1], [1, 2, 3]])
