"""Two-level column routing: the tree's layout and bounds, and the same clusters as flat routing (kernels
and engine, every batch size and thread count) with fewer columns scored."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from topic_vectors import topic_vectors

from mfli.eval.serving.data import kmeans_rq_codebooks
from mfli.index.inverted import MultiFacetIndex, encode_paths
from mfli.index.split_merge import RebalanceConfig, rebalance
from mfli.serve import engine_kernels as K
from mfli.serve.engine import EngineConfig, ScanEngine
from mfli.serve.route_tree import MIN_COLUMNS, RouteTree

F, D = 2, 8


def _tree(C: int, groups: int, seed: int = 0) -> tuple[RouteTree, np.ndarray, np.ndarray, np.ndarray]:
    cent = topic_vectors(C, seed, 1, 16, topics=12)[:, 0, :]
    cent8, scale = K.quantize_rows(cent)
    return RouteTree.build(cent, cent8, scale, groups, seed), cent, cent8, scale


def test_layout_covers_every_column_once():
    tree, cent, cent8, scale = _tree(300, 17)
    assert tree.n_groups == 17 and tree.gptr[0] == 0 and tree.gptr[-1] == 300
    assert np.all(np.diff(tree.gptr) >= 0)
    np.testing.assert_array_equal(np.sort(tree.cols), np.arange(300))
    np.testing.assert_array_equal(tree.cent8, cent8[tree.cols])
    np.testing.assert_array_equal(tree.scale, scale[tree.cols])
    g = np.repeat(np.arange(17), np.diff(tree.gptr))
    for j in range(17):  # a group centroid is its columns' mean
        members = tree.cols[g == j]
        if members.size:
            np.testing.assert_allclose(tree.gcent[j], cent[members].mean(0), rtol=1e-5, atol=1e-6)
    deq = cent8.astype(np.float64) * scale[:, None]
    for c in range(300):  # every member inside its group's radius
        j = g[np.flatnonzero(tree.cols == c)[0]]
        assert np.linalg.norm(deq[c] - tree.gcent[j]) <= tree.radius[j]
    again, *_ = _tree(300, 17)  # seeded: the same groups
    np.testing.assert_array_equal(again.cols, tree.cols)
    with pytest.raises(ValueError, match="route groups"):
        RouteTree.build(cent, cent8, scale, 301)


@pytest.mark.parametrize("groups", [1, 5, 20, 400])
def test_same_clusters_as_flat_routing(groups):
    tree, _, cent8, scale = _tree(400, groups)
    q = topic_vectors(30, 1, 1, 16, topics=12)[:, 0, :] * 3.0
    for n in (1, 7, 40, 400):
        flat, flat_rank = K.route_small(q, cent8, scale, np.array([0, 400], np.int64), n, True)
        gid, rank, visited = K.route_tree(q, *tree.arrays, n)
        np.testing.assert_array_equal(gid, flat)
        np.testing.assert_array_equal(rank, flat_rank)
        assert np.all(visited >= n) and np.all(visited <= 400)
        gid2, _, visited2 = K.route_tree_chunks(q, *tree.arrays, n, 3)
        np.testing.assert_array_equal(gid2, flat)
        np.testing.assert_array_equal(visited2, visited)


def test_skips_columns_on_clustered_centroids():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, 32)).astype(np.float32)
    cent = centres[rng.integers(0, 30, 1200)] + 0.05 * rng.standard_normal((1200, 32)).astype(np.float32)
    cent8, scale = K.quantize_rows(cent)
    tree = RouteTree.build(cent, cent8, scale, 35)
    q = centres[:10] + 0.1 * rng.standard_normal((10, 32)).astype(np.float32)
    gid, _, visited = K.route_tree(q, *tree.arrays, 10)
    np.testing.assert_array_equal(gid, K.route_small(q, cent8, scale, np.array([0, 1200], np.int64), 10, True)[0])
    assert visited.mean() < 0.25 * 1200
    assert RouteTree.auto_groups(MIN_COLUMNS - 1) == 0
    assert RouteTree.auto_groups(4166) == 65


@pytest.fixture(scope="module")
def engines():
    emb = topic_vectors(3000, 0, F, D, topics=12)
    cb = kmeans_rq_codebooks(emb, 2, 16)
    ids = np.arange(3000, dtype=np.int64) * 3 + 1
    codes = encode_paths(emb, cb)
    index = rebalance(MultiFacetIndex.build(ids, emb, codes, cb), RebalanceConfig(floor=5, cap=30)).index
    cfg = EngineConfig(n_clusters=12, shortlist=60, prerank="fastscan", route_groups=0)
    flat = ScanEngine(index, cb, cfg, codes=codes)
    tree = ScanEngine(index, cb, dataclasses.replace(cfg, route_groups=16), codes=codes)
    return flat, tree, cb, topic_vectors(64, 1, F, D, topics=12)


def test_engine_routes_through_the_tree_alike_for_every_batch_and_thread_count(engines):
    flat, tree, cb, Q = engines
    assert flat._tree is None and tree._tree is not None and tree._tree.n_groups == 16
    whole, _ = tree.route(Q, 12, "joint")
    one = np.concatenate([tree.route(Q[i : i + 1], 12, "joint")[0] for i in range(len(Q))])
    np.testing.assert_array_equal(one, whole)
    two = ScanEngine(tree.index, cb, dataclasses.replace(tree.config, threads=2))
    np.testing.assert_array_equal(two.route(Q, 12, "joint")[0], whole)
    np.testing.assert_array_equal(two.search(Q, 20).item_ids, tree.search(Q, 20).item_ids)
    np.testing.assert_array_equal(tree.route(Q, 4, "per_facet")[0], flat.route(Q, 4, "per_facet")[0])
    assert tree.nbytes()["engine"] > flat.nbytes()["engine"]


def test_engine_answers_as_with_flat_routing(engines):
    flat, tree, _, Q = engines
    np.testing.assert_array_equal(tree.route(Q, 12, "joint")[0], flat.route(Q, 12, "joint")[0])
    a, b = tree.search(Q, 20), flat.search(Q, 20)
    for f in ("item_ids", "scores", "facet", "cluster", "source"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_route_groups_must_not_be_negative():
    with pytest.raises(ValueError, match="route_groups"):
        EngineConfig(route_groups=-1).validated()
