"""Scan engine: exactness over its candidate clusters, code-lookup scores, de-duplication, explanations.

Every test built on the ``world`` fixture runs with both pre-rankers (learned codes, 4-bit fast-scan).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from topic_vectors import topic_vectors

from mfli.eval.serving.data import kmeans_rq_codebooks
from mfli.index.inverted import MultiFacetIndex, encode_paths
from mfli.index.split_merge import RebalanceConfig, rebalance
from mfli.serve.engine import EngineConfig, ScanEngine

F, D, L, M = 2, 8, 2, 16


def _data(n: int, seed: int) -> np.ndarray:
    """``(n, F, D)`` unit vectors around 6 topics per facet."""
    return topic_vectors(n, seed, F, D, topics=6)


def _codebooks(emb: np.ndarray) -> np.ndarray:
    """``(L, F, M, D)`` residual k-means codebooks."""
    return kmeans_rq_codebooks(emb, L, M)


@pytest.fixture(scope="module", params=["codes", "fastscan"])
def world(request):
    emb = _data(1500, 0)
    cb = _codebooks(emb)
    ids = np.arange(1500, dtype=np.int64) * 7 + 3
    codes = encode_paths(emb, cb)
    index = rebalance(MultiFacetIndex.build(ids, emb, codes, cb), RebalanceConfig(floor=10, cap=60)).index
    engine = ScanEngine(index, cb, EngineConfig(n_clusters=6, shortlist=50, pq_subquantizers=4,
                                                pq_train_size=1500, prerank=request.param), codes=codes)
    queries = _data(40, 1)
    return ids, emb, cb, index, engine, queries


def _candidates(engine: ScanEngine, gid_row: np.ndarray) -> np.ndarray:
    """Distinct item rows of the chosen cluster columns."""
    cols = gid_row[gid_row >= 0]
    return np.unique(np.concatenate([engine.entry_rows[engine.offsets[c]:engine.offsets[c + 1]] for c in cols]))


@pytest.mark.parametrize("routing", ["joint", "per_facet"])
def test_equals_brute_force_over_candidate_clusters(world, routing):
    ids, emb, _, _, engine, Q = world
    k = 20
    res = engine.search(Q, k, n_clusters=5, shortlist=10_000, routing=routing)
    gid, _ = engine.route(Q, 5, routing)
    x = emb.reshape(len(emb), -1)
    for b in range(len(Q)):
        rows = _candidates(engine, gid[b])
        s = x[rows] @ Q[b].reshape(-1)
        order = np.lexsort((rows, -s))[:k]
        np.testing.assert_array_equal(res.item_ids[b, : order.size], ids[rows[order]])
        np.testing.assert_allclose(res.scores[b, : order.size], s[order], rtol=1e-5, atol=1e-5)
        assert res.rescored[b] == rows.size  # every distinct candidate rescored exactly once
        assert res.entries[b] >= rows.size


def test_code_scores_equal_query_dot_reconstruction(world):
    _, emb, cb, _, engine, Q = world
    if engine.config.prerank != "codes":
        pytest.skip("the residual codes of the 'codes' pre-ranker")
    rows = np.arange(0, 1500, 7)
    rec = engine.reconstruct(rows)
    for b in range(5):
        np.testing.assert_allclose(engine.code_scores(Q[b], rows), rec @ Q[b].reshape(-1), rtol=1e-4, atol=1e-4)
    # the learned part is the model's residual reconstruction: recon error shrinks with the residual code
    codes = encode_paths(emb[rows], cb)[:, :, 0, :]
    learned = sum(cb[layer, f][codes[:, f, layer]] for layer in range(L) for f in [0]).astype(np.float32)
    err_learned = np.linalg.norm(emb[rows, 0] - learned, axis=1).mean()
    err_full = np.linalg.norm(emb[rows].reshape(len(rows), -1)[:, :D] - rec[:, :D], axis=1).mean()
    assert err_full < err_learned


def test_each_item_once_with_explanations(world):
    _, _, _, index, engine, Q = world
    res = engine.search(Q, 30)
    for b in range(len(Q)):
        got = res.item_ids[b][res.item_ids[b] >= 0]
        assert got.size == np.unique(got).size
        assert np.all(np.diff(res.scores[b][: got.size]) <= 1e-6)
    expl = res.explanations()
    for b, row in enumerate(expl):
        assert len(row) == (res.item_ids[b] >= 0).sum() > 0
        for e in row:
            f = index.facet_names.index(e["facet"])
            # the explaining cluster holds the item in that facet
            r = index.rows_of(np.array([e["item_id"]]))[0]
            assert e["cluster"] in index.assignments[r, f]
            assert 0 <= e["path_rank"] < engine.config.n_clusters


def test_exclusion_and_determinism(world):
    _, _, _, _, engine, Q = world
    # a short list over every candidate: excluding the top 5 shifts the ranking by exactly 5 (with a
    # shorter list the excluded items' slots go to other candidates, which may rank anywhere)
    full = engine.search(Q, 25, shortlist=10_000)
    seen = [list(full.item_ids[b, :5]) for b in range(len(Q))]
    b_ = engine.search(Q, 25, exclude=seen, shortlist=10_000)
    short = engine.search(Q, 25, exclude=seen)
    for b in range(len(Q)):
        assert not np.isin(seen[b], b_.item_ids[b]).any()
        assert not np.isin(seen[b], short.item_ids[b]).any()
        np.testing.assert_array_equal(b_.item_ids[b, :20], full.item_ids[b, 5:25])
    a = engine.search(Q, 25)
    again = engine.search(Q, 25)
    np.testing.assert_array_equal(again.item_ids, a.item_ids)
    np.testing.assert_array_equal(again.scores, a.scores)
    one = np.concatenate([engine.search(Q[i : i + 1], 25).item_ids for i in range(len(Q))])
    np.testing.assert_array_equal(one, a.item_ids)  # batch size does not change results


def test_two_threads_equal_one(world):
    _, _, cb, index, engine, Q = world
    two = ScanEngine(index, cb, dataclasses.replace(engine.config, threads=2))
    np.testing.assert_array_equal(two.search(Q, 25).item_ids, engine.search(Q, 25).item_ids)


def test_trigger_mode_equals_brute_force_over_own_clusters(world):
    ids, emb, _, index, engine, _ = world
    rng = np.random.default_rng(3)
    trig = [list(ids[rng.choice(1500, t, replace=False)]) for t in (1, 3, 5)] + [[], [999_999]]
    res = engine.search_triggers(trig, 15, shortlist=10_000)
    x = emb.reshape(len(emb), -1)
    for b, t in enumerate(trig):
        rows_t = index.rows_of(np.asarray(t, np.int64))
        rows_t = rows_t[rows_t >= 0]
        if not rows_t.size:
            assert (res.item_ids[b] == -1).all()
            continue
        # an item's score: its best similarity over the triggers whose own clusters hold it
        best: dict[int, float] = {}
        for t_row in rows_t:
            for r in np.setdiff1d(_candidates(engine, engine._own[t_row]), rows_t):
                best[r] = max(best.get(r, -np.inf), float(x[r] @ x[t_row]))
        cand = np.array(sorted(best), np.int64)
        s = np.array([best[r] for r in cand], np.float32)
        order = np.lexsort((cand, -s))[:15]
        np.testing.assert_array_equal(res.item_ids[b, : order.size], ids[cand[order]])
        assert np.isin(res.source[b][res.item_ids[b] >= 0], t).all()
    ex = res.explanations()
    assert all("trigger" in e for e in ex[1])


def test_config_and_input_errors(world):
    _, _, cb, index, engine, Q = world
    with pytest.raises(ValueError, match="routing"):
        EngineConfig(routing="beam").validated()
    with pytest.raises(ValueError, match="queries must be"):
        engine.search(Q[:, :1], 5)
    with pytest.raises(ValueError, match="exclude"):
        engine.search(Q[:2], 5, exclude=[[1]])
    with pytest.raises(ValueError, match="codebooks"):
        ScanEngine(index, cb[:1])
    with pytest.raises(ValueError, match="divide"):
        ScanEngine(index, cb, EngineConfig(pq_subquantizers=5))
    assert ScanEngine(index, cb)._n_pq == F * D // 4  # default: one residual sub-vector per 4 dims


def test_fastscan_short_list_finds_what_exact_rescoring_of_all_candidates_finds(world):
    """The 4-bit pre-rank keeps the true top-k in a short list a few times k (not just 'all candidates')."""
    _, _, cb, index, engine, Q = world
    if engine.config.prerank != "fastscan":
        pytest.skip("fast-scan pre-ranker")
    full = engine.search(Q, 10, n_clusters=5, shortlist=10_000)
    short = engine.search(Q, 10, n_clusters=5, shortlist=40)
    hit = np.mean([np.isin(full.item_ids[b], short.item_ids[b]).mean() for b in range(len(Q))])
    assert hit >= 0.9, hit
    assert (short.rescored <= 40).all() and (short.rescored < full.rescored).all()
    with pytest.raises(ValueError, match="prerank"):
        EngineConfig(prerank="hnsw").validated()
    assert engine.nbytes()["engine"] > ScanEngine(index, cb, EngineConfig(pq_subquantizers=0)).nbytes()["engine"]


def test_score_aware_fastscan_codes_serve_the_same_way(world):
    """fastscan_eta > 1 only changes the codes: same columns, exact scores, a short list as good."""
    _, emb, cb, index, engine, Q = world
    if engine.config.prerank != "fastscan":
        pytest.skip("fast-scan pre-ranker")
    aware = ScanEngine(index, cb, dataclasses.replace(engine.config, fastscan_eta=4.0))
    full = engine.search(Q, 10, n_clusters=5, shortlist=10_000)
    short = aware.search(Q, 10, n_clusters=5, shortlist=40)
    hit = np.mean([np.isin(full.item_ids[b], short.item_ids[b]).mean() for b in range(len(Q))])
    assert hit >= 0.9, hit
    x = emb.reshape(len(emb), -1)
    rows = index.rows_of(short.item_ids[0])
    np.testing.assert_allclose(short.scores[0], x[rows] @ Q[0].reshape(-1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="fastscan_eta"):
        EngineConfig(fastscan_eta=0.5).validated()
