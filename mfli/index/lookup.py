"""Vectorised lookups in sorted key arrays (item ids -> rows, cluster ids -> positions, paths -> nodes)."""

from __future__ import annotations

import numpy as np


def lookup_sorted(keys: np.ndarray, values: np.ndarray, query: np.ndarray, missing: int = -1) -> np.ndarray:
    """Vectorised dictionary lookup: ``values[i]`` where ``keys[i] == query``, else ``missing``.

    Args:
        keys: ``(K,)`` sorted ascending, unique.
        values: ``(K,)``.
        query: ``(...)`` keys to look up.
    """
    query = np.asarray(query)
    if keys.size == 0:
        return np.full(query.shape, missing, dtype=values.dtype)
    pos = np.searchsorted(keys, query)
    pos_c = np.minimum(pos, keys.size - 1)
    hit = keys[pos_c] == query
    return np.where(hit, values[pos_c], missing)


def positions_in_sorted(keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where ``query`` sits in ``keys`` (sorted ascending, unique).

    Returns:
        ``(pos, found)``: ``pos (...)`` int64 positions (meaningful where found), ``found (...)`` bool.
    """
    query = np.asarray(query)
    if keys.size == 0:
        return np.zeros(query.shape, np.int64), np.zeros(query.shape, bool)
    pos = np.searchsorted(keys, query)
    found = keys[np.minimum(pos, keys.size - 1)] == query
    return pos.astype(np.int64, copy=False), found
