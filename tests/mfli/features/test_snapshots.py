"""Feature time series and the day-partitioned layout, without Feast."""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import pandas as pd
import pytest
from pit_data import at

from mfli.data.errors import DataError
from mfli.features import offline, snapshots
from mfli.features.ingest import write_offline
from mfli.features.window import Window


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object and len(df) and isinstance(df[c].iloc[0], (list, np.ndarray)):
            df[c] = [tuple(v) for v in df[c]]
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def test_daily_windows_give_the_same_rows_as_one_window(tmp_path, pit_dataset):
    """Ingesting day by day (in three uneven chunks) equals ingesting everything at once."""
    whole = write_offline(pit_dataset, str(tmp_path / "a"))
    w = Window.of(whole.window["start"], whole.window["end"])
    cuts = [w.start, at(4), at(17, 5), w.end]  # 17:05 widens to whole days; chunks then overlap day 17
    for lo, hi in itertools.pairwise(cuts):
        write_offline(pit_dataset, str(tmp_path / "b"), Window(lo, hi))
    for table in offline.SOURCE_SCHEMAS:
        a = offline.read_table(str(tmp_path / "a"), table)
        b = offline.read_table(str(tmp_path / "b"), table)
        assert len(a) == whole.rows[table] > 0, table
        pd.testing.assert_frame_equal(_sorted(a), _sorted(b), obj=table)


def test_partitions_are_days_and_rewrite_drops_stale_rows(tmp_path, pit_dataset):
    root = str(tmp_path)
    write_offline(pit_dataset, root)
    days = offline.partition_days(root, "interactions")
    assert days[0] == "2024-03-01" and all(len(d) == 10 for d in days)
    assert sorted(p.name for p in (tmp_path / "interactions" / "event_date=2024-03-01").iterdir()) == [
        "part-0.parquet"
    ]
    # Drop day 4's events from the source and re-ingest day 4: its partition must not keep old rows.
    ds = pit_dataset
    day4 = Window(at(4), at(5))
    kept = ds.interactions[~day4.mask(ds.interactions["event_ts"])]
    from mfli.data.dataset import Dataset

    write_offline(Dataset("x", "memory", kept, ds.items, ds.users), root, day4)
    assert offline.read_table(root, "interactions", day4).empty
    assert len(offline.read_table(root, "interactions")) == len(kept)


def test_rows_outside_the_window_are_refused(tmp_path, pit_dataset):
    ev = pit_dataset.interactions
    with pytest.raises(DataError, match="outside"):
        offline.write_partitions(ev, str(tmp_path), "interactions", ev["event_ts"], Window(at(0), at(1)))


def test_history_rows_exclude_the_event_itself_and_are_capped():
    ev = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 2],
            "item_id": [10, 11, 12, 13, 10],
            "event_ts": [at(0), at(1), at(1), at(500), at(2)],
            "weight": np.ones(5, dtype="float32"),
        }
    )
    rows = snapshots.user_history_rows(ev, Window(at(0), at(501)), snapshots.SnapshotConfig(history_len=2))
    u1 = rows[rows["user_id"] == 1].reset_index(drop=True)
    # One row per instant, stamped 1 us after it; the day-1 pair is one row holding both items.
    assert u1["history_ts"].tolist() == [
        at(0) + pd.Timedelta(microseconds=1),
        at(1) + pd.Timedelta(microseconds=1),
        at(500) + pd.Timedelta(microseconds=1),
    ]
    assert [list(h) for h in u1["history_item_ids"]] == [[10], [11, 12], [13]]  # cap 2; day 500: > 365 d
    assert u1["history_len"].tolist() == [1, 2, 1]


def test_window_counts_are_daily_snapshots_at_change_points():
    ev = pd.DataFrame(
        {
            "user_id": [1, 1, 1],
            "item_id": [5, 5, 5],
            "event_ts": [at(0, 3), at(0, 20), at(2, 1)],
            "weight": np.ones(3, dtype="float32"),
        }
    )
    st = snapshots.item_stats_rows(ev, Window(at(0), at(40))).set_index("snapshot_ts")
    assert st.loc[at(1), ["item_cnt_1d", "item_cnt_7d", "item_cnt_30d"]].tolist() == [2, 2, 2]
    assert st.loc[at(3), ["item_cnt_1d", "item_cnt_7d", "item_cnt_30d"]].tolist() == [1, 3, 3]
    assert st.loc[at(8), ["item_cnt_1d", "item_cnt_7d", "item_cnt_30d"]].tolist() == [
        0,
        1,
        3,
    ]  # day 0 left 7d
    assert st.loc[at(33), ["item_cnt_30d"]].tolist() == [0]
    assert sorted(st.index) == [at(d) for d in (1, 2, 3, 4, 8, 10, 31, 33)]


def test_user_profile_opens_each_active_day_with_attributes():
    ev = pd.DataFrame(
        {
            "user_id": [1, 1],
            "item_id": [5, 6],
            "event_ts": [at(0, 3), at(0, 20)],
            "weight": np.array([2.0, 4.0], dtype="float32"),
        }
    )
    users = pd.DataFrame({"user_id": [1], "gender": ["F"], "age": [None]})
    prof = snapshots.user_profile_rows(ev, users, Window(at(0), at(3))).set_index("snapshot_ts")
    assert prof.loc[at(0, 3), "user_cnt_1d"] == 0 and list(prof.loc[at(0, 3), "user_attrs"]) == ["gender=F"]
    assert prof.loc[at(1), "user_cnt_1d"] == 2 and prof.loc[at(1), "user_mean_weight_30d"] == pytest.approx(
        3.0
    )


def test_tokens_and_window_parsing():
    assert snapshots.tokens("Stanley TRA708T, 1/2-Inch Staples!", 4) == ["stanley", "tra708t", "1", "2"]
    assert snapshots.tokens(None, 3) == []
    w = Window.of("2024-01-01T05:00:00", "2024-01-02T01:00:00+00:00")
    assert w.days() == ["2024-01-01", "2024-01-02"]
    assert w.whole_days() == Window.of("2024-01-01", "2024-01-03")
    with pytest.raises(ValueError, match="timezone-naive"):
        Window(dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2))
    with pytest.raises(ValueError, match="empty window"):
        Window.of("2024-01-02", "2024-01-01")
