"""The compiled blend steps give exactly what the numpy code they replaced gave (kept here as the
reference): fusion scores and order, first positions, and the merge of candidate parts."""

from __future__ import annotations

import numpy as np
import pytest

from mfli.index.lookup import positions_in_sorted
from mfli.serve.blend import RRF_K, BlendWeights, blend
from mfli.serve.blend_kernels import best_distinct, first_positions


def _reference_blend(user, coengagement, trigger, weights, known, k, trending=None):
    """The numpy fusion blend mode served before it was compiled (the trending list and the new-item
    credit added since)."""
    B = user.shape[0]
    ids = np.full((B, k), -1, np.int64)
    sc = np.full((B, k), -np.inf, np.float32)
    w_trend = weights.trending if trending is not None else 0.0
    credit = (weights.coengagement + w_trend if weights.new_items_best_rank else 0.0) + weights.new_items
    credit_new = credit > 0
    for b in range(B):
        parts, gains = [], []
        urow = user[b][user[b] >= 0]
        parts.append(urow)
        gains.append(1.0 / (RRF_K + np.arange(len(urow))))
        if coengagement is not None and weights.coengagement:
            crow = coengagement[b][coengagement[b] >= 0]
            parts.append(crow)
            gains.append(weights.coengagement / (RRF_K + np.arange(len(crow))))
        trow = trigger[b][trigger[b] >= 0] if trigger is not None else np.zeros(0, np.int64)
        if weights.trigger and len(trow):
            parts.append(trow)
            gains.append(weights.trigger / (RRF_K + np.arange(len(trow))))
        if w_trend:
            prow = trending[b][trending[b] >= 0]
            parts.append(prow)
            gains.append(w_trend / (RRF_K + np.arange(len(prow))))
        if credit_new:
            cand = np.concatenate([urow, trow])
            rank = np.concatenate([np.arange(len(urow)), np.arange(len(trow))])
            new = ~positions_in_sorted(known, cand)[1]
            if new.any():
                cand, rank = cand[new], rank[new]
                order = np.lexsort((rank, cand))
                cand, rank = cand[order], rank[order]
                first = np.ones(len(cand), bool)
                first[1:] = cand[1:] != cand[:-1]
                parts.append(cand[first])
                gains.append(credit / (RRF_K + rank[first]))
        allid = np.concatenate(parts)
        if not len(allid):
            continue
        uniq, inv = np.unique(allid, return_inverse=True)
        score = np.bincount(inv, weights=np.concatenate(gains))
        n = min(k, len(uniq))
        top = np.argsort(-score, kind="stable")[:n]
        ids[b, :n] = uniq[top]
        sc[b, :n] = score[top]
    return ids, sc


def _ranked(rng, B, D, pool, pad_share=0.2):
    """``(B, D)`` ranked id lists drawn from ``pool`` (distinct per row), padded with -1 at the end or
    anywhere, and some rows empty."""
    out = np.full((B, D), -1, np.int64)
    for b in range(B):
        n = int(rng.integers(0, D + 1)) if rng.random() < 0.3 else D
        out[b, :n] = rng.choice(pool, n, replace=False)
        if rng.random() < pad_share:
            out[b, rng.integers(0, D)] = -1
    return out


@pytest.mark.parametrize("seed", range(6))
def test_fusion_matches_the_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    pool = rng.choice(10**12, 300, replace=False).astype(np.int64)  # any int64 ids
    known = np.sort(rng.choice(pool, 200, replace=False))
    B, D, k = 40, 60, 25
    user, co, trig = _ranked(rng, B, D, pool), _ranked(rng, B, D, known), _ranked(rng, B, 30, pool)
    for w in (BlendWeights(0.5, 0.2), BlendWeights(0.0, 0.5), BlendWeights(1.5, 0.0), BlendWeights(1.0, 1.0),
              BlendWeights(0.7, 0.5, new_items_best_rank=False), BlendWeights(1.0, 1.0 / 60),
              BlendWeights(0.5, 0.2, new_items=1.0), BlendWeights(0.0, 0.0, new_items=0.5),
              BlendWeights(0.7, 0.5, new_items_best_rank=False, new_items=2.0)):
        for c, t in ((co, trig), (None, trig), (co, None), (None, None)):
            got = blend(user, c, t, w, known, k)
            want = _reference_blend(user, c, t, w, known, k)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("seed", range(4))
def test_fusion_with_a_trending_list_matches_the_numpy_reference(seed):
    rng = np.random.default_rng(100 + seed)
    pool = rng.choice(10**12, 300, replace=False).astype(np.int64)
    known = np.sort(rng.choice(pool, 200, replace=False))
    B, D, k = 40, 60, 25
    user, co, trig = _ranked(rng, B, D, pool), _ranked(rng, B, D, known), _ranked(rng, B, 30, pool)
    trend = _ranked(rng, B, 50, known)
    for w in (BlendWeights(0.5, 0.2, trending=0.5), BlendWeights(0.0, 0.5, trending=1.0),
              BlendWeights(0.0, 0.0, trending=0.2), BlendWeights(0.7, 0.5, trending=0.0),
              BlendWeights(1.0, 1.0, new_items_best_rank=False, trending=0.5),
              BlendWeights(0.5, 0.2, trending=0.5, new_items=4.0)):
        for c, t in ((co, trig), (None, trig), (co, None)):
            got = blend(user, c, t, w, known, k, trend)
            want = _reference_blend(user, c, t, w, known, k, trend)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    # a zero trending weight, or no trending list, gives exactly the three-list fusion
    w0 = BlendWeights(0.5, 0.2, trending=0.0)
    for a, b in zip(blend(user, co, trig, w0, known, k, trend), blend(user, co, trig, w0, known, k)):
        np.testing.assert_array_equal(a, b)


def test_fusion_ties_go_to_the_lower_id():
    user = np.array([[9, 4, -1]], np.int64)
    trig = np.array([[4, 9, -1]], np.int64)  # equal weights: 9 and 4 tie
    ids, sc = blend(user, None, trig, BlendWeights(0.0, 1.0), np.zeros(0, np.int64), 3)
    assert ids.tolist() == [[4, 9, -1]] and sc[0, 0] == sc[0, 1] and np.isneginf(sc[0, 2])


def _reference_positions(ids, rows):
    out = np.full(ids.shape, -1, np.int64)
    for b in range(ids.shape[0]):
        for j in range(ids.shape[1]):
            if ids[b, j] >= 0:
                hit = np.flatnonzero(rows[b] == ids[b, j])
                if hit.size:
                    out[b, j] = hit[0]
    return out


def test_first_positions_match_the_reference():
    rng = np.random.default_rng(3)
    ids = rng.integers(-1, 40, (30, 12)).astype(np.int64)
    rows = rng.integers(-1, 40, (30, 25)).astype(np.int64)  # duplicates: the first one counts
    np.testing.assert_array_equal(first_positions(ids, rows), _reference_positions(ids, rows))
    assert (first_positions(ids, np.zeros((30, 0), np.int64)) == -1).all()


def _reference_merge(ids, sc, rq, excl, B, k):
    """The numpy selection of the trigger-mode delta merge before it was compiled; returns positions."""
    pos = np.arange(ids.size)
    keep = ids >= 0
    ids, sc, rq, pos = ids[keep], sc[keep], rq[keep], pos[keep]
    ex_ids = np.concatenate(excl) if B else np.zeros(0, np.int64)
    codes = np.unique(np.concatenate([ids, ex_ids]), return_inverse=True)[1].reshape(-1)
    U = int(codes.max()) + 1 if codes.size else 1
    key = rq * U + codes[: ids.size]
    if ex_ids.size:
        ex_req = np.repeat(np.arange(B, dtype=np.int64), [e.size for e in excl])
        keep = ~np.isin(key, ex_req * U + codes[ids.size :])
        ids, sc, rq, key, pos = ids[keep], sc[keep], rq[keep], key[keep], pos[keep]
    o = np.lexsort((ids, -sc, rq))
    ids, sc, rq, key, pos = ids[o], sc[o], rq[o], key[o], pos[o]
    first = np.zeros(ids.size, bool)
    first[np.unique(key, return_index=True)[1]] = True
    rq, pos = rq[first], pos[first]
    slot = np.arange(rq.size) - np.searchsorted(rq, rq)
    top = slot < k
    out = np.full((B, k), -1, np.int64)
    out[rq[top], slot[top]] = pos[top]
    return out


@pytest.mark.parametrize("seed", range(5))
def test_best_distinct_matches_the_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    B, n, k = 9, 400, 20
    ids = rng.integers(-1, 60, n).astype(np.int64)  # duplicates within a request, and padding
    sc = rng.choice(np.array([0.5, 0.25, -0.0, 0.0, 1.0, -np.inf], np.float32), n)  # many exact ties
    sc = np.where(rng.random(n) < 0.5, rng.standard_normal(n).astype(np.float32), sc)
    rq = rng.integers(0, B, n).astype(np.int64)
    if seed % 2:
        rq = np.sort(rq)
    excl = [rng.choice(60, int(rng.integers(0, 6)), replace=False).astype(np.int64) for _ in range(B)]
    ex_ptr = np.concatenate([[0], np.cumsum([e.size for e in excl])]).astype(np.int64)
    got = best_distinct(ids, sc, rq, B, ex_ptr, np.concatenate(excl), k)
    np.testing.assert_array_equal(got, _reference_merge(ids, sc, rq, excl, B, k))
