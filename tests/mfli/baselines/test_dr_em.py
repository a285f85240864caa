"""Deep Retrieval's discrete machinery: path codes, score table, the penalised M-step, neighbour placement."""

from __future__ import annotations

import numpy as np

from mfli.baselines.dr_em import (
    ScoreTable,
    m_step,
    neighbour_paths,
    pack_paths,
    path_stats,
    random_paths,
    unpack_paths,
)


def test_pack_unpack_round_trip_and_missing():
    rng = np.random.default_rng(0)
    paths = rng.integers(0, 7, size=(50, 3, 4))
    codes = pack_paths(paths, 7)
    assert codes.shape == (50, 3)
    assert codes.max() < 7**4
    np.testing.assert_array_equal(unpack_paths(codes, 7, 4), paths)
    # the first node is the most significant digit, as in quantizer.pack_codes
    assert pack_paths(np.array([[1, 0, 0]]), 5)[0] == 25
    assert pack_paths(np.array([[1, -1, 0]]), 5)[0] == -1
    assert (unpack_paths(np.array([-1]), 5, 3) == -1).all()


def test_random_paths_distinct_per_item():
    codes = random_paths(500, 3, 2, 2, np.random.default_rng(1))  # only 4 paths: duplicates are likely
    assert codes.shape == (500, 3)
    assert all(len(set(r)) == 3 for r in codes.tolist())
    assert codes.min() >= 0 and codes.max() < 4


def test_score_table_sums_over_batches_and_keeps_top_s():
    t = ScoreTable(n_items=3, n_total_paths=10, compact_every=4)
    t.add(np.array([0, 1]), np.array([[1, 2], [3, 4]]), np.array([[0.5, 0.1], [0.2, 0.3]]))
    t.add(np.array([0, 0]), np.array([[1, 5], [2, 5]]), np.array([[0.25, 0.05], [0.3, 0.01]]))
    items, codes, scores = t.top(top_s=2)
    got = {(int(i), int(c)): float(s) for i, c, s in zip(items, codes, scores)}
    # item 0: path 1 = 0.75, path 2 = 0.4, path 5 = 0.06 (dropped by top_s=2)
    assert got == {(0, 1): 0.75, (0, 2): 0.4, (1, 4): 0.3, (1, 3): 0.2}
    np.testing.assert_array_equal(t.n_visits, [3, 1, 0])


def _skewed_candidates(n_items: int, n_paths_total: int, rng):
    """Every item sees every path; all items prefer the low codes strongly (a collapse waiting to happen)."""
    items = np.repeat(np.arange(n_items), n_paths_total)
    codes = np.tile(np.arange(n_paths_total), n_items)
    scores = np.exp(-0.5 * codes) * rng.uniform(0.9, 1.1, size=codes.shape)
    return items, codes, scores


def test_m_step_without_penalty_takes_best_paths():
    rng = np.random.default_rng(0)
    items, codes, scores = _skewed_candidates(100, 16, rng)
    prev = np.full((100, 3), -1, dtype=np.int64)
    res = m_step(items, codes, scores, np.full(100, 5), prev, alpha=0.0, rng=rng)
    assert (np.sort(res.codes, 1) == [0, 1, 2]).all()
    assert res.counts[0] == 100


def test_m_step_large_alpha_spreads_items_to_balanced_share():
    rng = np.random.default_rng(0)
    n_items, J, P = 200, 3, 16
    items, codes, scores = _skewed_candidates(n_items, P, rng)
    prev = np.full((n_items, J), -1, dtype=np.int64)
    res = m_step(items, codes, scores, np.full(n_items, 5), prev, alpha=1.0, rng=rng)
    counts = np.bincount(res.codes.ravel(), minlength=P)
    balanced = n_items * J / P  # 37.5
    assert counts.max() <= np.ceil(balanced) + 1
    assert counts.min() >= np.floor(balanced) - 1
    assert all(len(set(r)) == J for r in res.codes.tolist())
    assert path_stats(res.codes, P)["used_paths"] == P


def test_m_step_items_without_candidates_keep_their_paths_and_count():
    rng = np.random.default_rng(0)
    prev = np.array([[0, 1], [0, 1], [2, 3]])
    # only item 2 has candidates; paths 0/1 are already full with items 0 and 1
    res = m_step(np.array([2, 2, 2]), np.array([0, 1, 5]), np.array([1.0, 1.0, 0.9]), np.array([0, 0, 1]),
                 prev, alpha=10.0, rng=rng)
    np.testing.assert_array_equal(res.codes[:2], prev[:2])
    assert set(res.codes[2].tolist()) == {5, 0} or set(res.codes[2].tolist()) == {5, 1}
    assert res.counts[5] == 1


def test_neighbour_paths_copy_the_nearest_trained_items():
    rng = np.random.default_rng(0)
    G = 4
    ref_content = np.eye(G)[np.arange(40) % G] + 0.01 * rng.normal(size=(40, G))
    # each group sits on its own pair of paths
    ref_codes = np.stack([np.arange(40) % G * 2, np.arange(40) % G * 2 + 1], 1)
    new_content = np.eye(G)[[0, 1, 2, 3, 2]] + 0.01 * rng.normal(size=(5, G))
    codes, nb, w = neighbour_paths(ref_content, ref_codes, new_content, 3, 3e-5, {}, rng)
    for r, g in enumerate([0, 1, 2, 3, 2]):
        assert set(codes[r].tolist()) == {2 * g, 2 * g + 1}
        assert (nb[r] % G == g).all()
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)


def test_score_table_keeps_current_paths_beyond_top_s():
    t = ScoreTable(n_items=2, n_total_paths=10)
    t.add(np.array([0, 1]), np.array([[1, 2, 3], [1, 2, 3]]), np.array([[0.5, 0.4, 0.01], [0.5, 0.4, 0.01]]))
    items, codes, _ = t.top(top_s=1, keep_codes=np.array([[3, 9], [2, 9]]))
    got = sorted(zip(items.tolist(), codes.tolist()))
    assert got == [(0, 1), (0, 3), (1, 1), (1, 2)]
