"""Sorted-key lookups shared by the index, the baselines and blend mode."""

from __future__ import annotations

import numpy as np

from mfli.index.lookup import lookup_sorted, positions_in_sorted


def test_positions_in_sorted_finds_members_and_flags_the_rest():
    keys = np.array([2, 5, 9], np.int64)
    pos, found = positions_in_sorted(keys, np.array([[9, 1], [5, 10]]))
    np.testing.assert_array_equal(found, [[True, False], [True, False]])
    np.testing.assert_array_equal(pos[found], [2, 1])
    pos, found = positions_in_sorted(np.zeros(0, np.int64), np.array([3]))
    assert not found.any()
    assert lookup_sorted(keys, np.array([10, 50, 90]), np.array([5, 6]), missing=-7).tolist() == [50, -7]
