"""Popularity floor: ordering, recency weighting, windows, exclusion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfli.baselines.popularity import Popularity, PopularityConfig
from mfli.data.errors import DataError

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def _events() -> pd.DataFrame:
    # item 1: 5 old events; item 2: 3 recent; item 3: 3 recent; item 4: 1 recent (weight 10)
    rows = [(u, 1, T0, 1.0) for u in range(5)]
    rows += [(u, 2, T0 + pd.Timedelta(days=100), 1.0) for u in range(3)]
    rows += [(u, 3, T0 + pd.Timedelta(days=100), 1.0) for u in range(3)]
    rows += [(0, 4, T0 + pd.Timedelta(days=100), 10.0)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_ts", "weight"])


def test_counts_order_and_ties_by_id():
    pop = Popularity().fit(_events())
    assert pop.item_ids.tolist() == [1, 2, 3, 4]
    assert pop.scores.tolist() == [5.0, 3.0, 3.0, 1.0]
    ids, sc = pop.retrieve([[], []], k=3, exclude=None)
    assert ids.tolist() == [[1, 2, 3], [1, 2, 3]]
    assert sc[0].tolist() == [5.0, 3.0, 3.0]


def test_recency_window_and_weights_change_the_order():
    ev = _events()
    half = Popularity(PopularityConfig(half_life_days=10)).fit(ev)
    assert half.item_ids[:2].tolist() == [2, 3]  # 5 * 0.5**10 < 3
    assert half.scores[-1] == pytest.approx(5 * 0.5**10)
    win = Popularity(PopularityConfig(window_days=30)).fit(ev)
    assert win.item_ids.tolist()[-1] == 1 and win.scores[-1] == 0.0
    w = Popularity(PopularityConfig(use_weight=True)).fit(ev)
    assert w.item_ids[0] == 4


def test_exclusion_refills_from_the_next_items():
    pop = Popularity().fit(_events(), item_ids=[1, 2, 3, 4, 99])
    assert pop.item_ids.tolist() == [1, 2, 3, 4, 99] and pop.scores[-1] == 0.0
    ids, _ = pop.retrieve([[1, 3], [2]], k=3)  # exclude="history"
    assert ids.tolist() == [[2, 4, 99], [1, 3, 4]]
    ids, sc = pop.retrieve([[]], k=3, exclude=[{1, 2, 3, 4}])
    assert ids.tolist() == [[99, -1, -1]] and np.isinf(sc[0, 1:]).all()
    with pytest.raises(ValueError, match="entries"):
        pop.retrieve([[1]], k=2, exclude=[{1}, {2}])


def test_missing_columns_are_named():
    with pytest.raises(DataError, match="event_ts"):
        Popularity(PopularityConfig(half_life_days=1)).fit(pd.DataFrame({"item_id": [1]}))
    with pytest.raises(DataError, match="item_id"):
        Popularity().fit(pd.DataFrame({"movie": [1]}))
