"""Trending items: the most engaged items of the latest training events, one list for every request."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfli.index.trending import trending_items, trending_lists


def _events(items: list[int], days: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": range(len(items)), "item_id": items,
                         "event_ts": pd.to_datetime(days, unit="D", utc=True)})


def test_counts_only_the_latest_window_most_engaged_first():
    # item 1 is the most engaged overall, but all its events are old
    ev = _events([1, 1, 1, 1, 2, 3, 3, 2, 3, 4], [0, 0, 1, 1, 2, 6, 7, 8, 9, 9])
    np.testing.assert_array_equal(trending_items(ev, window=0.5), [3, 2, 4])
    np.testing.assert_array_equal(trending_items(ev, window=1.0), [1, 3, 2, 4])
    np.testing.assert_array_equal(trending_items(ev, window=0.5, keep=2), [3, 2])


def test_ties_go_to_the_lower_id_and_row_order_does_not_matter():
    ev = _events([9, 5, 7, 5, 9, 7], [3, 3, 3, 4, 4, 4])
    np.testing.assert_array_equal(trending_items(ev, window=1.0), [5, 7, 9])
    shuffled = ev.sample(frac=1.0, random_state=0)
    for w in (0.1, 0.5, 1.0):
        np.testing.assert_array_equal(trending_items(shuffled, window=w), trending_items(ev, window=w))


def test_every_event_at_the_cut_off_timestamp_counts():
    # 10% of 6 events is one, but three share the latest timestamp
    ev = _events([1, 2, 3, 4, 4, 5], [0, 1, 2, 5, 5, 5])
    np.testing.assert_array_equal(trending_items(ev, window=0.1), [4, 5])


def test_without_timestamps_every_event_counts_and_bad_windows_fail():
    ev = _events([1, 2, 2], [0, 1, 2]).drop(columns="event_ts")
    np.testing.assert_array_equal(trending_items(ev), [2, 1])
    assert trending_items(ev.iloc[:0]).shape == (0,)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="window must be in"):
            trending_items(ev, window=bad)


def test_lists_exclude_each_history_and_pad():
    ranked = np.array([10, 11, 12, 13], np.int64)
    out = trending_lists(ranked, [np.array([11, 99]), np.array([], np.int64), [10, 11, 12, 13]], k=3)
    np.testing.assert_array_equal(out, [[10, 12, 13], [10, 11, 12], [-1, -1, -1]])
    # an explicit exclusion replaces the history
    np.testing.assert_array_equal(trending_lists(ranked, [[10]], k=2, exclude=[[12]]), [[10, 11]])
