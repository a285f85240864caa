"""Delta assignment equals the rebuild's routing; deltas and tombstones apply without a rebuild."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from mfli.data.errors import DataError
from mfli.index.delta import DeltaIndex, apply_delta, assign, assign_paths, delta_from_table, delta_rows_table
from mfli.index.inverted import MultiFacetIndex, encode_paths, lookup_sorted, pack_paths
from mfli.index.rebalance_map import LEAF, REDIRECT
from mfli.index.split_merge import RebalanceConfig, rebalance
from mfli.model.quantizer import pack_codes, rq_encode
from mfli.serve.retriever import Retriever, RetrieverConfig


@pytest.fixture(scope="module")
def setup(synth):
    emb = synth.clustered(2400, 2, 8, seed=11, centers=5, skew=True)
    cb = synth.kmeans_codebooks(emb, 2, 6)
    ids = np.arange(2400, dtype=np.int64) * 10
    full = MultiFacetIndex.build(ids[:2000], emb[:2000], encode_paths(emb[:2000], cb), cb)
    res = rebalance(full, RebalanceConfig(floor=20, cap=80))
    return ids, emb, cb, res


def _reference_route(mp, path: int, e: np.ndarray) -> int:
    """Walk the map one item at a time, with plain numpy, as a rebuild would route it."""
    i = np.searchsorted(mp.path_ids, path)
    if i >= mp.path_ids.size or mp.path_ids[i] != path:
        d = ((mp.cluster_centroids.astype(np.float64) - e) ** 2).sum(1)
        return int(mp.cluster_ids[np.argmin(d)])
    node = int(mp.path_node[i])
    while mp.node_kind[node] != LEAF:
        if mp.node_kind[node] == REDIRECT:
            node = int(mp.node_target[node])
        else:
            a, b = mp.node_child_start[node], mp.node_child_end[node]
            d = ((mp.node_centroid[a:b].astype(np.float64) - e) ** 2).sum(1)
            node = int(a + np.argmin(d))
    return int(mp.node_target[node])


def test_items_in_the_index_are_reassigned_to_their_own_cluster(setup):
    _ids, emb, cb, res = setup
    held = np.random.default_rng(0).choice(2000, 300, replace=False)
    np.testing.assert_array_equal(assign(emb[held], cb, res.maps), res.index.clusters[held])
    # the same, one item at a time
    for i in held[:5]:
        np.testing.assert_array_equal(assign(emb[i:i + 1], cb, res.maps)[0], res.index.clusters[i])


def test_new_items_follow_the_rebuild_routing(setup):
    _ids, emb, cb, res = setup
    new = emb[2000:]
    got = assign(new, cb, res.maps)
    codes, _ = rq_encode(torch.from_numpy(new), torch.from_numpy(cb))
    paths = pack_codes(codes, 6).numpy()
    kinds = set()
    for f in range(2):
        mp = res.maps[f]
        for j in range(new.shape[0]):
            assert got[j, f] == _reference_route(mp, int(paths[j, f]), new[j, f].astype(np.float64))
        kinds.update(mp.describe(int(p))["fate"] for p in paths[:, f])
    assert {"split", "merged"} <= kinds  # both kinds of path were exercised


def test_unseen_path_goes_to_the_nearest_cluster_centroid(setup):
    ids, emb, cb, _ = setup
    codes = encode_paths(emb, cb)
    seen = codes[:, 0, 0, 0] < 3  # build only from items whose first facet-0 code is 0, 1 or 2
    res = rebalance(MultiFacetIndex.build(ids[seen], emb[seen], codes[seen], cb), RebalanceConfig(floor=20, cap=80))
    new = emb[~seen][:50]
    mp = res.maps[0]
    paths = pack_paths(codes[~seen][:50, 0, 0], 6)
    assert not np.isin(paths, mp.path_ids).any()
    d = ((new[:, None, 0, :].astype(np.float64) - mp.cluster_centroids[None]) ** 2).sum(-1)
    got = assign_paths(new, cb, res.maps, unseen="centroid")[:, 0, 0]
    np.testing.assert_array_equal(got, mp.cluster_ids[d.argmin(1)])


def test_unseen_path_goes_to_the_occupied_path_the_beam_would_reach(setup):
    ids, emb, cb, _ = setup
    codes = encode_paths(emb, cb)
    seen = codes[:, 0, 0, 0] < 3
    res = rebalance(MultiFacetIndex.build(ids[seen], emb[seen], codes[seen], cb), RebalanceConfig(floor=20, cap=80))
    new = emb[~seen][:50]
    mp = res.maps[0]
    # reference: best q . reconstruction over the occupied paths, with plain loops, then the map
    want = []
    for e in new[:, 0].astype(np.float64):
        best = max(mp.path_ids.tolist(), key=lambda p: (float(e @ (cb[0, 0, p // 6] + cb[1, 0, p % 6])), -p))
        want.append(_reference_route(mp, best, e))
    np.testing.assert_array_equal(assign(new, cb, res.maps)[:, 0], want)
    # the default is that rule, and it is not the centroid rule on this data
    assert (assign_paths(new, cb, res.maps, unseen="centroid")[:, 0, 0] != np.asarray(want)).any()
    # a beam search for a query equal to the new item reaches the cluster the item was put in
    view = apply_delta(res.index, np.arange(50) + 10**6, new, assign(new, cb, res.maps))
    r = Retriever(view, cb, config=RetrieverConfig(beam=1, merge="quota", quotas=[1.0, 0.0]))
    got = r.retrieve_users(new.copy(), k=200).item_ids
    found = [(10**6 + j) in got[j] for j in range(50)]
    assert np.mean(found) >= 0.9


def test_top_m_assignment_matches_build(synth):
    emb = synth.clustered(900, 1, 6, seed=4)
    cb = synth.kmeans_codebooks(emb, 2, 4)
    res = rebalance(MultiFacetIndex.build(np.arange(900), emb, encode_paths(emb, cb, m=2), cb),
                    RebalanceConfig(floor=15, cap=60))
    np.testing.assert_array_equal(assign_paths(emb[:100], cb, res.maps), res.index.assignments[:100])


def test_apply_delta_then_retrieve(setup):
    ids, emb, cb, res = setup
    index = res.index
    new_ids, new_emb = ids[2000:], emb[2000:]
    clusters = assign(new_emb, cb, index.maps)
    view = apply_delta(index, new_ids, new_emb, clusters, tombstones=ids[:50])
    assert isinstance(view, DeltaIndex) and view.n_items == 2000 - 50 + 400
    assert view.base is index and index.n_items == 2000  # the full snapshot is untouched
    # side CSR: each new item sits in exactly its assigned cluster
    for f in range(2):
        for j in (0, 123, 399):
            assert 2000 + j in view.delta_cluster_rows(f, int(clusters[j, f]))
    r = Retriever(view, cb, config=RetrieverConfig(beam=64, merge="sum"))
    q = new_emb[:40]  # a query equal to a new item's embeddings finds it first
    out = r.retrieve_users(q, k=10)
    assert (out.item_ids[:, 0] == new_ids[:40]).all()
    # tombstoned items never come back, in either mode
    q_old = emb[:50]
    out = r.retrieve_users(q_old, k=50)
    assert not np.isin(out.item_ids, ids[:50]).any()
    out = r.retrieve_triggers([[int(i)] for i in ids[:50]], k=50)
    assert not np.isin(out.item_ids, ids[:50]).any()
    # new items are reachable as triggers and as trigger-mode results
    out = r.retrieve_triggers([[int(new_ids[0]), int(new_ids[1])]], k=200)
    assert (out.item_ids >= 0).sum() > 0
    r2 = Retriever(view, cb, config=RetrieverConfig(sampling="topk", n_clusters=4, items_per_cluster=None,
                                                    exclude_triggers=False))
    out = r2.retrieve_triggers([[int(new_ids[5])]], k=500)
    assert new_ids[5] in out.item_ids[0]


def test_chained_deltas_replace_and_tombstone(setup):
    ids, emb, cb, res = setup
    index = res.index
    cl = assign(emb[2000:2010], cb, index.maps)
    v1 = apply_delta(index, ids[2000:2010], emb[2000:2010], cl)
    # second delta: re-publish item 2000 with another embedding, tombstone delta item 2001 and base item 0
    moved = emb[5:6].copy()
    cl2 = assign(moved, cb, index.maps)
    v2 = apply_delta(v1, ids[2000:2001], moved, cl2, tombstones=[ids[2001], ids[0]])
    assert v2.item_ids.size == 9 and ids[2001] not in v2.item_ids
    row = v2.rows_of([ids[2000]])[0]
    np.testing.assert_array_equal(v2.embeddings[row - 2000], moved[0])
    assert v2.removed[0] and not v1.removed[0]
    assert v2.n_items == 2000 - 1 + 9
    compact = v2.compact()
    assert compact.n_items == v2.n_items and ids[0] not in compact.item_ids
    np.testing.assert_array_equal(compact.clusters[compact.rows_of([ids[2000]])[0]], cl2[0])


def test_apply_delta_rejects_bad_input(setup):
    ids, emb, _cb, res = setup
    with pytest.raises(ValueError, match="does not exist"):
        apply_delta(res.index, ids[2000:2001], emb[2000:2001], np.array([[10**6, 0]]))
    with pytest.raises(ValueError, match="new_embeddings must be"):
        apply_delta(res.index, ids[2000:2002], emb[2000:2001], np.zeros((2, 2), np.int64))


def test_delta_table_round_trip(setup):
    ids, emb, cb, res = setup
    cl = assign(emb[2000:2020], cb, res.maps)
    table = delta_rows_table(ids[2000:2020], emb[2000:2020], cl, ["eng", "sem"])
    assert table.num_rows == 40 and table.schema.field("embedding").type == pa.list_(pa.float32())
    back_ids, back_emb, back_cl = delta_from_table(table, ["eng", "sem"])
    np.testing.assert_array_equal(back_ids, ids[2000:2020])
    np.testing.assert_array_equal(back_emb, emb[2000:2020])
    np.testing.assert_array_equal(back_cl[:, :, 0], cl)
    with pytest.raises(DataError, match="unknown facet"):
        delta_from_table(table, ["eng", "other"], source="delta.parquet")
    with pytest.raises(DataError, match="no row for facet"):
        delta_from_table(table.slice(0, 39), ["eng", "sem"])
    with pytest.raises(DataError, match="lacks column"):
        delta_from_table(table.drop(["cluster"]), ["eng", "sem"])
    assert lookup_sorted(np.array([1]), np.array([2]), np.array([1]))[0] == 2
