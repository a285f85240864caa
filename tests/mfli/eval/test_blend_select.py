"""Choosing blend mode on validation: which items count as existing when the new-item credit is chosen."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mfli.eval.blend_select import existing_items


def _events(items: list[int], days: list[int]) -> pd.DataFrame:
    ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(days, unit="D")
    return pd.DataFrame({"user_id": 1, "item_id": np.array(items, np.int64), "event_ts": ts})


def test_existing_items_are_the_engaged_ones_and_those_created_during_training():
    train = _events([5, 3, 5], [0, 3, 9])  # the last training event is on day 9
    items = pd.DataFrame({"item_id": [3, 5, 7, 8, 9],
                          # 7 existed (created day 4) but drew no event; 8 was created after training
                          "created_at": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-01-05", "2024-01-20",
                                                        "2024-01-10"], utc=True)})
    np.testing.assert_array_equal(existing_items(train, items), [3, 5, 7, 9])
    # naive timestamps read as UTC, like the loaders write them
    naive = items.assign(created_at=items["created_at"].dt.tz_localize(None))
    np.testing.assert_array_equal(existing_items(train, naive), [3, 5, 7, 9])
    # no catalogue, or one without created_at: the items with events
    np.testing.assert_array_equal(existing_items(train), [3, 5])
    np.testing.assert_array_equal(existing_items(train, items[["item_id"]]), [3, 5])
