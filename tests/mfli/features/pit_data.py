"""A hand-built canonical dataset whose feature values over time are known (see build_pit_dataset)."""

from __future__ import annotations

import numpy as np
import pandas as pd

T0 = pd.Timestamp("2024-03-01", tz="UTC")


def at(day: int, hour: int = 0, minute: int = 0) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=day, hours=hour, minutes=minute)


def build_pit_dataset():
    """10 items, 6 users, ~120 events over 46 days.

    Item 0 is engaged 3x on day 0, 2x on day 4, once on day 9 and day 40, so its window counts change
    over time; user 0 has two events at one instant (day 3, 08:00). Item 8 is created on day 12, item
    9 on day 20 (items-in-window extraction).
    """
    from mfli.data.dataset import Dataset

    rng = np.random.default_rng(7)
    created = [at(-1, i) for i in range(8)] + [at(12, 6), at(20, 6)]
    items = pd.DataFrame(
        {
            "item_id": np.arange(10, dtype="int64"),
            "created_at": created,
            "categories": [[f"top{i % 3}", f"top{i % 3}>leaf{i % 2}"] for i in range(10)],
            "title": [f"Item {i}: Widget-{i}" for i in range(10)],
            "text": [f"a widget numbered {i} for topic {i % 3}" for i in range(10)],
            "brand": [None if i % 4 == 0 else f"brand{i % 3}" for i in range(10)],
        }
    )
    rows = [
        (0, 0, at(0, 10)),
        (1, 0, at(0, 11)),
        (2, 0, at(0, 12)),
        (3, 0, at(4, 10)),
        (4, 0, at(4, 11)),
        (5, 0, at(9, 10)),
        (0, 0, at(40, 10)),
        (0, 1, at(1, 9)),
        (0, 2, at(3, 8)),
        (0, 3, at(3, 8)),
        (0, 4, at(5, 7)),
        (1, 8, at(13, 1)),
        (2, 8, at(14, 2)),
        (3, 9, at(21, 3)),
    ]
    seen = {(u, i, t) for u, i, t in rows}
    while len(rows) < 120:
        u, i = int(rng.integers(1, 6)), int(rng.integers(1, 8))
        t = at(int(rng.integers(0, 46)), int(rng.integers(0, 24)), int(rng.integers(0, 60)))
        if (u, i, t) not in seen:
            seen.add((u, i, t))
            rows.append((u, i, t))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "event_ts"])
    inter["weight"] = rng.integers(1, 6, len(inter)).astype("float32")
    inter = inter.sort_values(["event_ts", "user_id", "item_id"]).reset_index(drop=True)
    users = pd.DataFrame(
        {
            "user_id": np.arange(6, dtype="int64"),
            "segment": [f"s{u % 2}" for u in range(6)],
            "age": [18, 25, 35, 45, None, 56],
        }
    )
    users["age"] = users["age"].astype("Int64")
    return Dataset("pit", "memory", inter, items, users).conformed()
