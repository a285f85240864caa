"""The HTTP service (FastAPI TestClient) over a real tiny snapshot in a local store: /retrieve in both
modes, validation errors, /health and /metadata, refresh with deltas and a new LATEST, a corrupt
snapshot while serving, and ``mfli serve`` as a real process stopped by SIGINT."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from mfli.index.build import build_from_encoded, encode_items
from mfli.index.delta import assign_paths, delta_rows_table
from mfli.serve.live import LiveRetriever
from mfli.serve.service import create_app
from mfli.serve.snapshot_retriever import SnapshotBuilder, open_live
from mfli.store import open_store, publish_delta, publish_snapshot
from mfli.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[3]
TINY = {"batch_size": 32, "epochs": 2, "progress": False, "num_threads": 1, "valid_frac": 0.0,
        "model": {"hidden": 16, "dim": 8, "codebook": {"codes": 4}}}  # fmt: skip
_ART: dict[str, object] = {}


@pytest.fixture()
def artifacts(tiny_dataset, tmp_path_factory) -> tuple[Path, bytes]:
    """Snapshot folder trained once per module, and a delta parquet of 5 new items (ids 1000..1004)."""
    if "dir" not in _ART:
        ds = tiny_dataset
        model = train(ds, ds.interactions, TrainConfig.from_dict(TINY))
        index = build_from_encoded(encode_items(model, ds.items), model.codebooks, model.facets).index
        root = tmp_path_factory.mktemp("tiny_snapshot_http")
        model.save(root / "model")
        index.save(root / "index")
        (root / "report").mkdir()
        (root / "report" / "summary.md").write_text("# tiny\n")
        (root / "metrics.json").write_text(json.dumps({"recall@50": 0.5}))
        new = ds.items.iloc[:5].copy()
        new["item_id"] = np.arange(1000, 1005)
        emb = model.item_embeddings(new).numpy()
        buf = io.BytesIO()
        pq.write_table(delta_rows_table(new["item_id"].to_numpy(), emb, assign_paths(emb, model.codebooks, index.maps),
                                        index.facet_names), buf)
        _ART["dir"], _ART["delta"] = root, buf.getvalue()
    return _ART["dir"], _ART["delta"]


@pytest.fixture()
def served(artifacts, tmp_path):
    """(store, live, client) with snapshot v1 published and loaded."""
    store = open_store(tmp_path / "store")
    publish_snapshot(store, artifacts[0], "v1", metrics={"recall@50": 0.5})
    live = open_live(store, cache_dir=tmp_path / "cache")
    with TestClient(create_app(live, user_features=False)) as client:
        yield store, live, client


def test_retrieve_trigger_and_user_modes(served):
    _, _, client = served
    r = client.post("/retrieve", json={"recent_items": [0, 3, 6], "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["snapshot_id"], body["mode"]) == ("v1", "trigger")
    items = body["items"]
    assert len(items) == 10 and len({it["item_id"] for it in items}) == 10
    assert set(items[0]) == {"item_id", "score", "facet", "cluster", "trigger"}
    assert not {0, 3, 6} & {it["item_id"] for it in items}
    assert {it["trigger"] for it in items} <= {0, 3, 6}

    r = client.post("/retrieve", json={"user_id": 4, "k": 7})
    assert r.status_code == 200 and r.json()["mode"] == "user"
    items = r.json()["items"]
    assert len(items) == 7 and set(items[0]) == {"item_id", "score", "facet", "cluster", "path_rank"}
    r = client.post("/retrieve", json={"user_id": 4, "user_features": {"history_item_ids": [1, 2], "segment": "s0"},
                                       "recent_items": [5], "mode": "user", "k": 30})
    assert r.status_code == 200 and not {1, 2, 5} & {it["item_id"] for it in r.json()["items"]}
    r = client.post("/retrieve", json={"recent_items": [0, 3], "k": 8, "facet_quotas": {"semantic": 1}})
    assert {it["facet"] for it in r.json()["items"]} == {"semantic"}
    # unknown item ids are ignored, not a server error
    r = client.post("/retrieve", json={"recent_items": [123456789, 2**62, 3], "k": 5})
    assert r.status_code == 200 and r.json()["mode"] == "trigger" and len(r.json()["items"]) == 5


@pytest.mark.parametrize("body, loc, msg", [
    ({"recent_items": [1], "k": 0}, ["body", "k"], "greater than or equal to 1"),
    ({"recent_items": [1], "k": 1001}, ["body", "k"], "less than or equal to 1000"),
    ({"recent_items": [1], "mode": "ann"}, ["body", "mode"], "'auto', 'trigger', 'user' or 'blend'"),
    ({"recent_items": ["x"]}, ["body", "recent_items", 0], "must be an integer id"),
    ({"recent_item": [1]}, ["body", "recent_item"], "Extra inputs are not permitted"),
    ({"k": 5}, ["body", "recent_items"], "give recent_items, a user_id or user_features"),
    ({"user_id": 3, "mode": "trigger"}, ["body", "recent_items"], "trigger mode needs at least one recent item"),
    ({"recent_items": [1], "facet_quotas": {"colour": 1}}, ["body", "facet_quotas", "colour"], "unknown facet 'colour'"),
    ({"recent_items": [1], "facet_quotas": {"semantic": 0}}, ["body", "facet_quotas"], "weight > 0"),
    ({"user_features": {"history_item_ids": "1,2"}}, ["body", "user_features", "history_item_ids"], "valid list"),
    ({"recent_items": [2**70]}, ["body", "recent_items", 0], "64-bit"),
], ids=["k0", "k1001", "mode", "item-type", "extra-field", "empty", "trigger-no-items", "facet", "zero-quotas",
        "history-type", "overflow"])
def test_validation_errors_are_422_with_the_field_named(served, body, loc, msg):
    _, _, client = served
    r = client.post("/retrieve", json=body)
    assert r.status_code == 422, r.text
    [err] = r.json()["detail"]
    assert err["loc"] == loc and msg in err["msg"], err


def test_health_and_metadata(served):
    _, _, client = served
    assert client.get("/health").json() == {"status": "ok", "snapshot_id": "v1", "last_refresh_error": None}
    meta = client.get("/metadata").json()
    assert (meta["snapshot_id"], meta["n_items"], meta["facets"], meta["deltas_applied"]) == (
        "v1", 60, ["engagement", "semantic"], [])
    assert meta["created_at"] and meta["metrics"] == {"recall@50": 0.5}
    assert meta["index"]["n_snapshot_items"] == 60 and meta["index"]["codebook"]["codes"] == 4


def test_nothing_published_yet_is_503_until_a_refresh_loads_one(artifacts, tmp_path):
    store = open_store(tmp_path / "store")
    live = LiveRetriever(store, SnapshotBuilder(), tmp_path / "cache")
    assert live.refresh() is False
    client = TestClient(create_app(live, user_features=False))
    r = client.get("/health")
    assert r.status_code == 503 and "nothing published yet" in r.json()["last_refresh_error"]
    assert client.get("/metadata").status_code == 503
    assert client.post("/retrieve", json={"recent_items": [1]}).status_code == 503
    publish_snapshot(store, artifacts[0], "v1")
    assert live.refresh() is True
    assert client.get("/health").status_code == 200
    assert client.post("/retrieve", json={"recent_items": [1], "k": 3}).json()["snapshot_id"] == "v1"


def test_refresh_serves_new_deltas_then_a_new_snapshot_without_its_old_deltas(served, artifacts):
    store, live, client = served
    probe = {"recent_items": [1000], "mode": "trigger", "k": 5}
    assert client.post("/retrieve", json=probe).json()["items"] == []  # unknown trigger: nothing
    publish_delta(store, "v1", "20240101T000000Z", artifacts[1])
    assert live.refresh() is True
    assert len(client.post("/retrieve", json=probe).json()["items"]) == 5
    meta = client.get("/metadata").json()
    assert meta["n_items"] == 65 and meta["deltas_applied"] == ["20240101T000000Z"]
    # a new snapshot: the v1 delta is not carried over
    publish_snapshot(store, artifacts[0], "v2")
    assert live.refresh() is True
    body = client.post("/retrieve", json=probe).json()
    assert body["snapshot_id"] == "v2" and body["items"] == []
    assert client.get("/metadata").json()["n_items"] == 60


def test_corrupt_snapshot_while_serving_keeps_the_previous_one(served, artifacts):
    store, live, client = served
    publish_snapshot(store, artifacts[0], "v2")
    store.put_bytes("snapshots/v2/model/model.safetensors", b"not the published weights")
    assert live.refresh() is False
    r = client.post("/retrieve", json={"recent_items": [1, 2], "k": 4})
    assert r.status_code == 200 and r.json()["snapshot_id"] == "v1" and len(r.json()["items"]) == 4
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["snapshot_id"] == "v1"
    assert "CorruptSnapshot" in health["last_refresh_error"] and "model/model.safetensors" in health["last_refresh_error"]


def test_concurrent_requests_are_batched_and_refresh_swaps_between_batches(served, artifacts):
    store, live, client = served
    results, errors = [], []

    def worker(n):
        for i in range(n):
            r = client.post("/retrieve", json={"recent_items": [i % 60], "k": 5} if i % 2 else {"user_id": i, "k": 5})
            (results if r.status_code == 200 else errors).append(r.json()["snapshot_id"] if r.status_code == 200 else r.text)

    threads = [threading.Thread(target=worker, args=(25,)) for _ in range(4)]
    for t in threads:
        t.start()
    publish_snapshot(store, artifacts[0], "v2")
    assert live.refresh() is True
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 100 and set(results) <= {"v1", "v2"}
    assert client.post("/retrieve", json={"recent_items": [1]}).json()["snapshot_id"] == "v2"
    service = client.get("/metadata").json()["service"]
    assert service["requests"] == 101 and service["batches"] <= 101


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_mfli_serve_process_serves_and_stops_cleanly(artifacts, tmp_path):
    store = open_store(tmp_path / "store")
    publish_snapshot(store, artifacts[0], "v1")
    port = _free_port()
    env = {**os.environ, "MFLI_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("MFLI_FEAST_REPO", None)
    log_path = tmp_path / "serve.log"  # a file, not a pipe: a chatty server can never block on a full pipe
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from mfli.cli import app; app()", "serve", "--store", str(tmp_path / "store"),
             "--port", str(port), "--refresh-seconds", "0.5", "--log-level", "warning"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

    def log_tail() -> str:
        return f"--- {log_path} ---\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])

    try:
        url = f"http://127.0.0.1:{port}"
        # ready = answers a real retrieval, not only /health; bounded wait
        deadline = time.monotonic() + 240  # an empty numba cache: the first load compiles the kernels
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    r = httpx.post(f"{url}/retrieve", json={"recent_items": [0, 3], "k": 6}, timeout=10)
                    if r.status_code == 200:
                        break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, f"mfli serve exited with {proc.returncode}\n{log_tail()}"
            assert time.monotonic() < deadline, f"mfli serve not answering after 240 s\n{log_tail()}"
            time.sleep(0.2)
        assert len(r.json()["items"]) == 6
        publish_delta(store, "v1", "w1", artifacts[1])  # picked up by the poller
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/metadata", timeout=5).json()["deltas_applied"] != ["w1"]:
            assert time.monotonic() < deadline, f"delta w1 not picked up after 60 s\n{log_tail()}"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log_tail()
    except BaseException:  # a failure or a pytest-timeout: show what the server said
        print(log_tail(), file=sys.stderr)
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
