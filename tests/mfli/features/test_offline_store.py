"""The point-in-time join behind the custom Feast offline store."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
from pit_data import at


def test_point_in_time_join_keeps_every_row_and_never_looks_ahead():
    from mfli.features.offline_store import point_in_time_join

    entity = pd.DataFrame(
        {
            "item_id": np.array([1, 1, 1, 2, 3, 1], dtype="int64"),
            "event_timestamp": [at(0), at(2), at(5), at(2), at(2), at(2)],
            "user_id": [9, 9, 9, 9, 9, 8],  # a duplicate (item, time) pair for another user
        }
    )
    rows = pd.DataFrame(
        {
            "item_id": np.array([1, 1, 1, 2], dtype="int64"),
            "ts": [at(1), at(2), at(2), at(3)],
            "created": [at(1), at(2), at(2, 1), at(3)],
            "v": [10, 20, 21, 30],
        }
    )
    got = point_in_time_join(entity, "event_timestamp", rows, ["item_id"], "ts", "created", timedelta(days=2))
    # at(0): nothing yet; at(2): exact match allowed, tie -> newest created (21); at(5): the at(2) row is
    # 3 days old, beyond ttl; item 2's only row is after the event; item 3 has none. Both at(2) rows kept.
    assert pd.isna(got["v"].iloc[0])
    assert got["v"].iloc[1] == 21 and got["v"].iloc[5] == 21
    assert pd.isna(got["v"].iloc[2]) and pd.isna(got["v"].iloc[3]) and pd.isna(got["v"].iloc[4])
    assert len(got) == len(entity) and got.index.equals(entity.index)
    no_ttl = point_in_time_join(entity, "event_timestamp", rows, ["item_id"], "ts", "created", None)
    assert no_ttl["v"].iloc[2] == 21
