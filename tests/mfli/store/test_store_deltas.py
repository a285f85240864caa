"""Deltas: publish per window, idempotency, binding to a snapshot, verification."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mfli.store import (
    CorruptDelta,
    InvalidKey,
    SnapshotNotFound,
    list_deltas,
    load_deltas,
    publish_delta,
    publish_snapshot,
    window_id,
)
from mfli.store.deltas import fetch_delta


def _parquet(item_ids) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"item_id": pa.array(item_ids, pa.int64())}), buf)
    return buf.getvalue()


class CountingStore:
    def __init__(self, inner):
        self._inner, self.writes = inner, 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def put_bytes(self, *a, **kw):
        self.writes += 1
        return self._inner.put_bytes(*a, **kw)

    def put_file(self, *a, **kw):
        self.writes += 1
        return self._inner.put_file(*a, **kw)


def test_publish_list_load(store, artifacts, tmp_path):
    publish_snapshot(store, artifacts, "s1")
    w1, w2 = window_id(datetime(2024, 1, 1, 13, tzinfo=UTC)), window_id(datetime(2024, 1, 1, 14, tzinfo=UTC))
    assert w1 == "20240101T130000Z"
    path = tmp_path / "d2.parquet"
    path.write_bytes(_parquet([7, 8, 9]))
    m2 = publish_delta(store, "s1", w2, path, {"n_items": 3})  # from a file ...
    m1 = publish_delta(store, "s1", w1, _parquet([5, 6]), {"n_items": 2})  # ... or from bytes
    assert (m1["snapshot_id"], m1["window"], m1["meta"]) == ("s1", w1, {"n_items": 2})
    assert store.exists(f"deltas/s1/{w1}.parquet") and store.exists(f"deltas/s1/{w1}.manifest.json")
    listed = list_deltas(store, "s1")
    assert [d["window"] for d in listed] == [w1, w2]  # window order, not publish order
    assert listed[1]["sha256"] == m2["sha256"]
    paths = load_deltas(store, "s1", tmp_path / "cache")
    assert [p.name for p in paths] == [f"{w1}.parquet", f"{w2}.parquet"]
    assert pq.read_table(paths[1]).column("item_id").to_pylist() == [7, 8, 9]


def test_republishing_a_window_is_idempotent_or_replaces(store, artifacts, tmp_path):
    publish_snapshot(store, artifacts, "s1")
    first = publish_delta(store, "s1", "w1", _parquet([1]), {"n": 1})
    counting = CountingStore(store)
    assert publish_delta(counting, "s1", "w1", _parquet([1]), {"n": 1}) == first
    assert counting.writes == 0  # same content: nothing written
    second = publish_delta(store, "s1", "w1", _parquet([1, 2]), {"n": 2})
    assert second["sha256"] != first["sha256"]
    (only,) = list_deltas(store, "s1")
    assert only["sha256"] == second["sha256"] and only["meta"] == {"n": 2}
    (p,) = load_deltas(store, "s1", tmp_path / "c")
    assert pq.read_table(p).column("item_id").to_pylist() == [1, 2]


def test_delta_bound_to_an_old_snapshot_is_ignored(store, artifacts):
    publish_snapshot(store, artifacts, "s1")
    publish_delta(store, "s1", "w1", _parquet([1]))
    (artifacts / "report.json").write_text("v2")
    publish_snapshot(store, artifacts, "s2")
    assert list_deltas(store, "s2") == []
    assert len(list_deltas(store, "s1")) == 1
    # even a delta copied under the new snapshot's folder is refused: its manifest names s1
    store.put_bytes("deltas/s2/w1.parquet", store.get_bytes("deltas/s1/w1.parquet"))
    store.put_bytes("deltas/s2/w1.manifest.json", store.get_bytes("deltas/s1/w1.manifest.json"))
    assert list_deltas(store, "s2") == []
    # a manifest whose parquet is missing is not published
    man = json.loads(store.get_bytes("deltas/s1/w1.manifest.json"))
    store.put_bytes("deltas/s1/w9.manifest.json", json.dumps({**man, "window": "w9"}).encode())
    assert [d["window"] for d in list_deltas(store, "s1")] == ["w1"]


def test_bad_deltas_are_refused(store, artifacts, tmp_path):
    with pytest.raises(SnapshotNotFound):
        publish_delta(store, "nope", "w1", _parquet([1]))
    publish_snapshot(store, artifacts, "s1")
    with pytest.raises(ValueError, match="not a parquet file"):
        publish_delta(store, "s1", "w1", b"id,x\n1,2\n")
    for bad in ("../w", "2024-01-01T13:00", "a/b", ""):
        with pytest.raises(InvalidKey):
            publish_delta(store, "s1", bad, _parquet([1]))
    with pytest.raises(ValueError):
        window_id(datetime(2024, 1, 1))  # naive datetimes are ambiguous

    publish_delta(store, "s1", "w1", _parquet([1, 2, 3]))
    good = store.get_bytes("deltas/s1/w1.parquet")
    store.put_bytes("deltas/s1/w1.parquet", good[:-10])  # truncated, manifest unchanged
    with pytest.raises(CorruptDelta, match="w1.parquet: truncated"):
        load_deltas(store, "s1", tmp_path / "c")
    assert not (tmp_path / "c" / "deltas" / "s1" / "w1.parquet").exists()


def test_reader_retries_when_a_window_is_replaced_under_it(store, artifacts, tmp_path):
    publish_snapshot(store, artifacts, "s1")
    publish_delta(store, "s1", "w1", _parquet([1]))
    (stale,) = list_deltas(store, "s1")
    publish_delta(store, "s1", "w1", _parquet([1, 2, 3]))  # replaced after the reader listed
    out = fetch_delta(store, stale, tmp_path / "w1.parquet")
    assert pq.read_table(out).num_rows == 3
