"""The scan engine behind the serving interface: the same lists as the reference retriever and exact search
when both read every cluster, with and without a delta (new, replaced and tombstoned items); recall close
to the reference at serving budgets; delta items reachable, excluded and explained; other modes and
quota views taken by the reference path."""

from __future__ import annotations

import dataclasses

import faiss
import numpy as np
import pytest
from topic_vectors import topic_vectors

from mfli.eval.serving.data import kmeans_rq_codebooks
from mfli.index.delta import DeltaIndex, apply_delta, assign_paths
from mfli.index.inverted import MultiFacetIndex, encode_paths
from mfli.index.split_merge import RebalanceConfig, rebalance
from mfli.serve.engine import EngineConfig
from mfli.serve.engine_retriever import DELTA_EXACT_ITEMS, DELTA_PROBE, EngineRetriever
from mfli.serve.exact import exact_search
from mfli.serve.retriever import Retriever, RetrieverConfig

N, F, D, L, M = 1500, 2, 8, 2, 16


def _data(n: int, seed: int) -> np.ndarray:
    """``(n, F, D)`` unit vectors around 6 topics per facet."""
    return topic_vectors(n, seed, F, D, topics=6)


def _codebooks(emb: np.ndarray) -> np.ndarray:
    """``(L, F, M, D)`` residual k-means codebooks."""
    return kmeans_rq_codebooks(emb, L, M)

SUM = RetrieverConfig(merge="sum")
EVERYTHING = EngineConfig(n_clusters=100_000, shortlist=N + 100, pq_subquantizers=4)  # every cluster, all rescored


@pytest.fixture(scope="module")
def world():
    emb = _data(N, 0)
    cb = _codebooks(emb)
    ids = np.arange(N, dtype=np.int64) * 7 + 3
    built = rebalance(MultiFacetIndex.build(ids, emb, encode_paths(emb, cb), cb), RebalanceConfig(floor=10, cap=60))
    index = built.index
    # a delta: 60 new items, one replacing a snapshot item, and 15 snapshot items tombstoned
    new = _data(60, 5)
    new_ids = np.arange(60, dtype=np.int64) + 100_000
    new_ids[0] = ids[3]
    view = apply_delta(index, new_ids, new, assign_paths(new, cb, built.maps), tombstones=ids[10:25])
    return ids, emb, cb, index, view, _data(60, 1)


def _live(view):
    """(ids, (n, F, d) embeddings) of the view's live items."""
    keep = ~view.removed
    return (np.concatenate([view.base.item_ids[keep], view.item_ids]),
            np.concatenate([view.base.embeddings[keep], view.embeddings]))


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([np.isin(t, g).mean() for g, t in zip(got, truth)]))


@pytest.mark.parametrize("prerank", ["codes", "fastscan"])
@pytest.mark.parametrize("with_delta", [False, True])
def test_reading_every_cluster_gives_the_reference_and_exact_lists(world, with_delta, prerank):
    _, _, cb, index, view, Q = world
    space = view if with_delta else index
    engine = EngineRetriever(space, cb, config=SUM, engine_config=dataclasses.replace(EVERYTHING, prerank=prerank))
    reference = Retriever(space, cb, config=RetrieverConfig(merge="sum", beam=16 * 16))  # every path
    hist = [list(_live(view)[0][b::37][:4]) for b in range(len(Q))]
    got = engine.retrieve_users(Q, 30, exclude=hist)
    ref = reference.retrieve_users(Q, 30, exclude=hist)
    live_ids, live_emb = _live(view) if with_delta else (index.item_ids, index.embeddings)
    ex_ids, ex_scores = exact_search(Q, live_emb, 30, live_ids, exclude=hist)
    np.testing.assert_array_equal(got.item_ids, ref.item_ids)
    np.testing.assert_array_equal(got.item_ids, ex_ids)
    np.testing.assert_allclose(got.scores, ex_scores, rtol=1e-5, atol=1e-5)
    for b in range(len(Q)):
        assert not np.isin(hist[b], got.item_ids[b]).any()
    if with_delta:
        assert np.isin(got.item_ids, view.item_ids).sum() >= 20  # delta items do rank
        assert not np.isin(got.item_ids, index.item_ids[10:25]).any()  # tombstones never
        # the replaced item is served with its new vector: querying with it finds it at the top
        top = engine.retrieve_users(view.embeddings[:1], 1)
        assert top.item_ids[0, 0] == index.item_ids[3]
        assert top.scores[0, 0] == pytest.approx(float((view.embeddings[0] ** 2).sum()), abs=1e-5)


@pytest.mark.parametrize("prerank", ["codes", "fastscan"])
@pytest.mark.parametrize("with_delta", [False, True])
def test_serving_budget_recall_is_close_to_the_reference(world, with_delta, prerank):
    """At serving budgets both read a fraction of the clusters (different routing: centroids vs beam), so
    the lists differ; recall@30 against exact search must stay within 0.05 of the reference's."""
    _, _, cb, index, view, Q = world
    space = view if with_delta else index
    engine = EngineRetriever(space, cb, config=SUM, engine_config=EngineConfig(n_clusters=24, shortlist=200,
                                                                               pq_subquantizers=4, prerank=prerank))
    reference = Retriever(space, cb, config=RetrieverConfig(merge="sum", beam=8))
    live_ids, live_emb = _live(view) if with_delta else (index.item_ids, index.embeddings)
    truth = exact_search(Q, live_emb, 30, live_ids)[0]
    r_engine = _recall(engine.retrieve_users(Q, 30).item_ids, truth)
    r_ref = _recall(reference.retrieve_users(Q, 30).item_ids, truth)
    assert r_engine >= r_ref - 0.05, (r_engine, r_ref)
    assert r_engine > 0.8


@pytest.mark.parametrize("prerank", ["codes", "fastscan"])
def test_delta_items_reach_themselves_and_are_explained(world, prerank):
    _, _, cb, index, view, _ = world
    engine = EngineRetriever(index, cb, config=SUM, engine_config=EngineConfig(n_clusters=16, shortlist=100,
                                                                               pq_subquantizers=4, prerank=prerank))
    served = engine.with_index(view)
    assert engine.retrieve_users(view.embeddings, 5).item_ids.max() < 100_000  # the base object is untouched
    res = served.retrieve_users(view.embeddings, 10)
    # the cold-start gate's self-query: each new item's own embedding finds it
    assert (res.item_ids == view.item_ids[:, None]).any(1).mean() >= 0.9
    for row in res.explanations():
        for e in row:
            r = view.rows_of(np.array([e["item_id"]]))[0]
            f = view.base.facet_names.index(e["facet"])
            assignments = view.assignments[r - N, f] if r >= N else view.base.assignments[r, f]
            assert e["cluster"] in assignments and 0 <= e["path_rank"] < 16
    # a delta item excluded by id never comes back
    ex = served.retrieve_users(view.embeddings[:5], 10, exclude=[[i] for i in view.item_ids[:5]])
    assert not (ex.item_ids == view.item_ids[:5, None]).any()


def test_other_modes_take_the_reference_path(world):
    ids, _, cb, index, view, Q = world
    engine = EngineRetriever(view, cb, config=SUM, engine_config=EngineConfig(pq_subquantizers=4))
    reference = Retriever(view, cb, config=SUM)
    trig = [list(ids[[1, 50, 90]]), [int(view.item_ids[5])]]
    np.testing.assert_array_equal(engine.retrieve_triggers(trig, 10, rng=np.random.default_rng(1)).item_ids,
                                  reference.retrieve_triggers(trig, 10, rng=np.random.default_rng(1)).item_ids)
    quota = RetrieverConfig(merge="quota", quotas=[1.0, 0.0])
    view_q = engine.with_config(quota)
    assert isinstance(view_q, Retriever) and engine.with_config(SUM) is engine
    np.testing.assert_array_equal(view_q.retrieve_users(Q, 10).item_ids,
                                  reference.with_config(quota).retrieve_users(Q, 10).item_ids)
    np.testing.assert_array_equal(engine.retrieve_users(Q, 10, beam=8).item_ids,
                                  reference.retrieve_users(Q, 10, beam=8).item_ids)
    with pytest.raises(ValueError, match="merge='sum'"):
        EngineRetriever(index, cb, config=RetrieverConfig(merge="quota"))


def test_an_engine_rebuilt_from_the_same_snapshot_ranks_identically(world):
    """The gate and the service each build the engine from the snapshot (the residual quantiser is fitted
    at load): the fit is seeded, so both serve the same codes and lists."""
    _, _, cb, _, view, Q = world
    cfg = EngineConfig(n_clusters=12, shortlist=60, pq_subquantizers=4)
    before = faiss.omp_get_max_threads()
    try:  # a gate and a service may run with other OpenMP thread counts
        faiss.omp_set_num_threads(2)
        a = EngineRetriever(view, cb, config=SUM, engine_config=cfg)
        faiss.omp_set_num_threads(1)
        b = EngineRetriever(view, cb, config=SUM, engine_config=cfg)
    finally:
        faiss.omp_set_num_threads(before)
    np.testing.assert_array_equal(a.engine.entry_codes, b.engine.entry_codes)
    np.testing.assert_array_equal(a.retrieve_users(Q, 20).item_ids, b.retrieve_users(Q, 20).item_ids)


def _trigger_reference(engine: EngineRetriever, view, trig: list, k: int, exclude: list,
                       exact_delta: bool = False) -> list[list[int]]:
    """Brute force of list-based trigger mode over a view: per trigger, its live list items and the delta
    items of its own clusters and their nearest (``exact_delta``: every delta item; a new trigger: every
    live item, when routing reads every cluster), scored ``e_t . e_i``; best per item, triggers and
    exclusions dropped, top k (ties: lower id)."""
    eng = engine.engine
    Nb = view.base.n_items
    live_ids, live_emb = _live(view)
    live_emb = live_emb.reshape(len(live_ids), -1)
    emb_of = dict(zip(live_ids.tolist(), live_emb))
    out = []
    for b, t_ids in enumerate(trig):
        best: dict[int, float] = {}
        for t in t_ids:
            r = int(view.rows_of(np.array([t]))[0])
            if r < 0:
                continue
            if r < Nb:
                cand = [int(view.base.item_ids[j]) for j in eng.neighbour_rows([r])[0] if j >= 0 and not view.removed[j]]
                own = set(eng.col_neighbours[eng._own[r], :DELTA_PROBE].reshape(-1).tolist())
                for c in own:
                    lo, hi = engine._doff[c], engine._doff[c + 1]
                    cand += view.item_ids[engine._drows[lo:hi]].tolist()
                if exact_delta:
                    cand += view.item_ids.tolist()
            else:
                cand = live_ids.tolist()
            for i in cand:
                if i in t_ids or i in exclude[b]:
                    continue
                best[i] = max(best.get(i, -np.inf), float(emb_of[t] @ emb_of[i]))
        out.append(sorted(best, key=lambda i: (-best[i], i))[:k])
    return out


@pytest.mark.parametrize("with_delta,exact_delta", [(False, True), (True, True), (True, False)])
def test_trigger_mode_from_neighbour_lists(world, with_delta, exact_delta):
    """``exact_delta``: the view's 60 new items are under ``DELTA_EXACT_ITEMS`` and each is scored against
    every trigger; else (the retriever's limit set to 0) only those of the triggers' own and nearest columns."""
    assert len(world[4].item_ids) <= DELTA_EXACT_ITEMS  # the default covers this delta
    ids, _, cb, index, view, _ = world
    # exact rescoring, so the brute force's products are the served scores (stored scores: the test below)
    cfg = dataclasses.replace(EVERYTHING, prerank="fastscan", neighbours=200, neighbour_probe=6, list_scores=False)
    base = EngineRetriever(index, cb, config=SUM, engine_config=cfg)
    if not exact_delta:
        base.delta_exact_items = 0  # with_index below keeps it
    served = base.with_index(view) if with_delta else base
    # snapshot triggers, a new item as trigger, a replaced item (ids[3]: its new version), an unknown id
    trig = [list(ids[[1, 50, 90]]), [int(view.item_ids[5])], [int(ids[3]), 77], list(ids[[200]])]
    excl = [[int(ids[2])], [], [], [int(x) for x in view.item_ids[:30]]]
    got = served.retrieve_triggers(trig, 25, exclude=excl)
    assert got.mode == "trigger"
    want = _trigger_reference(served, view if with_delta else DeltaIndex.over(index), trig, 25, excl, exact_delta)
    for b in range(len(trig)):
        n = len(want[b])
        np.testing.assert_array_equal(got.item_ids[b, :n], want[b])
        assert (got.item_ids[b, n:] == -1).all()
        assert set(got.source[b, :n].tolist()) <= set(trig[b])
    # a k beyond the lists' length takes the reference path (the paper's cluster histogram)
    assert served.retrieve_triggers(trig[:1], 201).item_ids.shape == (1, 201)
    np.testing.assert_array_equal(
        served.retrieve_triggers(trig, 201, exclude=excl, rng=np.random.default_rng(0)).item_ids,
        served._reference().retrieve_triggers(trig, 201, exclude=excl, rng=np.random.default_rng(0)).item_ids)
    if with_delta:
        assert not np.isin(got.item_ids, ids[10:25]).any()  # tombstoned
        assert (got.item_ids[1] >= 0).sum() == 25  # a new trigger reaches items through its routed scan



@pytest.mark.parametrize("with_delta", [False, True])
def test_stored_list_scores_serve_nearly_the_exact_answers(world, with_delta):
    """Lists with stored scores (the default) against the same lists rescored exactly, through the
    retriever and a delta: each stored score within half a quantisation step of the exact product, and
    the answers differ only where that rounding reorders items."""
    ids, _, cb, index, view, _ = world
    cfg = dataclasses.replace(EVERYTHING, prerank="fastscan", neighbours=200, neighbour_probe=6)
    stored = EngineRetriever(index, cb, config=SUM, engine_config=cfg)
    exact = EngineRetriever(index, cb, config=SUM, engine_config=dataclasses.replace(cfg, list_scores=False))
    assert stored.engine._lists.has_scores and not exact.engine._lists.has_scores
    assert stored.engine.list_nbytes - exact.engine.list_nbytes == index.n_items * (200 + 8)
    if with_delta:
        stored, exact = stored.with_index(view), exact.with_index(view)
    rng = np.random.default_rng(4)
    trig = [list(rng.choice(ids, int(rng.integers(1, 6)), replace=False)) for _ in range(40)]
    a, b = stored.retrieve_triggers(trig, 50), exact.retrieve_triggers(trig, 50)
    half_step = float(stored.engine._lists.score_step.max()) / 2 + 1e-6
    same = a.item_ids == b.item_ids
    assert same.mean() > 0.5 and (a.item_ids >= 0).sum() == (b.item_ids >= 0).sum()
    np.testing.assert_allclose(a.scores[same], b.scores[same], atol=half_step, rtol=0)
    overlap = np.mean([len(set(x) & set(y)) / 50 for x, y in zip(a.item_ids.tolist(), b.item_ids.tolist())])
    assert overlap >= 0.97
    # one trigger without a delta: the list's own order, so the same items in the same order (a delta's
    # merge orders by score, where equal stored bytes may swap neighbours)
    one = [[t[0]] for t in trig]
    a1, b1 = stored.retrieve_triggers(one, 50).item_ids, exact.retrieve_triggers(one, 50).item_ids
    if not with_delta:
        np.testing.assert_array_equal(a1, b1)
    assert np.mean([len(set(x) & set(y)) / 50 for x, y in zip(a1.tolist(), b1.tolist())]) >= 0.97


def test_delta_trigger_pass_in_chunks_gives_the_same_lists(world, monkeypatch):
    """The delta pass of list-based trigger mode runs over bounded request chunks (a daily evaluation's
    thousands of users over a large delta once took 24 GB); the lists are unchanged."""
    import mfli.serve.engine_retriever as er

    ids, _, cb, index, view, _ = world
    cfg = dataclasses.replace(EVERYTHING, prerank="fastscan", neighbours=200, neighbour_probe=6)
    served = EngineRetriever(index, cb, config=SUM, engine_config=cfg).with_index(view)
    rng = np.random.default_rng(1)
    trig = [list(rng.choice(ids, 3, replace=False)) + [int(view.item_ids[b % 20])] for b in range(9)]
    whole = served.retrieve_triggers(trig, 25)
    monkeypatch.setattr(er, "DELTA_REQUESTS", 2)
    chunked = served.retrieve_triggers(trig, 25)
    np.testing.assert_array_equal(chunked.item_ids, whole.item_ids)
    np.testing.assert_array_equal(chunked.scores, whole.scores)
    np.testing.assert_array_equal(chunked.source, whole.source)
