"""Deep Retrieval placement at scale: the lean M-step greedy against a plain per-candidate loop, and the
approximate (IVF) k-NN that places unseen items when the trained set is large."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pandas as pd
import pytest

from mfli.baselines.deep_retrieval import DeepRetrieval, DRConfig
from mfli.baselines.dr_em import m_step, neighbour_paths, random_paths


def _m_step_reference(
    cand_items, cand_codes, cand_scores, n_visits, prev_codes, alpha, rng, base_counts=None
):
    """The M-step greedy written as the plain per-candidate loop it is specified as (dict counts)."""
    n_items, J = prev_codes.shape
    codes = prev_codes.copy()
    counts = dict(base_counts or {})
    has = np.zeros(n_items, dtype=bool)
    has[cand_items] = True
    for c in prev_codes[~has].ravel().tolist():
        if c >= 0:
            counts[c] = counts.get(c, 0) + 1
    if len(cand_items) == 0:
        return codes, counts
    starts = np.flatnonzero(np.r_[True, cand_items[1:] != cand_items[:-1]])
    ends = np.r_[starts[1:], len(cand_items)]
    item_of = cand_items[starts]
    code_l, score_l = cand_codes.tolist(), np.maximum(cand_scores, 1e-300).tolist()
    log_l = [math.log(s) for s in score_l]
    nv = n_visits.tolist()
    for g in rng.permutation(len(starts)).tolist():
        v, a, b = int(item_of[g]), int(starts[g]), int(ends[g])
        n_v = max(nv[v], 1)
        chosen: list[int] = []
        s_prev = 0.0
        for j in range(J):
            best_val, best_i = -math.inf, -1
            for i in range(a, b):
                c = code_l[i]
                if c in chosen:
                    continue
                n = counts.get(c, 0)
                pen = alpha * ((n + 1) ** 4 - n**4) / 4.0
                gain = n_v * log_l[i] if j == 0 else n_v * (math.log(s_prev + score_l[i]) - math.log(s_prev))
                if gain - pen > best_val:
                    best_val, best_i = gain - pen, i
            if best_i < 0:
                break
            c = code_l[best_i]
            chosen.append(c)
            s_prev += score_l[best_i]
            counts[c] = counts.get(c, 0) + 1
        for c in prev_codes[v].tolist():
            if len(chosen) >= J:
                break
            if c >= 0 and c not in chosen:
                chosen.append(c)
                counts[c] = counts.get(c, 0) + 1
        codes[v, : len(chosen)] = chosen
        codes[v, len(chosen) :] = -1
    return codes, counts


def _random_problem(seed: int, n_items: int = 3000):
    """Candidates in EM's layout (by score) or placement's (by code), with ties, repeats and short lists."""
    rng = np.random.default_rng(seed)
    J = 3
    P = int(rng.choice([6, 40, 300]))  # 6 paths: crowded, many items with fewer candidates than J
    items = np.repeat(np.arange(n_items), rng.integers(0, 10, n_items))
    codes = rng.integers(0, P, len(items))
    scores = rng.uniform(0.0, 1.0, len(items)) ** 3
    if seed % 2:
        scores = np.round(scores, 2)  # exact ties between candidates
    if seed % 3 == 0:  # a few items listed again in a second run
        items = np.concatenate([items, rng.integers(0, n_items, 40)])
        codes = np.concatenate([codes, rng.integers(0, P, 40)])
        scores = np.concatenate([scores, rng.uniform(0.0, 1.0, 40)])
    prev = rng.integers(-1, P, (n_items, J))
    n_visits = rng.integers(0, 12, n_items)
    base = {int(c): int(rng.integers(0, 40)) for c in rng.integers(0, P, 10)}
    alpha = float([0.0, 3e-5, 1e-3, 0.5][seed % 4])
    return items, codes, scores, n_visits, prev, alpha, base


@pytest.mark.parametrize("seed", range(8))
def test_m_step_equals_the_plain_greedy(seed):
    items, codes, scores, n_visits, prev, alpha, base = _random_problem(seed)
    ref_codes, ref_counts = _m_step_reference(items, codes, scores, n_visits, prev, alpha,
                                              np.random.default_rng(seed), base)
    # small batches for half the seeds: several batches of Python lists and a ragged last one
    got = m_step(items, codes, scores, n_visits, prev, alpha, np.random.default_rng(seed), base,
                 batch=257 if seed % 2 else 65_536)
    np.testing.assert_array_equal(got.codes, ref_codes)
    assert got.counts == ref_counts
    # the problem is not trivial: the penalty or short lists moved some items off their best paths
    assert (ref_codes == -1).any() or alpha == 0.0 or len(set(ref_counts.values())) > 1


def test_m_step_equals_the_plain_greedy_on_placement_votes():
    """Placement's shape: ~15 distinct candidates per new item, N_v = 1, no previous paths, a full index."""
    rng = np.random.default_rng(3)
    n_new, P, J = 4000, 400, 3
    items = np.repeat(np.arange(n_new), 15)
    codes = np.sort(np.stack([rng.choice(P, 15, replace=False) for _ in range(n_new)]), 1).ravel()
    scores = rng.uniform(1e-6, 3.0, len(items))
    base = {c: int(n) for c, n in enumerate(rng.integers(10, 40, P))}
    prev = np.full((n_new, J), -1)
    args = (items, codes, scores, np.ones(n_new, dtype=np.int64), prev, 3e-5)
    ref_codes, ref_counts = _m_step_reference(*args, np.random.default_rng(0), base)
    got = m_step(*args, np.random.default_rng(0), base)
    np.testing.assert_array_equal(got.codes, ref_codes)
    assert got.counts == ref_counts
    best = np.argsort(-scores.reshape(n_new, 15), 1)[:, :J]
    top = np.sort(np.take_along_axis(codes.reshape(n_new, 15), best, 1), 1)
    # the penalty is binding: a real share of items leaves its top-voted paths
    assert 0.05 < (np.sort(ref_codes, 1) != top).any(1).mean() < 0.95


def test_m_step_rejects_non_finite_scores_and_negative_codes():
    prev = np.full((2, 2), -1)
    with pytest.raises(ValueError, match="row 1"):
        m_step(np.array([0, 0]), np.array([1, 2]), np.array([0.5, np.nan]), np.ones(2), prev, 1e-3,
               np.random.default_rng(0))
    with pytest.raises(ValueError, match="negative"):
        m_step(np.array([0, 1]), np.array([1, -1]), np.array([0.5, 0.2]), np.ones(2), prev, 1e-3,
               np.random.default_rng(0))


def _clustered(n_ref: int, n_new: int, dim: int = 32, n_clusters: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32)

    def draw(n):
        # clusters wide enough to overlap, so that an approximate search can miss some neighbours
        return centres[rng.integers(0, n_clusters, n)] + rng.normal(size=(n, dim)).astype(np.float32)

    codes = random_paths(n_ref, 3, 12, 2, rng)
    u, cnt = np.unique(codes, return_counts=True)
    return draw(n_ref), codes, draw(n_new), dict(zip(u.tolist(), cnt.tolist()))


def _placement_reference(ref_content, ref_codes, new_content, n_neighbors, alpha, base_counts, rng):
    """Exact flat k-NN, votes in one pass, the plain greedy."""
    ref = np.ascontiguousarray(ref_content, dtype=np.float32).copy()
    new = np.ascontiguousarray(new_content, dtype=np.float32).copy()
    faiss.normalize_L2(ref)
    faiss.normalize_L2(new)
    index = faiss.IndexFlatIP(ref.shape[1])
    index.add(ref)
    sims, nb = index.search(new, n_neighbors)
    w = np.maximum(sims, 0.0) + 1e-6
    J = ref_codes.shape[1]
    rows = np.repeat(np.arange(len(new)), n_neighbors * J)
    cand = ref_codes[nb].reshape(len(new), n_neighbors * J).ravel()
    ww = np.repeat(w, J, axis=1).ravel()
    P = int(cand.max()) + 1
    uk, inv = np.unique(rows.astype(np.int64) * P + cand, return_inverse=True)
    votes = np.bincount(inv, weights=ww)
    prev = np.full((len(new), J), -1, dtype=np.int64)
    codes, _ = _m_step_reference(uk // P, uk % P, votes, np.ones(len(new), dtype=np.int64), prev, alpha, rng,
                                 base_counts)
    return codes, nb, w / w.sum(1, keepdims=True)


def test_exact_placement_is_unchanged_by_batching_and_the_lean_greedy():
    ref, codes, new, base = _clustered(1500, 2500)
    want = _placement_reference(ref, codes, new, 5, 1e-3, base, np.random.default_rng(7))
    # 333-row batches: several vote batches and a ragged last one
    got = neighbour_paths(ref, codes, new, 5, 1e-3, base, np.random.default_rng(7), chunk=333)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_ivf_neighbours_agree_with_exact_ones_on_clustered_content():
    ref, codes, new, base = _clustered(6000, 2000)
    n = 5
    exact_codes, exact_nb, _ = neighbour_paths(ref, codes, new, n, 3e-5, base, np.random.default_rng(0))
    # exact_max below the trained set forces the IVF index (nlist = 4 sqrt(6000) = 310, nprobe 16)
    ivf_codes, ivf_nb, ivf_w = neighbour_paths(ref, codes, new, n, 3e-5, base, np.random.default_rng(0),
                                               exact_max=1000, chunk=700)
    overlap = np.mean([len(set(a) & set(b)) / n for a, b in zip(exact_nb.tolist(), ivf_nb.tolist())])
    assert 0.9 <= overlap < 1.0  # < 1: it is the approximate index that answered
    assert (ivf_nb >= 0).all() and (ivf_codes >= 0).all()
    np.testing.assert_allclose(ivf_w.sum(1), 1.0, rtol=1e-6)
    # every placed path is one of its neighbours' paths
    for c, nbr in zip(ivf_codes[:200].tolist(), ivf_nb[:200].tolist()):
        assert set(c) <= set(codes[nbr].ravel().tolist())
    same_paths = np.mean([len(set(a) & set(b)) / 3 for a, b in zip(exact_codes.tolist(), ivf_codes.tolist())])
    assert same_paths >= 0.8


def test_ivf_queries_with_too_few_probed_rows_fall_back_to_exact():
    ref, codes, new, base = _clustered(400, 300)
    # 10 lists of ~40 rows and one probe cannot return 200 neighbours: every query goes exact
    _, nb, w = neighbour_paths(ref, codes, new, 200, 3e-5, base, np.random.default_rng(0), exact_max=0,
                               nlist=10, nprobe=1)
    _, exact_nb, _ = neighbour_paths(ref, codes, new, 200, 3e-5, base, np.random.default_rng(0))
    assert (nb >= 0).all() and np.isfinite(w).all()
    np.testing.assert_array_equal(np.sort(nb, 1), np.sort(exact_nb, 1))


def test_deep_retrieval_places_untrained_items_through_ivf():
    """A tiny fit whose placement goes through the IVF branch: cold items land on their group's paths."""
    rng = np.random.default_rng(0)
    n_items, groups, cold = 90, 3, 9
    grp = np.arange(n_items) % groups
    warm = np.arange(n_items - cold)
    rows = [(u, int(i), pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(minutes=t))
            for u in range(120) for t, i in enumerate(rng.choice(warm[grp[warm] == u % groups], size=8))]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_ts"])
    noise = 0.05 * rng.normal(size=(n_items, groups)).astype(np.float32)
    content = np.eye(groups, dtype=np.float32)[grp] + noise
    cfg = DRConfig(n_layers=2, n_nodes=4, n_paths=2, beam=16, alpha=1e-4, em_rounds=1, epochs_per_round=1,
                   batch_size=128, item_dim=8, user_dim=8, node_dim=4, hidden=16, rerank_dim=8, num_threads=1,
                   knn_exact_max=0, knn_nprobe=2)
    dr = DeepRetrieval(cfg)
    dr.fit(df, item_ids=n_items, item_content=content)
    paths = dr.paths
    for v in range(n_items - cold, n_items):
        assert not dr.trained[v]
        mates = np.flatnonzero(dr.trained & (grp == grp[v]))
        assert {tuple(p) for p in paths[v].tolist()} <= {tuple(p) for m in mates for p in paths[m].tolist()}
