"""Snapshot protocol on the local backend and on SeaweedFS: publish, load, conflicts, retention, rollback."""

from __future__ import annotations

import json
import threading

import pytest

from mfli.store import (
    CorruptSnapshot,
    InvalidKey,
    PublishConflict,
    SnapshotError,
    SnapshotNotFound,
    StoreError,
    apply_retention,
    list_snapshots,
    load_snapshot,
    publish_snapshot,
    read_latest,
    read_manifest,
    rollback,
)
from mfli.store.snapshots import file_digest, open_snapshot


class Spy:
    """Wraps a store: records writes in order and can run a hook before a given write."""

    def __init__(self, inner, before_put=None):
        self._inner, self.puts, self._before = inner, [], before_put

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _hook(self, key):
        if self._before:
            self._before(key, len(self.puts))

    def put_bytes(self, key, data, **kw):
        self._hook(key)
        out = self._inner.put_bytes(key, data, **kw)
        self.puts.append(key)
        return out

    def put_file(self, key, path):
        self._hook(key)
        out = self._inner.put_file(key, path)
        self.puts.append(key)
        return out


def _tree(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_publish_then_load_round_trip(store, artifacts, tmp_path):
    spy = Spy(store)
    man = publish_snapshot(spy, artifacts, "s1", metrics={"recall@50": 0.31}, config={"lr": 0.01, "facets": 3})
    # files first, then the manifest, LATEST last: a reader following LATEST never sees a partial snapshot
    assert spy.puts[-2:] == ["snapshots/s1/manifest.json", "LATEST"]
    assert sorted(spy.puts[:-2]) == ["snapshots/s1/index/arrays.npz", "snapshots/s1/model/weights.safetensors",
                                      "snapshots/s1/report.json"]
    sha, size, _ = file_digest(artifacts / "model/weights.safetensors")
    assert man["files"]["model/weights.safetensors"] == {"sha256": sha, "size": size}
    assert man["metrics"] == {"recall@50": 0.31} and man["config"] == {"lr": 0.01, "facets": 3}
    assert man["code_version"]["mfli"] and man["created_at"] and man["parent"] is None
    assert man["total_bytes"] == sum(len(b) for b in _tree(artifacts).values())

    latest = read_latest(store)
    assert latest.snapshot_id == "s1" and latest.previous is None
    assert read_manifest(store, "s1") == man

    out = load_snapshot(store, cache_dir=tmp_path / "cache")
    assert out == tmp_path / "cache" / "snapshots" / "s1"
    got = _tree(out)
    assert json.loads(got.pop("manifest.json")) == man
    got.pop(".mfli-verified")
    assert got == _tree(artifacts)

    # a damaged cached copy is noticed and fetched again
    (out / "report.json").write_text("tampered")
    again = load_snapshot(store, "s1", cache_dir=tmp_path / "cache")
    assert (again / "report.json").read_bytes() == (artifacts / "report.json").read_bytes()


def test_second_publish_moves_latest_and_lists_metrics(store, artifacts):
    publish_snapshot(store, artifacts, "s1", metrics={"recall@50": 0.30})
    (artifacts / "report.json").write_text('{"recall@50": 0.35}')
    man2 = publish_snapshot(store, artifacts, "s2", metrics={"recall@50": 0.35})
    assert man2["parent"] == "s1"
    latest = read_latest(store)
    assert (latest.snapshot_id, latest.previous) == ("s2", "s1")
    rows = list_snapshots(store)
    assert [(r["snapshot_id"], r["live"], r["metrics"]["recall@50"], r["n_files"]) for r in rows] == [
        ("s1", False, 0.30, 3), ("s2", True, 0.35, 3)]


def test_corrupted_or_truncated_object_is_refused_and_previous_still_loads(store, artifacts, tmp_path):
    publish_snapshot(store, artifacts, "s1")
    (artifacts / "model/weights.safetensors").write_bytes(b"V" * 6000)
    publish_snapshot(store, artifacts, "s2")
    key = "snapshots/s2/model/weights.safetensors"
    good = store.get_bytes(key)

    store.put_bytes(key, b"X" + good[1:])  # same size, one byte flipped
    with pytest.raises(CorruptSnapshot, match=r"model/weights.safetensors: sha256 mismatch") as info:
        load_snapshot(store, cache_dir=tmp_path / "c1")
    assert info.value.file == "model/weights.safetensors" and info.value.snapshot_id == "s2"

    store.put_bytes(key, good[:100])  # truncated
    with pytest.raises(CorruptSnapshot, match="truncated"):
        load_snapshot(store, cache_dir=tmp_path / "c2")
    assert not (tmp_path / "c2" / "snapshots" / "s2").exists()  # nothing half-verified left under its name

    store.delete(key)
    with pytest.raises(CorruptSnapshot, match="missing"):
        load_snapshot(store, cache_dir=tmp_path / "c3")

    prev = load_snapshot(store, "s1", cache_dir=tmp_path / "c4")  # the previous snapshot keeps serving
    assert (prev / "model/weights.safetensors").read_bytes() == b"W" * 5000 + bytes(range(256))

    assert rollback(store, "s1").snapshot_id == "s1"
    with pytest.raises(CorruptSnapshot, match="missing"):  # rollback verifies before moving LATEST ...
        rollback(store, "s2")
    assert read_latest(store).snapshot_id == "s1"
    store.put_bytes(key, good)
    assert rollback(store, "s2").previous == "s1"  # ... and moves it once the target is sound


def test_tampered_manifest_of_live_snapshot_is_refused(store, artifacts, tmp_path):
    publish_snapshot(store, artifacts, "s1", metrics={"recall@50": 0.3})
    man = read_manifest(store, "s1")
    man["metrics"]["recall@50"] = 0.9
    store.put_bytes("snapshots/s1/manifest.json", json.dumps(man).encode())
    with pytest.raises(CorruptSnapshot, match="manifest.json: does not match LATEST"):
        load_snapshot(store, cache_dir=tmp_path / "c")

    man["files"] = {"../../outside": {"sha256": "0" * 64, "size": 1}}
    store.put_bytes("snapshots/s1/manifest.json", json.dumps(man).encode())
    with pytest.raises(CorruptSnapshot, match="unsafe file path"):
        load_snapshot(store, "s1", cache_dir=tmp_path / "c")
    assert not (tmp_path / "outside").exists()


def test_two_concurrent_publishers_exactly_one_wins(store, artifacts, tmp_path):
    publish_snapshot(store, artifacts, "base")
    barrier = threading.Barrier(2)
    results: dict[str, object] = {}

    def at_latest(key, _n):
        if key == "LATEST":  # both have uploaded everything and read the same LATEST etag
            barrier.wait(timeout=30)

    def publisher(sid):
        try:
            results[sid] = publish_snapshot(Spy(store, at_latest), artifacts, sid, metrics={"who": sid})
        except PublishConflict as exc:
            results[sid] = exc

    threads = [threading.Thread(target=publisher, args=(sid,)) for sid in ("pa", "pb")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [s for s, r in results.items() if isinstance(r, dict)]
    losers = [s for s, r in results.items() if isinstance(r, PublishConflict)]
    assert len(winners) == 1 and len(losers) == 1, results
    (w,), (lo,) = winners, losers
    assert "LATEST moved" in str(results[lo])
    latest = read_latest(store)
    assert (latest.snapshot_id, latest.previous) == (w, "base")
    assert store.list(f"snapshots/{lo}/") == []  # the loser cleaned up after itself
    assert [r["snapshot_id"] for r in list_snapshots(store)] == ["base", w]
    assert load_snapshot(store, cache_dir=tmp_path / "c").name == w


def test_expected_latest_guards_against_stale_publishers(store, artifacts):
    with pytest.raises(PublishConflict, match="expected 'nope'"):
        publish_snapshot(store, artifacts, "s0", expected_latest="nope")
    assert store.list() == []  # refused before uploading anything
    publish_snapshot(store, artifacts, "s1", expected_latest=None)
    with pytest.raises(PublishConflict):
        publish_snapshot(store, artifacts, "s2", expected_latest=None)
    stale = read_latest(store)
    publish_snapshot(store, artifacts, "s2", expected_latest="s1")
    with pytest.raises(PublishConflict):
        publish_snapshot(store, artifacts, "s3", expected_latest=stale)
    assert read_latest(store).snapshot_id == "s2"


def test_failed_publish_leaves_latest_and_resumes(store, artifacts):
    publish_snapshot(store, artifacts, "s1")

    def boom(key, n):
        if n == 1:
            raise StoreError("simulated outage")

    with pytest.raises(StoreError, match="simulated outage"):
        publish_snapshot(Spy(store, boom), artifacts, "s2", max_workers=1)
    assert read_latest(store).snapshot_id == "s1"
    assert [r["snapshot_id"] for r in list_snapshots(store)] == ["s1"]
    assert [r["snapshot_id"] for r in list_snapshots(store, include_incomplete=True)] == ["s1", "s2"]

    spy = Spy(store)
    publish_snapshot(spy, artifacts, "s2", max_workers=1)
    assert read_latest(store).snapshot_id == "s2"
    # the file that made it the first time is not uploaded again
    assert len([k for k in spy.puts if k.startswith("snapshots/s2/") and not k.endswith("manifest.json")]) == 2


def test_snapshot_ids_are_immutable(store, artifacts):
    publish_snapshot(store, artifacts, "s1")
    assert publish_snapshot(store, artifacts, "s1")["snapshot_id"] == "s1"  # same content: no-op
    (artifacts / "report.json").write_text("different")
    with pytest.raises(SnapshotError, match="already exists with different files"):
        publish_snapshot(store, artifacts, "s1")


def test_bad_inputs(store, tmp_path, artifacts):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SnapshotError, match="holds no files"):
        publish_snapshot(store, empty, "s1")
    (artifacts / "manifest.json").write_text("{}")
    with pytest.raises(SnapshotError, match="manifest.json would be overwritten"):
        publish_snapshot(store, artifacts, "s1")
    (artifacts / "manifest.json").unlink()
    with pytest.raises(InvalidKey, match="snapshot id '../evil' is invalid"):
        publish_snapshot(store, artifacts, "../evil")
    with pytest.raises(ValueError, match="overwrite manifest fields"):
        publish_snapshot(store, artifacts, "s1", extra={"files": {}})
    with pytest.raises(SnapshotNotFound):
        load_snapshot(store, cache_dir=tmp_path / "c")
    with pytest.raises(SnapshotNotFound):
        rollback(store, "missing")
    assert store.list() == []


def test_retention_keeps_newest_and_live(store, artifacts):
    for i in range(5):
        (artifacts / "report.json").write_text(f"run {i}")
        publish_snapshot(store, artifacts, f"s{i}", metrics={"i": i})
    rollback(store, "s0")  # the live one is the oldest
    assert apply_retention(store, keep=2, dry_run=True) == ["s2", "s1"]
    assert [r["snapshot_id"] for r in list_snapshots(store)] == [f"s{i}" for i in range(5)]  # dry run
    deleted = apply_retention(store, keep=2)
    assert sorted(deleted) == ["s1", "s2"]
    assert [r["snapshot_id"] for r in list_snapshots(store)] == ["s0", "s3", "s4"]
    assert store.list("snapshots/s1/") == [] and store.list("snapshots/s2/") == []
    assert read_latest(store).snapshot_id == "s0"
    with pytest.raises(ValueError):
        apply_retention(store, keep=0)


def test_retention_removes_abandoned_uploads_after_grace(store, artifacts):
    publish_snapshot(store, artifacts, "s1")
    store.put_bytes("snapshots/crashed/model/weights.safetensors", b"partial")
    assert apply_retention(store, keep=1) == []  # maybe a publish in progress: left alone
    assert store.exists("snapshots/crashed/model/weights.safetensors")
    assert apply_retention(store, keep=1, incomplete_grace_s=-1) == ["crashed"]
    assert store.list("snapshots/crashed/") == []
    assert [r["snapshot_id"] for r in list_snapshots(store, include_incomplete=True)] == ["s1"]


def test_open_snapshot_reports_manifest_hash(store, artifacts, tmp_path):
    publish_snapshot(store, artifacts, "s1")
    snap = open_snapshot(store, cache_dir=tmp_path / "c")
    assert snap.snapshot_id == "s1" and snap.manifest_sha256 == read_latest(store).manifest_sha256


def test_manifest_masks_secret_looking_config_values(local_store, artifacts):
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        lr: float = 0.01
        tokenizer: str = "word"
        db_password: str = "hunter2"
        s3: dict | None = None

    man = publish_snapshot(local_store, artifacts, "s1",
                           config=Cfg(s3={"SecretAccessKey": "abc", "session_token": "tok", "bucket": "b"}))
    assert man["config"] == {"lr": 0.01, "tokenizer": "word", "db_password": "***",
                             "s3": {"SecretAccessKey": "***", "session_token": "***", "bucket": "b"}}
    raw = local_store.get_bytes("snapshots/s1/manifest.json").decode()
    assert "hunter2" not in raw and "abc" not in raw and "tok\"" not in raw
