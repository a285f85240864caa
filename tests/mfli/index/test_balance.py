"""Balance statistics against hand-computed values."""

from __future__ import annotations

import pytest

from mfli.index.balance import balance_stats, format_balance, gini, top_share


def test_gini_hand_computed():
    assert gini([5, 5, 5, 5]) == 0.0
    # sorted 1,2,3,4: sum (2i-n-1) x_i = -3 -2 +3 +12 = 10; / (4 * 10) = 0.25
    assert gini([4, 1, 3, 2]) == pytest.approx(0.25)
    # one cluster holds everything among four: (3 * 8) / (4 * 8) = 0.75
    assert gini([0, 0, 0, 8]) == pytest.approx(0.75)
    assert gini([]) == 0.0


def test_top_share_hand_computed():
    sizes = [100] + [1] * 199  # 200 clusters: the top 1% is the largest 2
    assert top_share(sizes) == pytest.approx(101 / 299)
    assert top_share([3, 1], frac=0.5) == pytest.approx(0.75)


def test_balance_stats_fields_and_histogram():
    s = balance_stats([0, 1, 3, 4, 8, 8])
    assert (s.n_clusters, s.n_entries, s.max_size, s.min_size) == (5, 24, 8, 1)
    assert s.mean_size == pytest.approx(4.8) and s.median_size == 4.0
    assert s.hist_edges == [1, 2, 4, 8, 16]
    assert s.hist_counts == [1, 1, 1, 2]  # [1,2): 1, [2,4): 3, [4,8): 4, [8,16]: 8, 8
    assert s.as_dict()["gini"] == pytest.approx(gini([1, 3, 4, 8, 8]))
    text = format_balance([s], [balance_stats([5, 5])], ["eng"])
    assert "eng" in text and "before" in text and "after" in text
