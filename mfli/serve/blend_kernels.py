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


@nb.njit(**_OPTS)
def _known(known: np.ndarray, x: int) -> bool:
    p = np.searchsorted(known, x)
    return p < known.size and known[p] == x


@nb.njit(**_OPTS)
def fuse(user: np.ndarray, co: np.ndarray, trig: np.ndarray, w_co: float, w_trig: float, credit_new: bool,
         known: np.ndarray, k: int, rrf_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted reciprocal-rank fusion of ranked id lists (:func:`mfli.serve.blend.blend`).

    Args:
        user, co, trig: ``(B, K_l)`` int64 ranked ids, -1 padding (an absent list: ``(B, 0)``).
        w_co, w_trig: the lists' weights (user mode's is 1); a zero weight leaves its list out.
        credit_new: ids not in ``known`` (sorted int64) take ``w_co`` at their better rank in the user
            and trigger lists.

    Returns:
        ``(B, k)`` ids (-1 padding) and float32 scores (-inf padding): each id's ``sum w / (rrf_k + rank)``
        summed in float64 in list order (user, co-engagement, trigger, new-item credit), best first,
        ties by lower id.
    """
    B = user.shape[0]
    ids = np.full((B, k), -1, np.int64)
    sc = np.full((B, k), -np.inf, np.float32)
    cap = 2 * user.shape[1] + co.shape[1] + 2 * trig.shape[1] + 1
    cid = np.empty(cap, np.int64)
    cg = np.empty(cap, np.float64)
    tbuf = np.empty(trig.shape[1] + 1, np.int64)
    nid = np.empty(user.shape[1] + trig.shape[1] + 1, np.int64)
    nrank = np.empty(user.shape[1] + trig.shape[1] + 1, np.int64)
    for b in range(B):
        n = 0
        nu = 0
        for j in range(user.shape[1]):
            x = user[b, j]
            if x >= 0:
                cid[n] = x
                cg[n] = 1.0 / (rrf_k + nu)
                n += 1
                nu += 1
        if w_co != 0.0:
            r = 0
            for j in range(co.shape[1]):
                x = co[b, j]
                if x >= 0:
                    cid[n] = x
                    cg[n] = w_co / (rrf_k + r)
                    n += 1
                    r += 1
        nt = 0
        for j in range(trig.shape[1]):
            x = trig[b, j]
            if x >= 0:
                tbuf[nt] = x
                nt += 1
        if w_trig != 0.0:
            for r in range(nt):
                cid[n] = tbuf[r]
                cg[n] = w_trig / (rrf_k + r)
                n += 1
        if credit_new:
            m = 0
            for r in range(nu):  # the user list's ids are cid[:nu]
                if not _known(known, cid[r]):
                    nid[m] = cid[r]
                    nrank[m] = r
                    m += 1
            for r in range(nt):
                if not _known(known, tbuf[r]):
                    nid[m] = tbuf[r]
                    nrank[m] = r
                    m += 1
            if m:
                o = np.argsort(nid[:m], kind="mergesort")
                t = 0
                while t < m:
                    x = nid[o[t]]
                    best = nrank[o[t]]
                    t += 1
                    while t < m and nid[o[t]] == x:
                        best = min(best, nrank[o[t]])
                        t += 1
                    cid[n] = x
                    cg[n] = w_co / (rrf_k + best)
                    n += 1
        if n == 0:
            continue
        o = np.argsort(cid[:n], kind="mergesort")  # stable: an id's gains stay in list order
        uid = np.empty(n, np.int64)
        score = np.empty(n, np.float64)
        u = 0
        t = 0
        while t < n:
            x = cid[o[t]]
            s = 0.0
            while t < n and cid[o[t]] == x:
                s += cg[o[t]]
                t += 1
            uid[u] = x
            score[u] = s
            u += 1
        top = np.argsort(-score[:u], kind="mergesort")  # ids ascending: ties by lower id
        for j in range(min(k, u)):
            ids[b, j] = uid[top[j]]
            sc[b, j] = np.float32(score[top[j]])
    return ids, sc


@nb.njit(**_OPTS)
def first_positions(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``(B, k)`` int64 position of each ``ids[b, j]`` in ``rows[b]`` (its first), -1 where absent or
    padding (-1 ids). ``ids (B, k)``, ``rows (B, D)`` int64."""
    B, k = ids.shape
    D = rows.shape[1]
    out = np.full((B, k), -1, np.int64)
    if D == 0:
        return out
    for b in range(B):
        o = np.argsort(rows[b], kind="mergesort")  # stable: the first of equal ids sorts first
        srt = rows[b][o]
        for j in range(k):
            x = ids[b, j]
            if x < 0:
                continue
            p = np.searchsorted(srt, x)
            if p < D and srt[p] == x:
                out[b, j] = o[p]
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
    for b in range(B):
        c = idx[cnt[b] : cnt[b + 1]]
        m = c.size
        if m == 0:
            continue
        c1 = c[np.argsort(ids[c], kind="mergesort")]
        c2 = c1[np.argsort(-score[c1], kind="mergesort")]  # score desc, then id, then position
        o3 = np.argsort(ids[c2], kind="mergesort")
        first = np.zeros(m, np.bool_)
        for t in range(m):
            if t == 0 or ids[c2[o3[t]]] != ids[c2[o3[t - 1]]]:
                first[o3[t]] = True
        ex = np.sort(ex_ids[ex_ptr[b] : ex_ptr[b + 1]])
        s = 0
        for p in range(m):
            if s == k:
                break
            if not first[p]:
                continue
            x = ids[c2[p]]
            q = np.searchsorted(ex, x)
            if q < ex.size and ex[q] == x:
                continue
            out[b, s] = c2[p]
            s += 1
    return out
