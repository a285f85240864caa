"""Timing harness: warm-ups before the timed calls, batch-1 latencies over the first b1 queries."""

from __future__ import annotations

import numpy as np

from mfli.eval.serving.timing import timed_runs


def test_timed_runs_warms_both_paths_then_times_each_query():
    calls: list[tuple[int, int]] = []

    def search(sl: slice) -> np.ndarray:
        calls.append((sl.start, sl.stop))
        return np.tile(np.arange(sl.start, sl.stop)[:, None], (1, 3))

    lat, total, ids = timed_runs(search, 20, 5, 8)
    # a batch warm-up and a one-query warm-up (a method may serve batch 1 by another path), untimed
    assert calls[:2] == [(0, 8), (0, 1)]
    assert calls[2:7] == [(i, i + 1) for i in range(5)] and len(lat) == 5
    assert calls[7:] == [(0, 8), (8, 16), (16, 20)] and total > 0
    np.testing.assert_array_equal(ids[:, 0], np.arange(20))
    # no batch-1 timing asked: no one-query warm-up either
    calls.clear()
    lat, _, _ = timed_runs(search, 4, 0, 8)
    assert lat == [] and calls == [(0, 4), (0, 4)]
