"""Trending items: the items most engaged with in the latest share of the training events.

A fourth list for blend mode (:mod:`mfli.serve.blend`). The towers, the co-engagement table and the
neighbour lists all rank items for *this* user; none knows what everyone is engaging with right now,
which is what a time-based hold-out (tomorrow's events) rewards. The list is one ranking for every
user, computed once per snapshot from its training events: items by event count over the latest
``window`` of the events (by time; ties at the cut-off kept, ties in count by lower id), at most
``keep`` of them. A request reads it minus its history. Its weight is chosen on the validation split
like the other lists' (0 leaves it out). Usage::

    ranked = trending_items(train_events)              # (n,) int64 ids, most engaged first
    ids = trending_lists(ranked, histories, k=200)     # (B, k) int64, each history excluded, -1 padding
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from mfli.baselines.popularity import Popularity, ranked_positions

#: share of the training events (the latest, by time) counted: what "now" means to the list
WINDOW = 0.1
#: items kept: a list of 200 after excluding histories of up to a few thousand items
KEEP = 5000


def trending_items(events: pd.DataFrame, window: float = WINDOW, keep: int = KEEP) -> np.ndarray:
    """``(n,)`` int64 item ids by event count over the latest ``window`` of ``events`` (best first).

    Args:
        events: ``item_id`` and, when present, ``event_ts``; without timestamps every event counts.
        window: share of the events counted, latest first, in ``(0, 1]``; every event at the cut-off's
            timestamp counts too (the result does not depend on the rows' order).
    """
    if not 0 < window <= 1:
        raise ValueError(f"trending window must be in (0, 1], got {window}")
    if not len(events):
        return np.zeros(0, np.int64)
    if "event_ts" in events.columns and window < 1:
        ts = pd.DatetimeIndex(pd.to_datetime(events["event_ts"], utc=True)).asi8  # one unit for the column
        n_win = max(1, int(np.ceil(window * len(ts))))
        cut = np.partition(ts, len(ts) - n_win)[len(ts) - n_win]
        events = events[ts >= cut]
    # plain counts over the window, ties by lower id
    return Popularity().fit(events[["item_id"]]).item_ids[:keep]


def trending_lists(ranked: np.ndarray, histories: Sequence[Iterable[int]], k: int,
                   exclude: Sequence[Iterable[int]] | None = None) -> np.ndarray:
    """``(B, k)`` int64: ``ranked`` minus each request's excluded items (default: its history), -1 padding."""
    pos = ranked_positions(ranked, histories if exclude is None else exclude, len(histories), k)
    out = np.full(pos.shape, -1, np.int64)
    out[pos >= 0] = ranked[pos[pos >= 0]]
    return out
