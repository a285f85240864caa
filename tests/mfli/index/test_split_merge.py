"""Split-and-merge rebalancing: bounds, exactly-once membership, routing map, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from mfli.index.inverted import MultiFacetIndex, encode_paths, pack_paths
from mfli.index.rebalance_map import LEAF, REDIRECT, SPLIT, nearest_centroid
from mfli.index.split_merge import RebalanceConfig, rebalance


@pytest.fixture(scope="module")
def built(synth):
    emb = synth.clustered(3000, 2, 8, seed=3, centers=6, skew=True)
    cb = synth.kmeans_codebooks(emb, 2, 8)
    codes = encode_paths(emb, cb)
    index = MultiFacetIndex.build(np.arange(3000, dtype=np.int64) + 100, emb, codes, cb)
    return index, cb, codes


@pytest.fixture(scope="module")
def balanced(built):
    index, _, _ = built
    return rebalance(index, RebalanceConfig(floor=25, cap=100, seed=0))


def test_bounds_and_every_item_exactly_once(built, balanced):
    index, _, _ = built
    new = balanced.index
    assert new.rebalanced and new.n_items == 3000
    for f in range(2):
        csr = new.facets[f]
        sizes = csr.sizes()
        assert sizes.min() >= 25 and sizes.max() <= 100
        # every item exactly once in this facet's single path slot
        assert np.array_equal(np.sort(csr.rows), np.arange(3000))
        # dense cluster ids, CSR consistent with the item -> cluster array
        assert np.array_equal(csr.cluster_ids, np.arange(csr.n_clusters))
        owner = np.repeat(csr.cluster_ids, sizes)
        assert np.array_equal(new.clusters[csr.rows, f], owner)
        # the raw build really violated the bounds on both sides
        raw = index.facets[f].sizes()
        assert raw.max() > 100 and raw.min() < 25
        assert balanced.report[f]["violations"] == 0
        assert balanced.report[f]["splits"] > 0 and balanced.report[f]["merges"] > 0


def test_balance_statistics_improve(balanced):
    for before, after in zip(balanced.before, balanced.after):
        assert after.gini < before.gini
        assert after.max_size < before.max_size
        assert after.top1pct_share < before.top1pct_share
        assert after.n_entries == before.n_entries == 3000


def test_map_routes_members_to_their_new_cluster(built, balanced):
    index, _, _ = built
    for f in range(2):
        mp = balanced.maps[f]
        routed = mp.route(index.assignments[:, f, 0], index.embeddings[:, f])
        np.testing.assert_array_equal(routed, balanced.index.clusters[:, f])
        # one item at a time gives the same answer (routing never depends on the batch)
        for i in (0, 17, 2999):
            assert mp.route(index.assignments[i:i + 1, f, 0], index.embeddings[i:i + 1, f])[0] == routed[i]


def test_map_describes_split_and_merged_paths(built, balanced):
    index, _, _ = built
    mp = balanced.maps[0]
    fates = {}
    for p in mp.path_ids.tolist():
        fates.setdefault(mp.describe(p)["fate"], []).append(p)
    assert {"split", "merged"} <= set(fates)
    for p in fates["split"]:
        info = mp.describe(p)
        members = np.flatnonzero(index.assignments[:, 0, 0] == p)
        # a split path's members are spread over exactly the clusters the map lists for it
        assert set(balanced.index.clusters[members, 0].tolist()) <= set(info["clusters"])
        assert len(info["clusters"]) >= 2 and info["child_centroids"].shape[1] == 8
    for p in fates["merged"]:
        info = mp.describe(p)
        members = np.flatnonzero(index.assignments[:, 0, 0] == p)
        assert len(info["clusters"]) == 1
        assert set(balanced.index.clusters[members, 0].tolist()) == set(info["clusters"])
    assert mp.describe(10**6)["fate"] == "unseen"


def test_rebalance_is_deterministic(built, balanced):
    index, _, _ = built
    again = rebalance(index, RebalanceConfig(floor=25, cap=100, seed=0))
    np.testing.assert_array_equal(again.index.assignments, balanced.index.assignments)


def test_infeasible_bounds_are_rejected(built):
    index, _, _ = built
    with pytest.raises(ValueError, match="cap=30 < 2 \\* floor=40"):
        rebalance(index, RebalanceConfig(floor=20, cap=30))
    with pytest.raises(ValueError, match="already rebalanced"):
        rebalance(rebalance(index, RebalanceConfig(floor=20, cap=200)).index, RebalanceConfig(floor=20, cap=200))


def _one_layer_index(emb: np.ndarray, paths: np.ndarray, M: int = 4) -> MultiFacetIndex:
    n = emb.shape[0]
    cb = np.zeros((1, 1, M, emb.shape[2]), np.float32)
    return MultiFacetIndex.build(np.arange(n), emb, paths.reshape(n, 1, 1), cb)


def test_forced_merge_is_cut_back_within_bounds():
    # 19 items spread on the x axis in path 0, 3 far away in path 1: the small path can only merge
    # into the big one (22 > cap), which is then cut at the median into two halves >= floor.
    x = np.concatenate([np.stack([np.linspace(0, 1, 19), np.zeros(19)], 1),
                        np.array([[10.0, 0.0], [10.5, 0.1], [11.0, -0.1]])]).astype(np.float32)
    paths = np.array([0] * 19 + [1] * 3)
    res = rebalance(_one_layer_index(x[:, None, :], paths), RebalanceConfig(floor=10, cap=20))
    sizes = res.index.facets[0].sizes()
    assert sorted(sizes.tolist()) == [11, 11]
    assert res.report[0]["forced_merges"] == 1 and res.report[0]["bisections"] == 1
    assert res.report[0]["violations"] == 0
    np.testing.assert_array_equal(res.maps[0].route(paths, x), res.index.clusters[:, 0])


def test_documented_exceptions():
    # a facet holding fewer than `floor` items ends as one cluster below the floor
    x = np.random.default_rng(0).standard_normal((7, 1, 3)).astype(np.float32)
    res = rebalance(_one_layer_index(x, np.array([0, 0, 1, 1, 2, 3, 3])), RebalanceConfig(floor=10, cap=40))
    assert res.index.facets[0].sizes().tolist() == [7]
    assert res.report[0]["below_floor_facet"] is True
    # identical points cannot be split: the cluster stays above the cap and is reported
    same = np.ones((50, 1, 3), np.float32)
    res = rebalance(_one_layer_index(same, np.zeros(50, np.int64)), RebalanceConfig(floor=5, cap=20))
    assert res.index.facets[0].sizes().tolist() == [50]
    assert res.report[0]["unsplittable"] == 1 and res.report[0]["violations"] == 1


def test_top_m_paths_rebalance_keeps_each_slot(synth):
    emb = synth.clustered(800, 1, 6, seed=5, centers=4)
    cb = synth.kmeans_codebooks(emb, 2, 5)
    index = MultiFacetIndex.build(np.arange(800), emb, encode_paths(emb, cb, m=2), cb)
    res = rebalance(index, RebalanceConfig(floor=20, cap=80))
    csr = res.index.facets[0]
    assert (np.bincount(csr.rows, minlength=800) == 2).all()
    assert csr.sizes().min() >= 20 and csr.sizes().max() <= 80
    for slot in range(2):
        routed = res.maps[0].route(index.assignments[:, 0, slot], emb[:, 0])
        np.testing.assert_array_equal(routed, res.index.assignments[:, 0, slot])


def test_nearest_centroid_is_row_independent():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 5)).astype(np.float32)
    for k in (7, 200):  # direct and shortlisted paths
        c = rng.standard_normal((k, 5)).astype(np.float32)
        ref = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1).argmin(1)
        got = nearest_centroid(x, c)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(np.concatenate([nearest_centroid(x[i:i + 1], c) for i in range(0, 300, 37)]),
                                      got[::37])


def test_node_graph_is_well_formed(balanced):
    for mp in balanced.maps:
        kinds = mp.node_kind
        assert set(np.unique(kinds).tolist()) <= {LEAF, REDIRECT, SPLIT}
        leaves = np.flatnonzero(kinds == LEAF)
        assert sorted(mp.node_target[leaves].tolist()) == list(range(mp.n_clusters))
        red = np.flatnonzero(kinds == REDIRECT)
        assert (mp.node_kind[mp.node_target[red]] != REDIRECT).all()  # redirects are compressed
        assert mp.cluster_centroids.shape == (mp.n_clusters, 8)


def test_split_children_are_routed_by_nearest_centroid(built, balanced):
    index, _, _ = built
    mp = balanced.maps[1]
    split_paths = [p for p in mp.path_ids.tolist() if mp.describe(p)["fate"] == "split"]
    p = split_paths[0]
    node = int(mp.path_node[np.searchsorted(mp.path_ids, p)])
    a, b = mp.node_child_start[node], mp.node_child_end[node]
    members = np.flatnonzero(index.assignments[:, 1, 0] == p)
    child = nearest_centroid(index.embeddings[members, 1], mp.node_centroid[a:b]) + a
    # a child that is a leaf holds its members directly
    for c, i in zip(child.tolist(), members.tolist()):
        if mp.node_kind[c] == LEAF:
            assert balanced.index.clusters[i, 1] == mp.node_target[c]
    assert pack_paths(np.array([[0, 0]]), 8)[0] == 0
