"""The scan engine's small compiled steps against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest

from mfli.serve import engine_kernels as K


def _reference_top(score: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Best k positions by score descending, ties by lower row (a lexsort)."""
    return np.lexsort((rows, -score.astype(np.float64)))[:k]


@pytest.mark.parametrize("size,k", [(400, 100), (50, 100), (1, 1), (0, 5), (1000, 1000)])
def test_top_unique_matches_a_lexsort_with_ties_and_negative_scores(size, k):
    rng = np.random.default_rng(size)
    score = rng.normal(size=size).astype(np.float32)
    score[: size // 4] = np.round(score[: size // 4], 1)  # many exact ties
    rows = rng.choice(10**6, size, replace=False).astype(np.int64)
    got = K._top_unique(score, rows, size, k)
    np.testing.assert_array_equal(got, _reference_top(score, rows, k))
    sel, distinct = K._best_distinct(score, rows, size, False, k)
    np.testing.assert_array_equal(sel, got)
    assert distinct == size


def test_best_distinct_with_copies_keeps_each_rows_best_copy():
    score = np.array([0.5, 0.9, 0.7, 0.9, 0.1], np.float32)
    rows = np.array([3, 1, 3, 2, 1], np.int64)
    sel, distinct = K._best_distinct(score, rows, 5, True, 10)
    assert distinct == 3
    np.testing.assert_array_equal(rows[sel], [1, 2, 3])  # 0.9 (row 1 before row 2), then row 3's 0.7
    np.testing.assert_array_equal(sel, [1, 3, 2])


def test_small_steps_match_numpy():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, 16)).astype(np.float32)
    cent = rng.normal(size=(10, 16)).astype(np.float32)
    gid = np.array([[4, 2, -1], [0, 9, 9], [-1, -1, -1]], np.int64)
    want = np.where(gid >= 0, np.einsum("qd,qwd->qw", q, cent[np.maximum(gid, 0)]), 0)
    np.testing.assert_allclose(K.column_dots(q, cent, gid), want, rtol=1e-5, atol=1e-5)
    col_len = np.arange(10, dtype=np.int64) * 3
    ptr = np.array([0, 3, 6, 9], np.int64)
    np.testing.assert_array_equal(K.pair_entries(ptr, gid.reshape(-1), col_len), [18, 54, 0])
    rows = np.array([[5, -1], [2, 7]], np.int64)
    pair = np.array([[1, -1], [3, 4]], np.int64)
    pair_gid = np.array([0, 1, 2, 3, 4], np.int64)
    item_ids = np.arange(10, dtype=np.int64) + 100
    ids, facet, cluster, source = K.explain_rows(rows, pair, pair_gid, item_ids, np.array([0, 0, 1, 1, 1], np.int16),
                                                 np.array([7, 8, 9, 10, 11], np.int64), np.array([0, 1, 0, 1, 2]))
    np.testing.assert_array_equal(ids, [[105, -1], [102, 107]])
    np.testing.assert_array_equal(facet, [[0, -1], [1, 1]])
    np.testing.assert_array_equal(cluster, [[8, -1], [10, 11]])
    np.testing.assert_array_equal(source, [[1, -1], [1, 2]])


def test_int8_routing_picks_what_blas_over_the_dequantised_centroids_picks():
    rng = np.random.default_rng(1)
    cent = rng.normal(size=(300, 32)).astype(np.float32)
    cent[7] = 0  # an empty column's mean
    q8, scale = K.quantize_rows(cent)
    assert q8.dtype == np.int8 and np.abs(q8).max() == 127 and scale[7] == 1 and not q8[7].any()
    deq = q8.astype(np.float32) * scale[:, None]
    assert np.abs(deq - cent).max() <= scale.max() / 2 + 1e-6  # rounding to the nearest step
    q = rng.normal(size=(5, 32)).astype(np.float32)
    facet_start = np.array([0, 120, 300], np.int64)
    for joint, n in ((True, 10), (False, 6)):
        gid, rank = K.route_small(q, q8, scale, facet_start, n, joint)
        want, _, want_rank = K.select_clusters(q @ deq.T, facet_start, n, joint, 1)
        np.testing.assert_array_equal(gid, want)
        np.testing.assert_array_equal(rank, want_rank)
    gid, _ = K.route_small(q, q8, scale, facet_start, 6, False)
    assert ((gid < 120).sum(1) == 6).all() and ((gid >= 120).sum(1) == 6).all()  # n per facet


def test_explain_rows_with_no_pair_at_all_is_all_padding():
    """A trigger request with no known trigger has no (query, column) pair; every slot is padding."""
    rows = np.full((2, 3), -1, np.int64)
    out = K.explain_rows(rows, rows.copy(), np.zeros(0, np.int64), np.arange(5, dtype=np.int64),
                         np.zeros(0, np.int16), np.zeros(0, np.int64), np.zeros(0, np.int64))
    for a in out:
        assert a.shape == (2, 3) and (a == -1).all()


def test_delta_trigger_best_keeps_each_item_once_at_its_best_and_cuts_to_k():
    from mfli.serve.engine_kernels import delta_trigger_best

    # 4 delta items (ids 40, 30, 20, 10) in 3 columns; item row 1 sits in columns 0 and 2
    demb = np.array([[1, 0], [0, 1], [1, 1], [2, 0]], np.float32)
    ids = np.array([40, 30, 20, 10], np.int64)
    doff = np.array([0, 2, 4, 5], np.int64)
    drows = np.array([0, 1, 2, 3, 1], np.int64)
    # request 0: triggers (1, 0) reading columns 0, 1 and (0, 2) reading column 2; request 1: (1, 0), row 3 excluded
    vec = np.array([[1, 0], [0, 2], [1, 0]], np.float32)
    gid = np.array([[0, 1], [2, -1], [0, 1]], np.int64)
    req_ptr = np.array([0, 2, 3], np.int64)
    ex_ptr, ex_rows = np.array([0, 0, 1], np.int64), np.array([3], np.int64)
    o_req, row, score, col, trig = delta_trigger_best(req_ptr, vec, gid, doff, drows, demb, ids, ex_ptr, ex_rows, 3)
    # request 0: rows 3 (id 10) and 1 (id 30; 0 from trigger 0 first, 2.0 from trigger 1) tie at 2.0, lower
    # id first; rows 0 and 2 tie at 1.0: lower id (20, row 2) first; cut to k = 3
    assert o_req.tolist() == [0, 0, 0, 1, 1, 1]
    assert row[:3].tolist() == [3, 1, 2] and score[:3].tolist() == [2.0, 2.0, 1.0]
    assert (col[1], trig[1]) == (2, 1)  # row 1's best is trigger 1's column 2
    # request 1: row 3 excluded; rows 0 and 2 tie at 1.0 (lower id first), then row 1 at 0
    assert row[3:].tolist() == [2, 0, 1] and score[3:].tolist() == [1.0, 1.0, 0.0]
    assert trig[3:].tolist() == [2, 2, 2]


def test_delta_user_merge_scores_each_routed_delta_item_once_and_keeps_engine_results_first_on_ties():
    from mfli.serve.engine_kernels import delta_user_merge

    # delta rows 0..3 (ids 90, 80, 70, 60); row 1 sits in columns 0 and 1
    demb = np.array([[1, 0], [2, 0], [0, 1], [3, 0]], np.float32)
    ids = np.array([90, 80, 70, 60], np.int64)
    doff = np.array([0, 2, 4], np.int64)
    drows = np.array([1, 0, 2, 1], np.int64)
    q = np.array([[1, 0], [1, 0]], np.float32)
    gid = np.array([[1, 0], [0, -1]], np.int64)  # request 0 reads column 1 first; request 1 column 0 only
    rank = np.array([[0, 1], [0, 1]], np.int64)
    # engine results (k = 3): request 0 has an item at score 2.0 (ties with delta row 1), request 1 one at 5.0
    res_ids = np.array([[7, -1, -1], [8, -1, -1]], np.int64)
    res_score = np.array([[2.0, -np.inf, -np.inf], [5.0, -np.inf, -np.inf]], np.float32)
    res_facet = np.array([[0, -1, -1], [1, -1, -1]], np.int16)
    res_cluster = np.array([[3, -1, -1], [4, -1, -1]], np.int64)
    res_source = np.array([[0, -1, -1], [0, -1, -1]], np.int64)
    col_facet = np.array([0, 1], np.int16)
    col_cluster = np.array([10, 20], np.int64)
    ex_ptr, ex_rows = np.array([0, 0, 1], np.int64), np.array([1], np.int64)  # request 1 excludes row 1
    out_ids, score, facet, cluster, source, cnt = delta_user_merge(
        q, gid, rank, doff, drows, demb, ex_ptr, ex_rows, res_ids, res_score, res_facet, res_cluster, res_source,
        ids, col_facet, col_cluster)
    # request 0: rows 0, 1, 2 reached (row 1 first through column 1, rank 0); engine item 7 first on the 2.0 tie
    assert out_ids[0].tolist() == [7, 80, 90] and score[0].tolist() == [2.0, 2.0, 1.0]
    assert (facet[0, 1], cluster[0, 1], source[0, 1]) == (1, 20, 0)
    assert (facet[0, 2], cluster[0, 2], source[0, 2]) == (0, 10, 1)
    # request 1: row 1 excluded, row 0 reached; the engine's own result stays first
    assert out_ids[1].tolist() == [8, 90, -1] and np.isneginf(score[1, 2])
    assert cnt.tolist() == [3, 1]
