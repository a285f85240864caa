"""Compiled per-request steps around blend mode's lists: fusion, explanations, and the merge of a
delta's candidates into trigger-mode answers.

Each replaces a loop of small numpy calls whose fixed costs (~1-5 us per call, dozens per request)
were most of a blend request's time outside the lists themselves; each gives exactly the result of the
numpy code it replaces (same float64 sums in the same order, same tie rules; the tests compare them
on random inputs).
"""

from __future__ import annotations

import numba as nb
import numpy as np

_OPTS = {"nogil": True, "cache": True}


#: multiplicative hashing (Knuth): ids -> slots of fuse's open-addressing table
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@nb.njit(**_OPTS)
def _new_table(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """An open-addressing table for up to ``n`` ids per request: ``(ids, stamps, values, mask)``, at least
    twice ``n`` slots (a power of two). A slot is taken when its stamp is the request's number."""
    size = 1
    while size < 2 * n:
        size *= 2
    return np.empty(size, np.int64), np.full(size, -1, np.int64), np.empty(size, np.int64), size - 1


@nb.njit(inline="always", **_OPTS)
def _probe(table: np.ndarray, stamp: np.ndarray, gen: int, x: int, mask: int) -> int:
    """Slot of id ``x`` in an open-addressing table: where it is, or the free slot it would take (a slot
    whose stamp is not ``gen`` is free: one table serves every request without being cleared)."""
    p = np.int64((np.uint64(x) * _GOLDEN) >> np.uint64(32)) & mask
    while stamp[p] == gen and table[p] != x:
        p = (p + 1) & mask
    return p


@nb.njit(**_OPTS)
def _top_by_score(score: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of the best ``min(k, n)`` of ``score (n,)``, best first, ties by lower ``ids (n,)`` (any
    int64, so they cannot share a sort key with the score as :func:`mfli.index.topk.top_unique` does)."""
    m = min(k, score.size)
    neg = -score
    cut = np.partition(neg, m - 1)[m - 1]
    sel = np.flatnonzero(neg <= cut)  # the m best and any ties at the edge
    o = sel[np.argsort(ids[sel], kind="mergesort")]
    return o[np.argsort(neg[o], kind="mergesort")][:m]  # score desc, ties by lower id


@nb.njit(**_OPTS)
def fuse(user: np.ndarray, co: np.ndarray, trig: np.ndarray, trend: np.ndarray, w_co: float, w_trig: float,
         w_trend: float, w_new: float, known: np.ndarray, k: int, rrf_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted reciprocal-rank fusion of ranked id lists (:func:`mfli.serve.blend.blend`).

    Args:
        user, co, trig, trend: ``(B, K_l)`` int64 ranked ids, -1 padding (an absent list: ``(B, 0)``).
        w_co, w_trig, w_trend: the lists' weights (user mode's is 1); a zero weight leaves its list out.
        w_new: the new-item credit: ids not in ``known`` (sorted int64) take ``w_new`` at their better rank
            in the user and trigger lists (0: no credit; :func:`mfli.serve.blend.blend` computes it).

    Returns:
        ``(B, k)`` ids (-1 padding) and float32 scores (-inf padding): each id's ``sum w / (rrf_k + rank)``
        summed in float64 in list order (user, co-engagement, trigger, trending, new-item credit), best
        first, ties by lower id.
    """
    B = user.shape[0]
    ids = np.full((B, k), -1, np.int64)
    sc = np.full((B, k), -np.inf, np.float32)
    cap = user.shape[1] + co.shape[1] + trig.shape[1] + trend.shape[1] + 1
    table, stamp, where, mask = _new_table(cap)
    uid = np.empty(cap, np.int64)
    score = np.empty(cap, np.float64)
    best = np.empty(cap, np.int64)  # an id's best rank in the user and trigger lists (the credit), else -1
    weights = (1.0, w_co, w_trig, w_trend)
    credit_new = w_new > 0.0
    for b in range(B):
        u = 0
        for li in range(4):  # list order is summation order: user, co-engagement, trigger, trending
            lst = user if li == 0 else (co if li == 1 else (trig if li == 2 else trend))
            w = weights[li]
            if (li == 1 or li == 3) and w == 0.0:
                continue
            r = 0
            for j in range(lst.shape[1]):
                x = lst[b, j]
                if x < 0:
                    continue
                p = _probe(table, stamp, b, x, mask)
                if stamp[p] != b:
                    stamp[p] = b
                    table[p] = x
                    where[p] = u
                    uid[u] = x
                    score[u] = 0.0
                    best[u] = -1
                    u += 1
                i = where[p]
                # an unweighted trigger list only records ranks for the credit (adding 0.0 changes no sum)
                score[i] += w / (rrf_k + r)
                if (li == 0 or li == 2) and (best[i] < 0 or r < best[i]):
                    best[i] = r
                r += 1
        if credit_new:
            for i in range(u):
                if best[i] < 0:
                    continue
                q = np.searchsorted(known, uid[i])
                if q == known.size or known[q] != uid[i]:
                    score[i] += w_new / (rrf_k + best[i])
        if w_trig == 0.0:  # an id only the (unweighted) trigger list held, and no credit: not a candidate
            m = 0
            for i in range(u):  # every other id has a positive sum (weights are >= 0, zero ones unused)
                if score[i] != 0.0:
                    uid[m], score[m] = uid[i], score[i]
                    m += 1
            u = m
        if u == 0:
            continue
        o = _top_by_score(score[:u], uid[:u], k)
        for j in range(o.size):
            ids[b, j] = uid[o[j]]
            sc[b, j] = np.float32(score[o[j]])
    return ids, sc


@nb.njit(**_OPTS)
def first_positions(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``(B, k)`` int64 position of each ``ids[b, j]`` in ``rows[b]`` (its first), -1 where absent or
    padding (-1 ids). ``ids (B, k)``, ``rows (B, D)`` int64."""
    B, k = ids.shape
    D = rows.shape[1]
    out = np.full((B, k), -1, np.int64)
    table, stamp, where, mask = _new_table(D + 1)
    for b in range(B):
        for j in range(D):
            x = rows[b, j]
            if x < 0:
                continue
            p = _probe(table, stamp, b, x, mask)
            if stamp[p] != b:  # the first copy of an id keeps its position
                stamp[p] = b
                table[p] = x
                where[p] = j
        for j in range(k):
            x = ids[b, j]
            if x < 0:
                continue
            p = _probe(table, stamp, b, x, mask)
            if stamp[p] == b:
                out[b, j] = where[p]
    return out


@nb.njit(**_OPTS)
def best_distinct(ids: np.ndarray, score: np.ndarray, req: np.ndarray, B: int, ex_ptr: np.ndarray,
                  ex_ids: np.ndarray, k: int) -> np.ndarray:
    """Per request, the candidates of the best ``k`` distinct ids (:meth:`EngineRetriever._merge_parts`).

    Args:
        ids, score, req: ``(n,)`` candidate ids (-1: none), float32 scores and requests.
        ex_ptr, ex_ids: request b never returns ``ex_ids[ex_ptr[b]:ex_ptr[b + 1]]``.

    Returns:
        ``(B, k)`` int64 candidate positions (-1 padding): best score first, ties by lower id; of an id's
        copies the best-scoring, ties by the earlier position.
    """
    n = ids.size
    cnt = np.zeros(B + 1, np.int64)
    for i in range(n):
        if ids[i] >= 0:
            cnt[req[i] + 1] += 1
    for b in range(B):
        cnt[b + 1] += cnt[b]
    fill = cnt[:B].copy()
    idx = np.empty(cnt[B], np.int64)
    for i in range(n):  # grouped by request, in candidate order
        if ids[i] >= 0:
            idx[fill[req[i]]] = i
            fill[req[i]] += 1
    out = np.full((B, k), -1, np.int64)
    most = 1
    for b in range(B):
        most = max(most, cnt[b + 1] - cnt[b] + ex_ptr[b + 1] - ex_ptr[b])
    table, stamp, where, mask = _new_table(most)  # where: the id's best candidate so far, or -1: excluded
    pick = np.empty(most, np.int64)
    for b in range(B):
        for e in range(ex_ptr[b], ex_ptr[b + 1]):
            x = ex_ids[e]
            p = _probe(table, stamp, b, x, mask)
            stamp[p] = b
            table[p] = x
            where[p] = -1
        m = 0
        for t in range(cnt[b], cnt[b + 1]):
            c = idx[t]
            x = ids[c]
            p = _probe(table, stamp, b, x, mask)
            if stamp[p] != b:
                stamp[p] = b
                table[p] = x
                where[p] = m
                pick[m] = c
                m += 1
            elif where[p] >= 0 and score[c] > score[pick[where[p]]]:  # ties keep the earlier copy
                pick[where[p]] = c
        if m == 0:
            continue
        cand = pick[:m]
        o = _top_by_score(score[cand], ids[cand], k)
        for j in range(o.size):
            out[b, j] = cand[o[j]]
    return out
