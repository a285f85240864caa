"""Facet weights for a delta's new items (``RetrieverConfig.new_item_facet_weights``): the reference
retriever and the scan engine rank delta items by ``sum_f w'_f q_f . e_f`` (snapshot items keep
``sum_f w_f q_f . e_f``), give the same lists as exact search with the delta's embeddings scaled by w',
and the default (None) is the rule before the field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from topic_vectors import topic_vectors

from mfli.eval.serving.data import kmeans_rq_codebooks
from mfli.index.delta import apply_delta, assign_paths
from mfli.index.inverted import MultiFacetIndex, encode_paths
from mfli.index.split_merge import RebalanceConfig, rebalance
from mfli.serve.engine import EngineConfig
from mfli.serve.engine_retriever import EngineRetriever
from mfli.serve.exact import exact_search
from mfli.serve.retriever import Retriever, RetrieverConfig

N, F, D, L, M, K = 800, 2, 8, 2, 8, 40
EVERYTHING = EngineConfig(n_clusters=100_000, shortlist=N + 100, pq_subquantizers=4)  # every cluster, all rescored
ALL_PATHS = M * M  # a beam this wide reaches every path: the reference reads every cluster


def _data(n: int, seed: int) -> np.ndarray:
    """``(n, F, D)`` unit vectors around 5 topics per facet."""
    return topic_vectors(n, seed, F, D, topics=5)


@pytest.fixture(scope="module")
def world():
    emb = _data(N, 0)
    cb = kmeans_rq_codebooks(emb, L, M)
    ids = np.arange(N, dtype=np.int64) * 5 + 1
    built = rebalance(MultiFacetIndex.build(ids, emb, encode_paths(emb, cb), cb), RebalanceConfig(floor=8, cap=50))
    new = _data(80, 7)
    new_ids = np.arange(80, dtype=np.int64) + 50_000
    view = apply_delta(built.index, new_ids, new, assign_paths(new, cb, built.maps))
    return ids, emb, cb, view, new_ids, new, _data(25, 1)


def _expected(world, w_new, k: int = K) -> np.ndarray:
    """Exact search over snapshot + delta, the delta's embeddings scaled facet by facet by ``w_new``."""
    ids, emb, _, _, new_ids, new, Q = world
    scaled = new * np.asarray(w_new, np.float32)[None, :, None]
    got, _ = exact_search(Q, np.concatenate([emb, scaled]), k, np.concatenate([ids, new_ids]))
    return got


@pytest.mark.parametrize("w_new", [(1.0, 0.0), (0.5, 1.5), (2.0, 1.0)])
def test_both_serving_paths_rank_delta_items_by_their_own_facet_weights(world, w_new):
    _, _, cb, view, new_ids, new, Q = world
    cfg = RetrieverConfig(merge="sum", beam=ALL_PATHS, new_item_facet_weights=list(w_new))
    ref = Retriever(view, cb, config=cfg).retrieve_users(Q, K)
    eng = EngineRetriever(view, cb, config=cfg, engine_config=EVERYTHING).retrieve_users(Q, K)
    truth = _expected(world, w_new)
    np.testing.assert_array_equal(ref.item_ids, truth)
    np.testing.assert_array_equal(eng.item_ids, truth)
    # a delta item's score is sum_f w'_f q_f . e_f in both paths
    row = {int(i): r for r, i in enumerate(new_ids)}
    for res in (ref, eng):
        b, j = np.argwhere(np.isin(res.item_ids, new_ids))[0]
        e = new[row[int(res.item_ids[b, j])]]
        want = sum(w_new[f] * float(Q[b, f] @ e[f]) for f in range(F))
        assert res.scores[b, j] == pytest.approx(want, abs=1e-5)


def test_the_weights_change_which_delta_items_are_served(world):
    _, _, cb, view, new_ids, _, Q = world
    base = RetrieverConfig(merge="sum", beam=ALL_PATHS)
    for make in (lambda c: Retriever(view, cb, config=c),
                 lambda c: EngineRetriever(view, cb, config=c, engine_config=EVERYTHING)):
        old = make(base).retrieve_users(Q, K).item_ids
        off = make(dataclasses.replace(base, new_item_facet_weights=[1.0, 0.0])).retrieve_users(Q, K).item_ids
        boost = make(dataclasses.replace(base, new_item_facet_weights=[2.0, 2.0])).retrieve_users(Q, K).item_ids
        n_old, n_off, n_boost = (int(np.isin(x, new_ids).sum()) for x in (old, off, boost))
        # dropping a facet's score (unit vectors: mostly positive sums) serves fewer new items, doubling more
        assert n_off < n_old < n_boost
        # snapshot items keep their order relative to each other
        for a, b in zip(old, off):
            keep_a, keep_b = a[~np.isin(a, new_ids)], b[~np.isin(b, new_ids)]
            n = min(keep_a.size, keep_b.size)
            np.testing.assert_array_equal(keep_a[:n], keep_b[:n])


def test_default_and_unit_weights_are_the_rule_before_the_field(world):
    _, _, cb, view, _, _, Q = world
    none = RetrieverConfig(merge="sum", beam=ALL_PATHS)
    ones = dataclasses.replace(none, new_item_facet_weights=[1.0, 1.0])
    truth = _expected(world, (1.0, 1.0))
    for cfg in (none, ones):
        np.testing.assert_array_equal(Retriever(view, cb, config=cfg).retrieve_users(Q, K).item_ids, truth)
        np.testing.assert_array_equal(
            EngineRetriever(view, cb, config=cfg, engine_config=EVERYTHING).retrieve_users(Q, K).item_ids, truth)


def test_the_quota_merge_and_trigger_mode_ignore_them(world):
    _, _, cb, view, new_ids, _, Q = world
    quota = RetrieverConfig(merge="quota", beam=ALL_PATHS)
    a = Retriever(view, cb, config=quota)
    b = Retriever(view, cb, config=dataclasses.replace(quota, new_item_facet_weights=[1.0, 0.0]))
    np.testing.assert_array_equal(a.retrieve_users(Q, K).item_ids, b.retrieve_users(Q, K).item_ids)
    trig = [[int(new_ids[0]), 11, 21]]
    np.testing.assert_array_equal(a.retrieve_triggers(trig, K, rng=np.random.default_rng(0)).item_ids,
                                  b.retrieve_triggers(trig, K, rng=np.random.default_rng(0)).item_ids)


def test_weights_of_the_wrong_length_are_refused(world):
    _, _, cb, view, _, _, _ = world
    bad = RetrieverConfig(merge="sum", new_item_facet_weights=[1.0])
    with pytest.raises(ValueError, match="new_item_facet_weights must be F=2"):
        Retriever(view, cb, config=bad)
    with pytest.raises(ValueError, match="new_item_facet_weights must be F=2"):
        EngineRetriever(view, cb, config=bad, engine_config=EVERYTHING)
