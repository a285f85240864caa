"""Neighbour lists of trigger mode: build-time exactness over the probed clusters, look-up serving."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from topic_vectors import topic_vectors

from mfli.eval.serving.data import kmeans_rq_codebooks
from mfli.index.inverted import MultiFacetIndex, encode_paths
from mfli.index.split_merge import RebalanceConfig, rebalance
from mfli.serve.engine import EngineConfig, ScanEngine
from mfli.serve.neighbours import (
    ESC16,
    ESCAPE_SHARE_MAX,
    MIN_PROBE,
    PAD16,
    auto_probe,
    build_neighbour_lists,
    column_neighbours,
    decode_rows,
    encode_lists,
    lookup_rows,
)

F, D, L, M, N, K = 2, 8, 2, 16, 1200, 30


@pytest.fixture(scope="module")
def world():
    emb = topic_vectors(N, 0, F, D, topics=6)
    cb = kmeans_rq_codebooks(emb, L, M)
    ids = np.arange(N, dtype=np.int64) * 5 + 2
    codes = encode_paths(emb, cb)
    index = rebalance(MultiFacetIndex.build(ids, emb, codes, cb), RebalanceConfig(floor=10, cap=60)).index
    engine = ScanEngine(index, cb, EngineConfig(prerank="fastscan", threads=2, neighbours=K, neighbour_probe=4),
                        codes=codes)
    return ids, emb.reshape(N, F * D), index, engine


@pytest.fixture(scope="module", params=["stored", "exact"])
def served(request, world):
    """``world`` served with stored list scores (its engine) or rescored exactly (``list_scores=False``)."""
    ids, x, index, engine = world
    if request.param == "stored":
        assert engine._lists.has_scores
        return world
    exact = ScanEngine(index, engine._cb, EngineConfig(prerank="fastscan", threads=2, neighbours=K, neighbour_probe=4,
                                                       list_scores=False))
    assert not exact._lists.has_scores
    return ids, x, index, exact


def _score_of(engine, x):
    """``score(t, r)``: what the engine serves for item row ``r`` in trigger row ``t``'s list (its stored
    score read back in float32, or the exact product)."""
    lists = engine._lists
    if not lists.has_scores:
        return lambda t, r: float(x[t] @ x[r])
    nbr = engine.neighbour_rows()

    def score(t, r):
        j = int(np.flatnonzero(nbr[t] == r)[0])
        return float(lists.score_lo[t] + lists.score_step[t] * np.float32(lists.score_q[t, j]))

    return score


def _exact_lists(x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """``(n, K)`` every item's K best other items by exact inner product (ties: lower row)."""
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return np.stack([np.lexsort((np.arange(len(x)), -r))[:K] for r in s])


def test_column_neighbours_self_first_then_by_centroid_product():
    rng = np.random.default_rng(0)
    cent = rng.standard_normal((40, 6)).astype(np.float32)
    nb = column_neighbours(cent, 5, block=7)  # several blocks
    assert nb.shape == (40, 5)
    np.testing.assert_array_equal(nb[:, 0], np.arange(40))
    s = cent @ cent.T
    for c in range(40):
        others = [j for j in np.lexsort((np.arange(40), -s[c])) if j != c][:4]
        np.testing.assert_array_equal(nb[c, 1:], others)
    assert column_neighbours(cent, 100).shape == (40, 40)  # probe capped at the column count


def test_lists_are_exact_when_every_column_is_probed(world):
    _, x, _, engine = world
    C = engine.offsets.size - 1
    nbr = build_neighbour_lists(x, engine.entry_rows, engine.offsets, engine._cent, K, C)
    np.testing.assert_array_equal(nbr, _exact_lists(x))


def test_lists_hold_the_best_of_the_probed_columns_best_first(world):
    _, x, _, engine = world
    assert engine._lists.compact and engine._lists.codes.dtype == np.uint16
    nbr = engine.neighbour_rows()
    assert nbr.shape == (N, K) and nbr.dtype == np.int32
    srt = np.sort(nbr, axis=1)  # every list holds a row once (one-trigger requests skip de-duplication)
    assert not ((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).any()
    cols = column_neighbours(engine._cent, 4)
    member_cols = [[] for _ in range(N)]
    for c in range(engine.offsets.size - 1):
        for r in engine.entry_rows[engine.offsets[c] : engine.offsets[c + 1]]:
            member_cols[r].append(c)
    for r in range(0, N, 37):
        cand = np.unique(np.concatenate([engine.entry_rows[engine.offsets[j] : engine.offsets[j + 1]]
                                         for c in member_cols[r] for j in cols[c]]))
        cand = cand[cand != r]
        s = x[cand] @ x[r]
        want = cand[np.lexsort((cand, -s))[:K]]
        got = nbr[r][nbr[r] >= 0]
        np.testing.assert_array_equal(got, want)


def _reference(x, nbr, trig_rows, k, excluded=(), drop_triggers=True, score=None):
    """Best ``max_t e_t . e_i`` (or ``score(t, i)``) over the union of the triggers' lists, triggers and
    ``excluded`` dropped. Stored scores: the lists merged as they stand (each list in its own order, the
    build's exact order, which equal stored bytes do not change; heads compared by score, row, trigger),
    every item at its first appearance."""
    score = score or (lambda t, r: float(x[t] @ x[r]))
    keep = [[int(r) for r in nbr[t] if r >= 0 and not (drop_triggers and r in trig_rows) and r not in excluded]
            for t in trig_rows]
    if getattr(score, "stored", False):
        merged = heapq.merge(*[[(-score(t, r), r, q) for r in rows] for q, (t, rows) in enumerate(zip(trig_rows, keep))])
        return list(dict.fromkeys(r for _, r, _ in merged))[:k]
    best: dict[int, float] = {}
    for t, rows in zip(trig_rows, keep):
        for r in rows:
            best[r] = max(best.get(r, -np.inf), score(t, r))
    return sorted(best, key=lambda r: (-best[r], r))[:k]


def _served_score(engine, x):
    score = _score_of(engine, x)
    score.stored = engine._lists.has_scores
    return score


@pytest.mark.parametrize("T", [1, 3, 8])
def test_search_triggers_from_lists_equals_merged_lists(served, T):
    ids, x, index, engine = served
    rng = np.random.default_rng(T)
    trig = [rng.choice(N, T, replace=False) for _ in range(12)]
    k = 25
    res = engine.search_triggers([ids[t] for t in trig], k)
    assert res.mode == "trigger"
    assert (engine._slots == -1).all()  # the per-thread scratch is restored after every request
    nbr = engine.neighbour_rows()
    score = _served_score(engine, x)
    for b, t in enumerate(trig):
        want = _reference(x, nbr, t.tolist(), k, score=score)
        got = index.rows_of(res.item_ids[b][res.item_ids[b] >= 0])
        np.testing.assert_array_equal(got, want)
        # the best score among the triggers whose lists hold the item
        best = np.array([max(score(u, g) for u in t if g in nbr[u]) for g in got])
        np.testing.assert_allclose(res.scores[b, : len(got)], best, rtol=1e-5, atol=1e-5)
        # explained by the trigger that scores it best, and a cluster the item sits in
        src_rows = index.rows_of(res.source[b, : len(got)])
        np.testing.assert_allclose([score(s, g) for s, g in zip(src_rows, got)], best, rtol=1e-5, atol=1e-5)
        for j, g in enumerate(got):
            assert (res.facet[b, j], res.cluster[b, j]) in {
                (f, int(c)) for f in range(F) for c in index.assignments[g, f].reshape(-1)}


def test_lists_honour_exclusions_and_removed_rows(served):
    ids, x, index, engine = served
    score = _served_score(engine, x)
    trig = [np.array([5, 900]), np.array([77])]
    first = engine.search_triggers([ids[t] for t in trig], 10)
    drop = index.rows_of(first.item_ids[:, :3].reshape(-1))
    removed = np.zeros(N, bool)
    removed[drop[:3]] = True  # request 0's three best, gone for every request
    excl = [[], list(ids[drop[3:]])]  # request 1's three best, excluded for it alone
    res = engine.search_triggers([ids[t] for t in trig], 10, exclude=excl, removed=removed)
    for b, t in enumerate(trig):
        want = _reference(x, engine.neighbour_rows(), t.tolist(), 10, set(drop[:3].tolist()) | (
            set(drop[3:].tolist()) if b == 1 else set()), score=score)
        np.testing.assert_array_equal(index.rows_of(res.item_ids[b]), want)
    # kept triggers come only through another trigger's list: an item is never in its own
    trig = [np.array([5, engine.neighbour_rows()[5, 0]])]
    kept = engine.search_triggers([ids[t] for t in trig], 10, exclude_triggers=False)
    np.testing.assert_array_equal(index.rows_of(kept.item_ids[0]),
                                  _reference(x, engine.neighbour_rows(), trig[0].tolist(), 10, drop_triggers=False,
                                             score=score))
    assert trig[0][1] in index.rows_of(kept.item_ids[0])


def test_lists_same_answers_for_any_batch_split_and_thread_count(served):
    ids, _, _, engine = served
    rng = np.random.default_rng(3)
    trig = [ids[rng.choice(N, int(rng.integers(1, 6)), replace=False)] for _ in range(20)]
    whole = engine.search_triggers(trig, 15)
    engine.config.threads = 1
    try:
        one = [engine.search_triggers([t], 15) for t in trig]
    finally:
        engine.config.threads = 2
    np.testing.assert_array_equal(whole.item_ids, np.concatenate([r.item_ids for r in one]))
    np.testing.assert_array_equal(whole.scores, np.concatenate([r.scores for r in one]))
    np.testing.assert_array_equal(whole.source, np.concatenate([r.source for r in one]))
    np.testing.assert_array_equal(whole.entries, np.concatenate([r.entries for r in one]))
    np.testing.assert_array_equal(whole.rescored, np.concatenate([r.rescored for r in one]))
    np.testing.assert_array_equal(whole.cluster, np.concatenate([r.cluster for r in one]))
    # batch 1 reuses one pair of empty exclusion arrays: the kernel must leave them as they were
    ptr, rows = engine._no_exclusions
    assert ptr.tolist() == [0, 0] and rows.size == 0


def test_unknown_triggers_and_empty_requests(world):
    ids, _, _, engine = world
    res = engine.search_triggers([[-999], [], [ids[4], -5]], 8)
    assert (res.item_ids[:2] == -1).all() and np.isneginf(res.scores[:2]).all()
    np.testing.assert_array_equal(res.item_ids[2], engine.search_triggers([[ids[4]]], 8).item_ids[0])


def test_one_request_path_answers_like_the_batch_path(served):
    """A lone request takes the bound-argument path (through the kernel's entry point when nothing is
    excluded); it must answer exactly as the batch path (the same request twice in one batch), with and
    without exclusions, padding and counters included."""
    ids, _, _, engine = served
    rng = np.random.default_rng(5)
    reqs = [ids[rng.choice(N, int(n), replace=False)] for n in (1, 1, 3, 6)] + [np.array([-7]), ids[:0]]
    for t in reqs:
        for k in (10, K + 7):  # beyond the list length: padding after the merged entries
            for ex in (None, ids[rng.choice(N, 40, replace=False)]):
                one = engine.search_triggers([t], k, exclude=None if ex is None else [ex])
                ref = engine.search_triggers([t, t], k, exclude=None if ex is None else [ex, ex])
                for field in ("item_ids", "scores", "facet", "cluster", "source", "entries", "rescored"):
                    np.testing.assert_array_equal(getattr(one, field)[0], getattr(ref, field)[0], err_msg=field)
                pad = one.item_ids[0] < 0
                assert pad[-7:].all() if k > K and t.size <= 1 else True  # one list holds at most K items
                assert np.isneginf(one.scores[0, pad]).all() and (one.facet[0, pad] == -1).all()
                assert (one.cluster[0, pad] == -1).all() and (one.source[0, pad] == -1).all()
                assert one.entries.tolist() == [t.size * K]
                if ex is not None:
                    assert not np.isin(one.item_ids[0], ex).any()
    # the shared one-trigger pointer is only read
    assert engine._ptr_one.tolist() == [0, 1]
    # later lone requests call the kernel's compiled entry point, whatever the triggers come as
    assert engine._list_entry is not None and engine._list_entry is not engine._NB.trigger_lists_serial
    want = engine.search_triggers([ids[[8, 40, 99]]] * 2, 12)
    frozen = ids[[8, 40, 99]].copy()
    frozen.flags.writeable = False
    for t in (ids[[8, 40, 99]].tolist(), np.repeat(ids[[8, 40, 99]], 2)[::2], frozen,  # a strided view
              ids[[8, 40, 99]].astype(np.int32)):
        got = engine.search_triggers([t], 12, exclude_triggers=np.True_)
        np.testing.assert_array_equal(got.item_ids[0], want.item_ids[0])
        np.testing.assert_array_equal(got.scores[0], want.scores[0])


def test_scan_path_still_answers_and_lists_need_building(world):
    ids, _, index, engine = world
    scan = engine.search_triggers([[ids[3]]], 10, lists=False, shortlist=500, extra_clusters=0)
    assert scan.item_ids.shape == (1, 10) and (scan.item_ids >= 0).all()
    bare = ScanEngine(index, engine._cb, EngineConfig(prerank="fastscan"))
    with pytest.raises(ValueError, match="no neighbour lists"):
        bare.search_triggers([[ids[3]]], 10, lists=True)
    assert bare.nbytes()["engine"] < engine.nbytes()["engine"]
    with pytest.raises(ValueError, match="neighbours"):
        EngineConfig(neighbours=-1).validated()


def test_auto_probe_reads_enough_candidates_per_list():
    assert auto_probe(np.full(4000, 480), 100) == 9  # 1M items in ~4,000 columns: 40 * 100 candidates
    assert auto_probe(np.full(4000, 5000), 100) == MIN_PROBE
    assert auto_probe(np.full(30, 20), 100) == 30  # a small catalogue: every column
    assert auto_probe(np.zeros(0, np.int64), 10) == 1


def test_lookup_rows_matches_the_index(world):
    ids, _, index, _ = world
    q = np.array([ids[7], -3, ids[0], 2**62, ids[-1], 4], np.int64)  # 4: between two ids
    np.testing.assert_array_equal(lookup_rows(index._sorted_ids, index._sorted_rows, q), index.rows_of(q))
    assert lookup_rows(index._sorted_ids, index._sorted_rows, np.zeros(0, np.int64)).size == 0


def test_sorted_run_orders_like_the_partial_sort():
    from mfli.serve.engine_kernels import _top_unique
    from mfli.serve.neighbours import _sorted_run

    rng = np.random.default_rng(5)
    for n, k in ((1, 1), (40, 10), (100, 100), (120, 100)):
        score = np.sort(rng.standard_normal(n).astype(np.float32))[::-1].copy()
        score[rng.integers(0, n, n // 4)] = 0.5  # ties
        if n > 3:
            score[1], score[2] = -0.0, 0.0  # -0.0 ties with +0.0
            score[[0, 3]] = score[[3, 0]]  # slightly out of order, as rescored lists are
        rows = rng.permutation(10 * n)[:n].astype(np.int64)
        np.testing.assert_array_equal(_sorted_run(score, rows, n, k), _top_unique(score, rows, n, k))


def _plain_rows(engine) -> np.ndarray:
    return build_neighbour_lists(engine._emb, engine.entry_rows, engine.offsets, engine._cent, K,
                                 engine.list_probe, engine.col_neighbours)


@pytest.mark.parametrize("escape", ["none", "some", "all"])
def test_compact_codes_decode_to_the_built_rows(world, escape):
    _, _, _, engine = world
    rows = _plain_rows(engine)
    rows[7, K - 3 :] = -1  # a short list: padding survives the round trip
    codes = encode_lists(rows, engine._own, engine.col_neighbours, engine.entry_rows, engine.offsets).codes
    # "some": the largest ~3% of codes go to the side table
    escape_at = {"none": ESC16, "some": int(np.quantile(codes[codes != PAD16], 0.97)), "all": 1}[escape]
    lists = encode_lists(rows, engine._own, engine.col_neighbours, engine.entry_rows, engine.offsets,
                         escape_at=escape_at)
    if escape == "all":  # every entry would escape: int32 rows are smaller
        assert not lists.compact and lists.codes.dtype == np.int32
    else:
        assert lists.compact and lists.codes.dtype == np.uint16
        escaped = lists.codes == ESC16
        assert escaped.sum() == lists.esc_key.size == lists.esc_row.size
        assert (lists.codes[7, K - 3 :] == PAD16).all()
        if escape_at < ESC16:  # the side table is used, and small
            assert 0 < escaped.mean() <= ESCAPE_SHARE_MAX
        assert lists.nbytes < rows.nbytes * 0.75
    got = decode_rows(lists.kernel_args(engine.entry_rows, engine.offsets), engine._own, np.arange(N))
    np.testing.assert_array_equal(got, rows)


def test_compact_and_plain_lists_give_the_same_answers(world):
    ids, _, index, engine = world
    plain = ScanEngine(index, engine._cb, EngineConfig(prerank="fastscan", threads=2, neighbours=K,
                                                      neighbour_probe=4, compact_lists=False))
    assert not plain._lists.compact and plain._lists.codes.nbytes == 2 * engine._lists.codes.nbytes
    assert plain.list_nbytes - plain._lists.codes.nbytes == engine.list_nbytes - engine._lists.codes.nbytes
    np.testing.assert_array_equal(plain.neighbour_rows(), engine.neighbour_rows())
    rng = np.random.default_rng(11)
    trig = [ids[rng.choice(N, int(rng.integers(1, 8)), replace=False)] for _ in range(30)]
    for b in (trig, trig[:1]):
        a, p = engine.search_triggers(b, 20), plain.search_triggers(b, 20)
        for field in ("item_ids", "scores", "source", "facet", "cluster", "rescored"):
            np.testing.assert_array_equal(getattr(a, field), getattr(p, field))


def test_encoding_refuses_a_neighbour_outside_the_probed_columns(world):
    _, _, _, engine = world
    rows = _plain_rows(engine)
    far = np.setdiff1d(np.arange(N), np.concatenate([
        engine.entry_rows[engine.offsets[c] : engine.offsets[c + 1]]
        for c in engine.col_neighbours[engine._own[3]].reshape(-1)]))
    rows[3, 0] = far[0]
    with pytest.raises(ValueError, match="item row 3"):
        encode_lists(rows, engine._own, engine.col_neighbours, engine.entry_rows, engine.offsets)


def test_lists_of_another_engine_are_refused(world):
    _, _, index, engine = world
    bare = ScanEngine(index, engine._cb, EngineConfig(prerank="fastscan"))
    with pytest.raises(ValueError, match="no neighbour lists"):
        bare.neighbour_rows([0])
    small = encode_lists(engine.neighbour_rows()[:10], engine._own, engine.col_neighbours, engine.entry_rows,
                         engine.offsets)  # lists of 10 items
    with pytest.raises(ValueError, match="do not match this engine"):
        engine.set_lists(small)
    assert engine.neighbour_rows([5]).shape == (1, K)  # the engine's own lists are kept


def test_stored_scores_keep_the_order_within_half_a_step():
    from mfli.serve.neighbours import quantise_scores

    rng = np.random.default_rng(2)
    scores = -np.sort(-rng.standard_normal((50, 30)).astype(np.float32) * 3, axis=1)
    rows = np.tile(np.arange(30, dtype=np.int32), (50, 1))
    rows[4, 20:] = -1  # a short list: its floor is its last real entry
    scores[4, 20:] = -np.inf
    rows[5] = -1  # an empty list
    scores[5] = -np.inf
    scores[6] = 1.5  # a list of equal scores: step 0
    q, lo, step = quantise_scores(scores, rows)
    assert q.dtype == np.uint8 and lo.dtype == step.dtype == np.float32
    back = lo[:, None] + step[:, None] * q.astype(np.float32)
    valid = rows >= 0
    assert (np.abs(back - scores)[valid] <= step[:, None].repeat(30, 1)[valid] / 2 + 1e-6).all()
    assert (np.diff(np.where(valid, q.astype(int), -1), axis=1)[:, :19] <= 0).all()  # best first, like the list
    assert q[4, 0] == 255 and q[4, 19] == 0 and (q[4, 20:] == 0).all() and lo[4] == scores[4, 19]
    assert (q[5] == 0).all() and lo[5] == 0 and step[5] == 0
    assert step[6] == 0 and (back[6] == 1.5).all()


def test_stored_scores_save_vector_reads_not_answers(world, served):
    """A one-trigger request reads its list in order, with or without stored scores; the stored bytes
    (K + 8 per item) are what the engine reports for them."""
    ids, x, index, engine = world
    _, _, _, other = served
    res = engine.search_triggers([[ids[9]]], K)
    np.testing.assert_array_equal(res.item_ids, other.search_triggers([[ids[9]]], K).item_ids)
    assert engine._lists.nbytes - engine._lists.without_scores().nbytes == N * (K + 8)
    got = index.rows_of(res.item_ids[0])
    exact = x[got] @ x[9]
    np.testing.assert_allclose(res.scores[0], exact, atol=float(engine._lists.score_step[9]) / 2 + 1e-5, rtol=0)
