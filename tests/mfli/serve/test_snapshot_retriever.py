"""SnapshotRetriever / SnapshotBuilder / open_live on a real tiny snapshot published to a local store:
loading with checksums, both modes, deltas picked up by refresh, deltas of other snapshots ignored,
corrupt snapshots refused while the previous one keeps serving, user features, facet quotas."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mfli.index.build import build_from_encoded, encode_items
from mfli.index.delta import assign_paths, delta_rows_table
from mfli.index.inverted import MultiFacetIndex
from mfli.model.trained import TrainedModel
from mfli.serve.snapshot_retriever import (
    FeastUserFeatures,
    RequestError,
    RetrievalRequest,
    SnapshotBuilder,
    SnapshotLoadError,
    SnapshotRetriever,
    default_user_features,
    open_live,
)
from mfli.store import CorruptSnapshot, open_store, publish_delta, publish_snapshot
from mfli.train import TrainConfig, train

TINY = {"batch_size": 32, "epochs": 2, "progress": False, "num_threads": 1, "valid_frac": 0.0,
        "model": {"hidden": 16, "dim": 8, "codebook": {"codes": 4}}}  # fmt: skip
NEW_IDS = np.arange(1000, 1005, dtype=np.int64)
_ART: dict[str, Path] = {}


@pytest.fixture()
def artifacts(tiny_dataset, tmp_path_factory) -> Path:
    """A snapshot folder (model/, index/, report/, metrics.json) trained once per module on tiny_dataset."""
    if "dir" not in _ART:
        ds = tiny_dataset
        model = train(ds, ds.interactions, TrainConfig.from_dict(TINY))
        result = build_from_encoded(encode_items(model, ds.items), model.codebooks, model.facets)
        root = tmp_path_factory.mktemp("tiny_snapshot")
        model.save(root / "model")
        result.index.save(root / "index")
        (root / "report").mkdir()
        (root / "report" / "summary.md").write_text("# tiny\n")
        (root / "metrics.json").write_text(json.dumps({"recall@50": 0.5}))
        _ART["dir"] = root
    return _ART["dir"]


def _delta_parquet(art: Path, items: pd.DataFrame) -> tuple[bytes, np.ndarray]:
    """New items (copies of existing content under NEW_IDS) encoded and assigned like the delta DAG."""
    model, index = TrainedModel.load(art / "model"), MultiFacetIndex.load(art / "index")
    new = items.iloc[: len(NEW_IDS)].copy()
    new["item_id"] = NEW_IDS
    emb = model.item_embeddings(new).numpy()
    clusters = assign_paths(emb, model.codebooks, index.maps)
    buf = io.BytesIO()
    pq.write_table(delta_rows_table(NEW_IDS, emb, clusters, index.facet_names), buf)
    return buf.getvalue(), clusters


@pytest.fixture()
def store(tmp_path):
    return open_store(tmp_path / "store")


def test_load_answers_both_modes_and_excludes_recent_items(artifacts):
    obj = SnapshotRetriever.load(artifacts)
    assert obj.n_items == 60 and obj.facets == ["engagement", "semantic"] and obj.metrics == {"recall@50": 0.5}
    recent = [0, 3, 6]
    trig, user, user_hist = obj.retrieve_batch([
        RetrievalRequest(recent_items=recent, k=10),
        RetrievalRequest(user_id=4, k=10),
        RetrievalRequest(user_id=4, user_features={"history_item_ids": recent}, k=10),
    ])
    assert trig["mode"] == "trigger" and user["mode"] == "user" and user_hist["mode"] == "user"
    for res in (trig, user, user_hist):
        ids = [it["item_id"] for it in res["items"]]
        assert len(ids) == 10 and len(set(ids)) == 10
        assert all(it["facet"] in obj.facets and it["cluster"] >= 0 for it in res["items"])
    assert not set(recent) & {it["item_id"] for it in trig["items"] + user_hist["items"]}
    assert {it["trigger"] for it in trig["items"]} <= set(recent)  # explained by one of the triggers
    assert all(it["path_rank"] >= 0 for it in user["items"])
    # trigger scores are similarities to the mean trigger embedding: recompute one
    E = obj.base.embeddings
    f = obj.facets.index(trig["items"][0]["facet"])
    row = obj.base.rows_of([trig["items"][0]["item_id"]])[0]
    q = E[obj.base.rows_of(recent), f].mean(0)
    assert trig["items"][0]["score"] == pytest.approx(float(E[row, f] @ q), abs=1e-5)


def test_mode_resolution_and_request_errors(artifacts):
    obj = SnapshotRetriever.load(artifacts)
    # auto: unknown triggers only -> user tower; unknown ids are ignored, never an error
    assert obj.retrieve(RetrievalRequest(recent_items=[999_999], k=5))["mode"] == "user"
    assert obj.retrieve(RetrievalRequest(recent_items=[999_999, 2], k=5))["mode"] == "trigger"
    assert obj.retrieve(RetrievalRequest(recent_items=[999_999], k=5, mode="trigger"))["items"] == []
    bad = {
        "k": RetrievalRequest(recent_items=[1], k=0),
        "mode": RetrievalRequest(recent_items=[1], mode="nearest"),
        "recent_items": RetrievalRequest(k=5),
        "facet_quotas.colour": RetrievalRequest(recent_items=[1], facet_quotas={"colour": 1.0}),
        "facet_quotas.semantic": RetrievalRequest(recent_items=[1], facet_quotas={"semantic": -1}),
        "user_features.history_item_ids[1]": RetrievalRequest(user_features={"history_item_ids": [1, "x"]}),
    }
    results = obj.retrieve_batch(list(bad.values()) + [RetrievalRequest(recent_items=[1], k=3)])
    for (field, _), res in zip(bad.items(), results):
        assert isinstance(res, RequestError) and res.field == field, (field, res)
    assert len(results[-1]["items"]) == 3  # a bad request does not fail its batch
    with pytest.raises(RequestError, match="trigger mode needs at least one recent item"):
        obj.retrieve(RetrievalRequest(user_id=1, mode="trigger"))
    with pytest.raises(RequestError, match=r"facets are \['engagement', 'semantic'\]"):
        obj.retrieve(RetrievalRequest(recent_items=[1], facet_quotas={"colour": 1.0}))


def test_facet_quotas_restrict_and_share_slots(artifacts):
    obj = SnapshotRetriever.load(artifacts)
    only = obj.retrieve(RetrievalRequest(recent_items=[0, 3], k=12, facet_quotas={"semantic": 1}))
    assert only["items"] and {it["facet"] for it in only["items"]} == {"semantic"}
    res = obj.retrieve(RetrievalRequest(user_id=2, k=12, facet_quotas={"engagement": 3, "semantic": 1}))
    facets = [it["facet"] for it in res["items"]]
    assert facets.count("engagement") == 9 and facets.count("semantic") == 3
    assert obj.retriever._quotas.tolist() == [0.5, 0.5]  # the shared retriever is untouched


def test_user_features_override_stored_attributes_exactly_like_the_model(artifacts):
    obj = SnapshotRetriever.load(artifacts)
    model = obj.model
    uids = np.array([3, 4, 77], np.int64)  # 77 is unknown to the model
    hist = [np.array([0, 3]), np.array([], np.int64), np.array([5, 999])]
    ref = model.user_embeddings(uids, [h.tolist() for h in hist]).numpy()
    # the users' own stored segments (u % 2) as explicit attributes give the same queries
    attrs = [{"segment": "s1"}, {"segment": "s0"}, {}]
    def queries(attrs):
        return model.user_embeddings(uids, [h.tolist() for h in hist], values=model.user_values(uids, attrs)).numpy()

    got = queries(attrs)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    flipped = queries([{"segment": "s0"}, {}, {}])
    assert np.abs(flipped[0] - ref[0]).max() > 1e-4 and np.allclose(flipped[1:], ref[1:], atol=1e-6)
    # "user_attrs" strings as Feast stores them are parsed the same way
    assert obj._attrs({"user_attrs": ["segment=s0", "other=1"], "user_cnt_7d": 3}) == {"segment": "s0"}


def test_user_lookup_is_used_for_id_only_requests(artifacts):
    obj = SnapshotRetriever.load(artifacts)
    calls = []

    def lookup(user_ids):
        calls.append(list(user_ids))
        return [{"history_item_ids": [0, 3, 6, 9], "user_attrs": ["segment=s0"]} for _ in user_ids]

    res = obj.retrieve_batch([RetrievalRequest(user_id=5, k=20), RetrievalRequest(user_id=6, k=20),
                              RetrievalRequest(user_id=7, user_features={}, k=20),
                              RetrievalRequest(recent_items=[1], user_id=8, k=5)], lookup)
    assert calls == [[5, 6]]  # one call per batch, only for user-mode requests without features
    for r in res[:2]:
        assert not {0, 3, 6, 9} & {it["item_id"] for it in r["items"]}  # the looked-up history is excluded
    assert res[0]["items"] == res[1]["items"]  # same features -> same answer

    def broken(user_ids):
        raise ConnectionError("online store down")

    assert len(obj.retrieve(RetrievalRequest(user_id=5, k=7), broken)["items"]) == 7  # degrades, no error


def test_default_user_features_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MFLI_FEAST_REPO", raising=False)
    assert default_user_features() is None
    monkeypatch.setenv("MFLI_FEAST_REPO", str(tmp_path))
    lookup = default_user_features()
    assert isinstance(lookup, FeastUserFeatures) and lookup.repo.path == tmp_path.resolve()
    seen = {}

    def fake_online(repo, user_ids):
        seen["args"] = (repo, list(user_ids))
        return pd.DataFrame({"user_id": user_ids, "history_item_ids": [[1, 2]] * len(user_ids)})

    monkeypatch.setattr("mfli.features.extract.online_user_features", fake_online)
    assert lookup([4, 5]) == [{"user_id": 4, "history_item_ids": [1, 2]}, {"user_id": 5, "history_item_ids": [1, 2]}]
    assert seen["args"] == (lookup.repo, [4, 5])


def test_open_live_refresh_picks_up_deltas_without_touching_the_serving_object(artifacts, tiny_dataset, store,
                                                                                   tmp_path):
    publish_snapshot(store, artifacts, "v1")
    live = open_live(store.uri, cache_dir=tmp_path / "cache")
    old = live.current
    assert (old.snapshot_id, old.n_items) == ("v1", 60)
    assert old.retrieve(RetrievalRequest(recent_items=[int(NEW_IDS[0])], mode="trigger"))["items"] == []

    data, clusters = _delta_parquet(artifacts, tiny_dataset.items)
    publish_delta(store, "v1", "20240101T000000Z", data, {"n_items": len(NEW_IDS)})
    assert live.refresh() is True
    new = live.current
    assert new is not old and new.n_items == 65 and live.metadata()["deltas_applied"] == ["20240101T000000Z"]
    assert new.model is old.model and new.base is old.base  # same snapshot: only the delta was applied
    assert old.n_items == 60 and old.index is old.base  # the object in flight is unchanged
    # every new item is now retrievable: trigger on an old item of its engagement cluster
    base = new.base
    for j, item in enumerate(NEW_IDS):
        same = np.flatnonzero(base.assignments[:, 0, 0] == clusters[j, 0, 0])
        assert same.size, "delta items land in existing clusters"
        res = new.retrieve(RetrievalRequest(recent_items=[int(base.item_ids[same[0]])], k=100,
                                            facet_quotas={"engagement": 1}))
        assert int(item) in {it["item_id"] for it in res["items"]}
    # ... and usable as triggers themselves
    assert new.retrieve(RetrievalRequest(recent_items=[int(NEW_IDS[0])], k=5))["mode"] == "trigger"


def test_deltas_bound_to_another_snapshot_are_ignored(artifacts, tiny_dataset, store, tmp_path):
    publish_snapshot(store, artifacts, "v1")
    data, _ = _delta_parquet(artifacts, tiny_dataset.items)
    publish_delta(store, "v1", "w1", data)
    live = open_live(store, cache_dir=tmp_path / "cache")
    assert live.current.n_items == 65
    publish_snapshot(store, artifacts, "v2")
    # a forged delta under v2 whose manifest says it was computed against v1
    store.put_bytes("deltas/v2/w2.parquet", data)
    man = json.loads(store.get_bytes("deltas/v1/w1.manifest.json"))
    store.put_bytes("deltas/v2/w2.manifest.json", json.dumps({**man, "window": "w2"}).encode())
    assert live.refresh() is True
    cur = live.current
    assert (cur.snapshot_id, cur.n_items, live.metadata()["deltas_applied"]) == ("v2", 60, [])
    assert cur.retrieve(RetrievalRequest(recent_items=NEW_IDS.tolist(), mode="trigger"))["items"] == []


def test_corrupt_snapshot_is_refused_and_the_previous_one_keeps_serving(artifacts, store, tmp_path):
    publish_snapshot(store, artifacts, "v1")
    live = open_live(store, cache_dir=tmp_path / "cache")
    publish_snapshot(store, artifacts, "v2")
    blob = store.get_bytes("snapshots/v2/index/index.npz")
    store.put_bytes("snapshots/v2/index/index.npz", blob[: len(blob) // 2])  # truncated after publishing
    assert live.refresh() is False
    assert live.current.snapshot_id == "v1"
    assert len(live.current.retrieve(RetrievalRequest(recent_items=[1, 2], k=5))["items"]) == 5
    err = live.metadata()["last_refresh_error"]
    assert "CorruptSnapshot" in err and "index/index.npz" in err
    with pytest.raises(CorruptSnapshot, match="index/index.npz"):
        open_live(store, cache_dir=tmp_path / "cache2")


def test_unusable_folders_and_deltas_fail_with_the_file_named(artifacts, tmp_path):
    with pytest.raises(SnapshotLoadError, match="no model/ folder"):
        SnapshotRetriever.load(tmp_path)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pq.read_table(io.BytesIO(_table_bytes())), bad)
    with pytest.raises(SnapshotLoadError, match=r"bad\.parquet.*lacks column"):
        SnapshotBuilder()(artifacts, [bad])
    # a damaged file inside an already downloaded folder is caught by the loaders' own checksums
    broken = tmp_path / "snap"
    import shutil

    shutil.copytree(artifacts, broken)
    (broken / "model" / "config.json").write_text("{}")
    with pytest.raises(SnapshotLoadError, match=r"config\.json: sha256 checksum mismatch"):
        SnapshotRetriever.load(broken)


def _table_bytes() -> bytes:
    import pyarrow as pa

    buf = io.BytesIO()
    pq.write_table(pa.table({"item_id": pa.array([1], pa.int64())}), buf)
    return buf.getvalue()


def test_builder_warms_up_every_object_in_both_modes_and_batch_sizes(artifacts, tiny_dataset, store, tmp_path,
                                                                     monkeypatch):
    """The first request after a load must not pay a kernel compile: the builder answers throw-away
    requests (trigger and user mode, batches of 1 and 2, a delta item as trigger) before returning."""
    calls: list[tuple[str, int, tuple[int, ...]]] = []
    real = SnapshotRetriever.retrieve_batch

    def spy(self, requests, user_features=None):
        calls.append((requests[0].mode, len(requests), tuple(int(i) for r in requests for i in r.recent_items)))
        return real(self, requests, user_features)

    monkeypatch.setattr(SnapshotRetriever, "retrieve_batch", spy)
    build = SnapshotBuilder()
    obj = build(artifacts)
    assert {(m, b) for m, b, _ in calls} == {("trigger", 1), ("trigger", 2), ("user", 1), ("user", 2)}
    assert all(i in set(obj.base.item_ids.tolist()) for _, _, ids in calls for i in ids)

    data, _ = _delta_parquet(artifacts, tiny_dataset.items)
    delta = tmp_path / "d.parquet"
    delta.write_bytes(data)
    calls.clear()
    build(artifacts, [delta])
    assert any(m == "trigger" and set(ids) <= set(NEW_IDS.tolist()) for m, _, ids in calls)

    calls.clear()
    assert SnapshotBuilder(warm_up=False)(artifacts) is not None and calls == []


def test_warm_up_failure_is_logged_and_never_fails_the_load(artifacts, monkeypatch, caplog):
    def broken(self, requests, user_features=None):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(SnapshotRetriever, "retrieve_batch", broken)
    with caplog.at_level("WARNING", logger="mfli.serve.snapshot_retriever"):
        obj = SnapshotBuilder()(artifacts)
    assert isinstance(obj, SnapshotRetriever)
    assert "warm-up trigger request failed" in caplog.text and "kernel exploded" in caplog.text


def _blend_snapshot(art: Path, tiny_dataset, coengagement: float = 3.0):
    """The tiny snapshot served in blend mode, with a co-engagement table of all its events."""
    from mfli.index.coengagement import CoEngagementConfig, build_coengagement
    from mfli.serve.blend import BlendConfig, BlendWeights
    from mfli.serve.config import ServingConfig
    from mfli.snapshot import Snapshot

    snap = Snapshot.load(art)
    table = build_coengagement(tiny_dataset.interactions, cfg=CoEngagementConfig(num_threads=1), param=50.0)
    serving = ServingConfig(blend=BlendConfig(BlendWeights(coengagement=coengagement, trigger=0.5), depth=20,
                                              triggers=3))
    return Snapshot(snap.model, snap.index, {}, serving, coengagement=table)


def test_blend_mode_needs_a_table_and_is_auto_where_served(artifacts, tiny_dataset):
    plain = SnapshotRetriever.load(artifacts)
    with pytest.raises(RequestError, match="no blend mode") as err:
        plain.retrieve(RetrievalRequest(recent_items=[1], mode="blend"))
    assert err.value.field == "mode"
    obj = SnapshotRetriever(_blend_snapshot(artifacts, tiny_dataset))
    hist = [0, 3, 6]
    auto, trig, user = obj.retrieve_batch([
        RetrievalRequest(user_features={"history_item_ids": hist}, k=10),
        RetrievalRequest(recent_items=hist, k=10, mode="trigger"),
        RetrievalRequest(user_id=4, k=10),  # no history: user list alone (no co-engagement, no trigger)
    ])
    assert auto["mode"] == "blend" and trig["mode"] == "trigger" and user["mode"] == "blend"
    ids = [it["item_id"] for it in auto["items"]]
    assert len(ids) == 10 and len(set(ids)) == 10 and not set(ids) & set(hist)
    assert any("coengagement" in it["sources"] for it in auto["items"])
    assert all(it["facet"] in obj.facets and it["cluster"] >= 0 for it in auto["items"])
    assert all(it["sources"] == ["user"] for it in user["items"])
    assert obj.metadata()["blend"]["depth"] == 20
    from mfli.serve.blend import BlendWeights

    # with a trending weight, a user without history still gets the latest events' most engaged items
    trending = _blend_snapshot(artifacts, tiny_dataset)
    trending.serving = dataclasses.replace(trending.serving, blend=dataclasses.replace(
        trending.serving.blend, weights=BlendWeights(coengagement=3.0, trigger=0.5, trending=1.0)))
    [fresh] = SnapshotRetriever(trending).retrieve_batch([RetrievalRequest(user_id=4, k=10)])
    assert any("trending" in it["sources"] for it in fresh["items"])
    assert {it["item_id"] for it in fresh["items"] if "trending" in it["sources"]} <= set(
        trending.coengagement.trending.tolist())
    with pytest.raises(RequestError, match="give recent_items, a user_id or user_features"):
        obj.retrieve(RetrievalRequest(k=5))


def test_blend_drops_tombstoned_items_and_credits_delta_items(artifacts, tiny_dataset):
    """A co-engagement item tombstoned by a delta is never returned; a delta item (no co-engagement row)
    still ranks, from the user and trigger lists."""
    from mfli.index.delta import apply_delta
    from mfli.serve.blend import retrieve_blend

    snap = _blend_snapshot(artifacts, tiny_dataset, coengagement=10.0)
    hist = [np.array([0, 3, 6], np.int64)]
    q = snap.model.user_embeddings(np.array([4]), [hist[0].tolist()]).numpy()
    before = retrieve_blend(snap.retriever(), snap.coengagement, snap.index, snap.serving.blend, q, hist, 10)
    co_first = int(before.item_ids[0, 0])
    assert "coengagement" in before.source_names(0, 0)
    new = tiny_dataset.items.iloc[:2].copy()
    new["item_id"] = NEW_IDS[:2]
    emb = snap.model.item_embeddings(new).numpy()
    view = apply_delta(snap.index, NEW_IDS[:2], emb, assign_paths(emb, snap.model.codebooks, snap.index.maps),
                       tombstones=[co_first])
    after = retrieve_blend(snap.retriever(view), snap.coengagement, view, snap.serving.blend, q, hist, 60)
    got = after.item_ids[0][after.item_ids[0] >= 0].tolist()
    assert co_first not in got
    assert set(NEW_IDS[:2].tolist()) & set(got)
    for j, i in enumerate(got):
        if i in NEW_IDS:
            assert "coengagement" not in after.source_names(0, j)
