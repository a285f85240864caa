"""Snapshot: one save / load / verify with the serving config stored; what the quality gate scored is
exactly what the service's /retrieve returns; the service imports no training code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mfli.data.synthetic import SyntheticConfig, generate
from mfli.eval.holdout import K_MAX, evaluate_holdout
from mfli.index.build import build_from_encoded, encode_items
from mfli.serve.config import ServingConfig
from mfli.serve.engine import EngineConfig
from mfli.serve.engine_retriever import EngineRetriever
from mfli.serve.retriever import Retriever, RetrieverConfig
from mfli.serve.service import create_app
from mfli.serve.snapshot_retriever import open_live
from mfli.snapshot import FASTSCAN_FILE, MANIFEST_FILE, NEIGHBOURS_FILE, SERVING_FILE, Snapshot, SnapshotLoadError
from mfli.store import open_store
from mfli.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[2]
TINY = {"batch_size": 32, "epochs": 2, "progress": False, "num_threads": 1, "valid_frac": 0.0,
        "model": {"hidden": 16, "dim": 8, "codebook": {"codes": 4}}}  # fmt: skip
CUTOFF = pd.Timestamp("2024-06-01", tz="UTC")  # the synthetic events run over 2024-01 .. 2024-06
_CACHE: dict[str, Snapshot] = {}


@pytest.fixture()
def distinct_dataset():
    """A small synthetic catalogue (distinct content per item; tiny_dataset's items of one topic share
    their content exactly, so its cold items embed identically and tie to the last bit)."""
    if "ds" not in _CACHE:
        _CACHE["ds"] = generate(SyntheticConfig(n_items=120, n_users=80, n_interactions=2400, seed=3))
    return _CACHE["ds"]


@pytest.fixture()
def snapshot(distinct_dataset) -> Snapshot:
    """A snapshot trained once per module on the events before CUTOFF (in memory)."""
    if "snap" not in _CACHE:
        ds = distinct_dataset
        train_df = ds.interactions[ds.interactions["event_ts"] < CUTOFF]
        model = train(ds, train_df, TrainConfig.from_dict(TINY))
        index = build_from_encoded(encode_items(model, ds.items), model.codebooks, model.facets).index
        _CACHE["snap"] = Snapshot(model, index, {"recall@50": 0.5})
    return _CACHE["snap"]


def test_default_serving_config_is_what_the_gates_measured():
    cfg = ServingConfig()
    assert (cfg.retriever.merge, cfg.retriever.beam) == ("sum", 32)
    assert (cfg.engine, cfg.scan.n_clusters, cfg.scan.shortlist) == ("scan", 48, 300)  # new snapshots
    assert ServingConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.scan.list_scores  # trigger lists keep their scores in new snapshots
    old = cfg.to_dict()
    del old["scan"]["list_scores"]  # a snapshot saved before stored list scores: served as its gates measured
    assert not ServingConfig.from_dict(old).scan.list_scores
    with pytest.raises(ValueError, match="unknown retriever config fields"):
        ServingConfig.from_dict({"retriever": {"mrege": "sum"}})
    with pytest.raises(ValueError, match="unknown scan engine config fields"):
        ServingConfig.from_dict({"engine": "scan", "scan": {"shortlsit": 10}})
    with pytest.raises(ValueError, match="engine must be one of"):
        ServingConfig.from_dict({"engine": "faiss"})
    with pytest.raises(ValueError, match="needs retriever.merge='sum'"):
        ServingConfig(retriever=RetrieverConfig(merge="quota"), engine="scan")
    # a serving.json written before the engine field existed keeps the engine its gates measured
    old = cfg.to_dict()
    del old["engine"], old["scan"]
    assert ServingConfig.from_dict(old).engine == "reference"
    assert ServingConfig.from_dict(None).engine == "reference"


def test_serving_json_round_trip_keeps_the_engine_and_its_settings(snapshot, tmp_path):
    scan = ServingConfig(engine="scan", scan=EngineConfig(n_clusters=5, shortlist=40, routing="per_facet"))
    folder = Snapshot(snapshot.model, snapshot.index, {}, scan).save(tmp_path / "snap")
    stored = json.loads((folder / SERVING_FILE).read_text())
    assert stored["engine"] == "scan" and stored["scan"]["n_clusters"] == 5 and stored["scan"]["routing"] == "per_facet"
    loaded = Snapshot.load(folder)
    assert loaded.serving == scan
    r = loaded.retriever()
    assert isinstance(r, EngineRetriever) and r.engine.config == scan.scan
    assert loaded.retriever().engine is r.engine  # built once per snapshot and config
    legacy = json.loads((folder / SERVING_FILE).read_text())
    del legacy["engine"], legacy["scan"]
    (folder / SERVING_FILE).write_text(json.dumps(legacy))
    (folder / MANIFEST_FILE).unlink()  # a folder from before snapshot manifests: nothing to verify
    assert isinstance(Snapshot.load(folder).retriever(), Retriever)


def test_save_load_round_trip_keeps_the_serving_config(snapshot, tmp_path):
    custom = Snapshot(snapshot.model, snapshot.index, {"recall@100": 0.25},
                      ServingConfig(retriever=RetrieverConfig(beam=8, merge="quota", quotas=[3, 1]), max_k=50,
                                    engine="reference"))
    folder = custom.save(tmp_path / "snap")
    assert json.loads((folder / SERVING_FILE).read_text())["retriever"]["merge"] == "quota"
    manifest = Snapshot.verify(folder)
    assert {"metrics.json", "serving.json", "model/manifest.json", "index/index.json"} <= set(manifest["files"])
    loaded = Snapshot.load(folder)
    assert loaded.serving == custom.serving and loaded.metrics == {"recall@100": 0.25}
    assert loaded.retriever().config == custom.serving.retriever
    assert loaded.snapshot_id == "snap"


@pytest.mark.parametrize("engine", ["scan", "reference"])
def test_new_item_facet_weights_round_trip_through_serving_json(snapshot, tmp_path, engine):
    cfg = ServingConfig(retriever=RetrieverConfig(merge="sum", new_item_facet_weights=[1.0, 0.25]), engine=engine)
    folder = Snapshot(snapshot.model, snapshot.index, {}, cfg).save(tmp_path / "snap")
    assert json.loads((folder / SERVING_FILE).read_text())["retriever"]["new_item_facet_weights"] == [1.0, 0.25]
    loaded = Snapshot.load(folder)
    assert loaded.serving == cfg
    assert list(loaded.retriever().config.new_item_facet_weights) == [1.0, 0.25]
    # a serving.json from before the field: new items weigh like every other item
    legacy = json.loads((folder / SERVING_FILE).read_text())
    del legacy["retriever"]["new_item_facet_weights"]
    (folder / SERVING_FILE).write_text(json.dumps(legacy))
    (folder / MANIFEST_FILE).unlink()  # a folder from before snapshot manifests: nothing to verify
    assert Snapshot.load(folder).retriever().config.new_item_facet_weights is None
    assert ServingConfig().retriever.new_item_facet_weights is None  # not adopted: new snapshots keep the rule


def test_verify_names_the_changed_or_missing_file(snapshot, tmp_path):
    folder = snapshot.save(tmp_path / "snap")
    bad = tmp_path / "changed"
    shutil.copytree(folder, bad)
    (bad / SERVING_FILE).write_text(json.dumps({"retriever": {"merge": "quota"}}))
    with pytest.raises(SnapshotLoadError, match=r"serving\.json: sha256 checksum mismatch"):
        Snapshot.load(bad)
    gone = tmp_path / "gone"
    shutil.copytree(folder, gone)
    (gone / "metrics.json").unlink()
    with pytest.raises(SnapshotLoadError, match=r"metrics\.json: missing"):
        Snapshot.load(gone)
    (gone / MANIFEST_FILE).write_text("{")
    with pytest.raises(SnapshotLoadError, match="not a valid snapshot manifest"):
        Snapshot.verify(gone)


def test_model_and_index_that_disagree_are_refused(snapshot, distinct_dataset):
    other = build_from_encoded(encode_items(snapshot.model, distinct_dataset.items), snapshot.model.codebooks,
                               snapshot.model.facets).index
    other.facet_names = ["semantic", "engagement"]
    with pytest.raises(SnapshotLoadError, match="model facets"):
        Snapshot(snapshot.model, other)


def _gate_and_serve(snap: Snapshot, dataset, tmp_path):
    """Save, gate (daily evaluation) and publish ``snap``, then ask the service for every test user's list.

    Returns:
        the gated snapshot, the holdout result and ``{user: served item ids}``.
    """
    cfg = snap.serving
    gated = Snapshot.load(snap.save(tmp_path / "run"))  # the evaluation reads the run's saved artifacts
    result = evaluate_holdout(gated, dataset, CUTOFF)
    assert len(result.users) >= 20  # enough test users for the comparison to mean something
    m = result.metrics  # the gate's ratios come with their paired bootstrap intervals
    assert m["recall@100_vs_exact_lo"] <= m["recall@100_vs_exact"] <= m["recall@100_vs_exact_hi"]
    assert m["recall@100_vs_pop_lo"] <= m["recall@100_vs_pop"] <= m["recall@100_vs_pop_hi"]
    store = open_store(tmp_path / "store")
    gated.publish(store, "v1")
    live = open_live(store, cache_dir=tmp_path / "cache")
    served = {}
    with TestClient(create_app(live, user_features=False)) as client:
        meta = client.get("/metadata").json()
        assert meta["index"]["retriever"]["merge"] == cfg.retriever.merge and meta["index"]["engine"] == cfg.engine
        for u, hist in zip(result.users.tolist(), result.histories):
            r = client.post("/retrieve", json={"user_id": u, "user_features": {"history_item_ids": hist.tolist()},
                                               "k": K_MAX, "mode": "user"})
            assert r.status_code == 200, r.text
            served[u] = [it["item_id"] for it in r.json()["items"]]
    return gated, result, served


@pytest.mark.parametrize(("engine", "merge"), [("reference", "sum"), ("reference", "quota"), ("scan", "sum")])
def test_service_returns_exactly_the_lists_the_gate_scored(snapshot, distinct_dataset, tmp_path, engine, merge):
    """The daily evaluation scores the snapshot's serving retriever; published and served, /retrieve
    answers the same users (history given, mode user) with the same lists, for either stored merge and
    either engine (the service rebuilds the scan engine from the published snapshot).

    (The gate embeds all test users in one batch, the service one request at a time: torch's CPU kernels
    may differ by batch shape in the last bit, so items whose scores tie to 1e-7 could trade places;
    the dataset here has none.)
    """
    snap = Snapshot(snapshot.model, snapshot.index, {},
                    ServingConfig(retriever=RetrieverConfig(merge=merge), engine=engine,
                                  scan=EngineConfig(n_clusters=12, shortlist=80)))
    _, result, served = _gate_and_serve(snap, distinct_dataset, tmp_path)
    for u, row in zip(result.users.tolist(), result.retrieved["mfli"]):
        assert served[u] == row[row >= 0].tolist() and len(served[u]) >= 50, u
    assert isinstance(snap.retriever(), EngineRetriever if engine == "scan" else Retriever)


def test_scan_engine_with_its_residual_quantiser_serves_what_the_gate_scored(tmp_path):
    """Above 256 items the engine fits a residual product quantiser at load; the gate's snapshot and the
    service's each fit their own and rank alike: for the same query vector the service's list is the
    gate retriever's, item for item. The gate embeds its users in one batch and the service one at a
    time, which moves the query in the last bit (about 1e-7); the approximate pre-rank can then swap an
    item at the short list's edge, so against the gate's batch lists at most 5% of users may differ."""
    ds = generate(SyntheticConfig(n_items=400, n_users=120, n_interactions=4000, seed=5))
    model = train(ds, ds.interactions[ds.interactions["event_ts"] < CUTOFF], TrainConfig.from_dict(TINY))
    index = build_from_encoded(encode_items(model, ds.items), model.codebooks, model.facets).index
    snap = Snapshot(model, index, {}, ServingConfig(engine="scan", scan=EngineConfig(n_clusters=16, shortlist=150)))
    assert snap.retriever().engine._n_pq > 0  # the code rows carry residual PQ codes
    gated, result, served = _gate_and_serve(snap, ds, tmp_path)
    same_as_batch = 0
    for u, hist, row in zip(result.users.tolist(), result.histories, result.retrieved["mfli"]):
        one = gated.retriever().retrieve_users(model.user_embeddings(np.array([u]), [hist]).numpy(), K_MAX,
                                               exclude=[hist]).item_ids[0]
        assert served[u] == one[one >= 0].tolist() and len(served[u]) >= 50, u
        same_as_batch += served[u] == row[row >= 0].tolist()
    assert same_as_batch >= 0.95 * len(result.users), (same_as_batch, len(result.users))


def test_fastscan_quantiser_the_gate_fitted_is_published_and_served(snapshot, tmp_path, monkeypatch):
    """The gate's engine fits the fast-scan quantiser once; the snapshot carries it (``fastscan.npz``,
    in the manifest) and a loaded snapshot's engine encodes with it, answering as the gate's engine;
    without an engine or a stored quantiser nothing is written, and the reference engine has none."""
    import faiss

    cfg = ServingConfig(engine="scan", scan=EngineConfig(prerank="fastscan", n_clusters=4, shortlist=40))
    gate = Snapshot(snapshot.model, snapshot.index, {}, cfg)
    assert not gate.save_quantiser(tmp_path / "none.npz")  # no engine built yet, none stored
    q = snapshot.model.codebooks.numpy()[0, :, :3].transpose(1, 0, 2).copy()  # (3, F, d) query vectors
    want = gate.retriever().engine.search(q, 20)
    folder = gate.save(tmp_path / "snap")
    assert FASTSCAN_FILE in Snapshot.verify(folder)["files"]

    monkeypatch.setattr(faiss.ProductQuantizer, "train", lambda *a, **kw: pytest.fail("quantiser refitted"))
    served = Snapshot.load(folder)
    assert served.fastscan_quantiser is not None
    engine = served.retriever().engine
    assert engine.quantiser_source == str(folder / FASTSCAN_FILE)
    got = engine.search(q, 20)
    np.testing.assert_array_equal(got.item_ids, want.item_ids)
    np.testing.assert_array_equal(got.scores, want.scores)
    # re-saved without building an engine: the stored quantiser travels on unchanged
    again = Snapshot.load(folder).save(tmp_path / "again")
    assert (again / FASTSCAN_FILE).read_bytes() == (folder / FASTSCAN_FILE).read_bytes()
    ref = Snapshot(snapshot.model, snapshot.index, {}, ServingConfig(engine="reference"))
    assert not (ref.save(tmp_path / "snap") / FASTSCAN_FILE).exists()  # a reused folder keeps no stale file


@pytest.mark.timeout(120)
def test_service_module_imports_no_training_code():
    code = ("import sys, mfli.serve.service, mfli.cli.serve; "
            "print([m for m in ('mfli.train', 'mfli.distributed') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                         check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _blend_snapshot(snap: Snapshot, dataset) -> Snapshot:
    """``snap`` served in blend mode: co-engagement table and weights chosen on validation, as the daily
    evaluation chooses them."""
    from mfli.eval.blend_select import select_blend
    from mfli.index.coengagement import CoEngagementConfig

    serving = ServingConfig(scan=EngineConfig(n_clusters=12, shortlist=80, neighbours=100))
    base = Snapshot(snap.model, snap.index, {}, serving)
    train_df = dataset.interactions[dataset.interactions["event_ts"] < CUTOFF]
    sel = select_blend(snap.model, base.retriever(), snap.index, train_df,
                       coengagement=CoEngagementConfig(num_threads=1))
    return Snapshot(snap.model, snap.index, {}, ServingConfig(scan=serving.scan, blend=sel.config),
                    coengagement=sel.table)


def test_blend_snapshot_round_trip_and_refusals(snapshot, distinct_dataset, tmp_path):
    """The table travels as coengagement.npz under the manifest; a blend config without a table, or a
    changed table, is refused naming the file."""
    from mfli.snapshot import COENGAGEMENT_FILE

    snap = _blend_snapshot(snapshot, distinct_dataset)
    folder = snap.save(tmp_path / "s")
    assert COENGAGEMENT_FILE in json.loads((folder / MANIFEST_FILE).read_text())["files"]
    back = Snapshot.load(folder)
    assert back.serving == snap.serving and back.serving.blend is not None
    np.testing.assert_array_equal(back.coengagement.item_ids, snap.coengagement.item_ids)
    with pytest.raises(SnapshotLoadError, match=COENGAGEMENT_FILE):
        Snapshot(snap.model, snap.index, {}, snap.serving)
    data = bytearray((folder / COENGAGEMENT_FILE).read_bytes())
    data[-10] ^= 0xFF
    (folder / COENGAGEMENT_FILE).write_bytes(bytes(data))
    with pytest.raises(SnapshotLoadError, match=COENGAGEMENT_FILE):
        Snapshot.load(folder)


def test_blend_mode_serves_exactly_the_lists_the_gate_scored(snapshot, distinct_dataset, tmp_path):
    """A blend snapshot is gated on its blended lists (user mode reported beside them) and /retrieve in
    mode auto answers the same users with the same lists, each item naming the lists that held it."""
    snap = _blend_snapshot(snapshot, distinct_dataset)
    gated = Snapshot.load(snap.save(tmp_path / "run"))
    result = evaluate_holdout(gated, distinct_dataset, CUTOFF)
    m = result.metrics
    assert "mfli_user" in result.retrieved and m["mfli_user_recall@100"] is not None
    assert m["recall@100_vs_user_lo"] <= m["recall@100_vs_user"] <= m["recall@100_vs_user_hi"]
    assert not np.array_equal(result.retrieved["mfli"], result.retrieved["mfli_user"])
    # the user-mode lists reported beside the blend are the engine's own answer at that depth
    q = gated.model.user_embeddings(result.users, result.histories).numpy()
    np.testing.assert_array_equal(result.retrieved["mfli_user"], gated.retriever().retrieve_users(
        q, K_MAX, exclude=result.histories).item_ids)
    store = open_store(tmp_path / "store")
    gated.publish(store, "v1")
    # the gate's engine lists are published; the served engine takes them instead of building its own
    served = Snapshot.open(store, "v1", tmp_path / "cache_check")
    assert served.neighbour_lists is not None
    assert served.retriever().engine.lists_source == str(served.path / NEIGHBOURS_FILE)
    live = open_live(store, cache_dir=tmp_path / "cache")
    seen_sources: set[str] = set()
    with TestClient(create_app(live, user_features=False)) as client:
        meta = client.get("/metadata").json()
        assert meta["index"]["blend"] == gated.serving.blend.to_dict()
        assert meta["index"]["coengagement"]["items"] == len(gated.coengagement)
        for u, hist, row in zip(result.users.tolist(), result.histories, result.retrieved["mfli"]):
            r = client.post("/retrieve", json={"user_id": u, "user_features": {"history_item_ids": hist.tolist()},
                                               "k": K_MAX})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["mode"] == "blend"
            assert [it["item_id"] for it in body["items"]] == row[row >= 0].tolist(), u
            assert all(it["sources"] and it["facet"] in gated.model.facets for it in body["items"])
            seen_sources.update(s for it in body["items"] for s in it["sources"])
        user_only = client.post("/retrieve", json={"user_features": {"history_item_ids": result.histories[0].tolist()},
                                                   "k": 10, "mode": "user"}).json()
        assert user_only["mode"] == "user" and user_only["items"][0].get("sources") is None
    assert {"user", "coengagement"} <= seen_sources
