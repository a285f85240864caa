"""LiveRetriever: follows LATEST + deltas, swaps atomically, keeps serving through bad refreshes."""

from __future__ import annotations

import io
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mfli.serve.live import LiveRetriever
from mfli.store import SnapshotNotFound, open_store, publish_delta, publish_snapshot


class Dummy:
    """Stands in for a retriever: remembers what it was built from."""

    def __init__(self, snapshot_dir, delta_paths):
        self.version = (snapshot_dir / "version.txt").read_text()
        self.extra_items = [i for p in delta_paths for i in pq.read_table(p).column("item_id").to_pylist()]
        self.closed = False

    def retrieve(self, k: int) -> list[str]:
        return [f"{self.version}:{i}" for i in self.extra_items[:k]]

    def metadata(self) -> dict:
        return {"n_items": 100 + len(self.extra_items)}


def _parquet(ids) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64())}), buf)
    return buf.getvalue()


@pytest.fixture()
def env(tmp_path):
    store = open_store(tmp_path / "store")
    art = tmp_path / "art"
    art.mkdir()

    def publish(version: str) -> None:
        (art / "version.txt").write_text(version)
        publish_snapshot(store, art, version, metrics={"v": version})

    return store, publish, tmp_path / "cache"


def test_loads_latest_with_its_deltas(env):
    store, publish, cache = env
    publish("v1")
    publish_delta(store, "v1", "w1", _parquet([1, 2]))
    live = LiveRetriever.from_store(store.uri, cache_dir=cache, build=Dummy)
    assert live.current.version == "v1" and live.current.extra_items == [1, 2]
    assert live.retrieve(k=1) == ["v1:1"]  # delegated to the current object
    meta = live.metadata()
    assert (meta["snapshot_id"], meta["deltas_applied"], meta["n_deltas"]) == ("v1", ["w1"], 1)
    assert meta["retriever"] == {"n_items": 102} and meta["metrics"] == {"v": "v1"}
    assert live.refresh() is False  # nothing changed


def test_refresh_picks_up_deltas_then_a_new_snapshot(env):
    store, publish, cache = env
    publish("v1")
    live = LiveRetriever.from_store(store, cache_dir=cache, build=Dummy)
    in_flight = live.current  # a query that started before the refresh
    publish_delta(store, "v1", "w1", _parquet([5]))
    assert live.refresh() is True
    assert live.current.extra_items == [5] and in_flight.extra_items == []  # old object untouched
    assert in_flight.retrieve(k=3) == []

    publish("v2")  # the v1 delta does not apply to v2
    assert live.refresh() is True
    assert live.current.version == "v2" and live.current.extra_items == []
    assert live.metadata()["deltas_applied"] == []
    publish_delta(store, "v2", "w2", _parquet([9]))
    publish_delta(store, "v1", "w3", _parquet([7]))  # a late delta for the old snapshot: ignored
    assert live.refresh() is True
    assert live.current.extra_items == [9] and live.metadata()["deltas_applied"] == ["w2"]


def test_bad_refresh_keeps_serving_the_previous_snapshot(env):
    store, publish, cache = env
    publish("v1")
    live = LiveRetriever.from_store(store, cache_dir=cache, build=Dummy)
    publish("v2")
    store.put_bytes("snapshots/v2/version.txt", b"vX")  # corrupted after publishing
    assert live.refresh() is False
    assert live.current.version == "v1"
    assert "CorruptSnapshot" in live.metadata()["last_refresh_error"]
    assert "version.txt" in live.metadata()["last_refresh_error"]
    with pytest.raises(Exception, match="sha256 mismatch"):
        live.refresh(raise_errors=True)

    store.put_bytes("snapshots/v2/version.txt", b"v2")  # repaired
    failing = {"on": True}

    def flaky_build(d, p):
        if failing["on"]:
            raise RuntimeError("index build failed")
        return Dummy(d, p)

    live.build = flaky_build
    assert live.refresh() is False and live.current.version == "v1"
    assert "index build failed" in live.metadata()["last_refresh_error"]
    failing["on"] = False
    assert live.refresh() is True and live.current.version == "v2"
    assert live.metadata()["last_refresh_error"] is None


def test_readers_never_block_or_see_nothing_during_swaps(env):
    store, publish, cache = env
    publish("v1")
    live = LiveRetriever.from_store(store, cache_dir=cache, build=Dummy)
    stop, seen, errors = threading.Event(), set(), []

    def reader():
        while not stop.is_set():
            try:
                seen.add(live.current.version)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
            time.sleep(0.0005)  # a busy loop would starve the refresher of the GIL on 2 cores

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for v in ("v2", "v3", "v4"):
        publish(v)
        assert live.refresh() is True
    deadline = time.monotonic() + 5.0  # give the readers a turn after the last swap (busy 2-core CI)
    while "v4" not in seen and time.monotonic() < deadline:
        time.sleep(0.001)
    stop.set()
    for t in threads:
        t.join()
    assert errors == [] and "v4" in seen and live.current.version == "v4"
    # only the current and previous snapshot stay in the cache
    assert sorted(p.name for p in (cache / "snapshots").iterdir() if not p.name.startswith(".")) == ["v3", "v4"]


def test_polling_and_empty_store(env, tmp_path):
    store, publish, cache = env
    with pytest.raises(SnapshotNotFound):
        LiveRetriever.from_store(store, cache_dir=cache, build=Dummy)
    with pytest.raises(TypeError):
        LiveRetriever.from_store(store, cache_dir=cache)
    publish("v1")
    live = LiveRetriever.from_store(store, cache_dir=cache, build=Dummy)
    live.start_polling(0.05)
    try:
        publish("v2")
        deadline = time.monotonic() + 10
        while live.current.version != "v2" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert live.current.version == "v2"
    finally:
        live.stop_polling()
