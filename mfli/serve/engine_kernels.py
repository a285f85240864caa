"""Compiled (numba) kernels of the scan engine (:mod:`mfli.serve.engine`).

Each kernel is one call per batch (no Python loop per request or cluster):

- :func:`select_clusters`: per query, the ``n`` best clusters by a routing score, jointly over all
  facets or ``n // F`` per facet (a bounded min-heap, O(C log n) per query);
- :func:`scan_rescore`: per request, scan the chosen clusters' code rows (sum of look-ups in the
  query's tables), keep a short list of the best ``R`` approximate scores, each item at most once
  across facets (a per-thread seen-bitset; excluded items are set first), rescore the short list
  exactly on the float vectors and return the best ``k``;
- :func:`rescore_candidates`: the same exact rescoring for short lists the fast-scan lists chose;
- :func:`route_small`, :func:`column_dots`, :func:`pair_entries`, :func:`explain_rows`: the
  small per-request steps around them (routing scores of a few queries, the chosen columns' biases,
  entry counts, explanations), compiled because at batch 1 numpy's per-call cost was ~100 us of ~640;
- :func:`route_tree`: routing through a two-level tree of the columns (:mod:`mfli.serve.route_tree`);
- :func:`segment_means`: per cluster, the mean of its members' full vectors (build time).

Requests are split into one contiguous chunk per thread (``prange`` over chunks) so a chunk owns its
seen-bitset without a thread-id lookup.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from mfli.index.topk import top_unique as _top_unique
from mfli.serve.prefetch import prefetch_row

# reassociation lets LLVM vectorise the sums; no "ninf"/"nnan": -inf marks padding and empty heaps
_OPTS = {"nogil": True, "cache": True, "fastmath": {"reassoc", "contract", "arcp", "nsz"}}
#: rows of a short list whose vectors are being loaded while the current one is scored
_AHEAD = 16


@nb.njit(**_OPTS)
def _order_desc(score: np.ndarray, ids: np.ndarray, size: int) -> np.ndarray:
    """Indices of ``score[:size]`` best first, ties by lower ``ids`` (two stable sorts: deterministic)."""
    by_id = np.argsort(ids[:size], kind="mergesort")
    key = np.empty(size, np.float64)
    for j in range(size):
        key[j] = -np.float64(score[by_id[j]])
    return by_id[np.argsort(key, kind="mergesort")]


@nb.njit(**_OPTS)
def _result_arrays(B: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empty ``rows (B, k)`` int64 (-1), ``exact (B, k)`` float32 (-inf) and ``pair (B, k)`` int64 (-1)."""
    return (np.full((B, k), -1, np.int64), np.full((B, k), -np.inf, np.float32),
            np.full((B, k), -1, np.int64))


@nb.njit(**_OPTS)
def _mark(bits: np.ndarray, touched: np.ndarray, n_t: int, r: int) -> tuple[np.ndarray, int]:
    """Set row ``r`` in the seen-bitset and record it in ``touched[:n_t]`` (grown as needed) so the
    request can clear exactly the bits it set; returns ``(touched, n_t)``."""
    bits[r >> 3] |= np.uint8(1 << (r & 7))
    if n_t == touched.size:
        touched = np.concatenate((touched, np.empty(touched.size, np.int64)))
    touched[n_t] = r
    return touched, n_t + 1


@nb.njit(**_OPTS)
def _best_distinct(score: np.ndarray, rows: np.ndarray, size: int, copies: bool, k: int) -> tuple[np.ndarray, int]:
    """Positions of the best ``k`` of ``score[:size]`` (ties by lower row), each row once, and the number
    of distinct rows. ``copies``: a row may appear several times; it keeps its best-scored copy."""
    if not copies:
        return _top_unique(score, rows, size, k), size
    order = _order_desc(score, rows, size)
    keep = np.ones(size, np.bool_)
    by_row = order[np.argsort(rows[order], kind="mergesort")]  # stable: each row's best copy first
    prev = -1
    for jj in range(size):
        o = by_row[jj]
        keep[o] = rows[o] != prev
        prev = rows[o]
    sel = np.empty(min(k, size), np.int64)
    j = 0
    distinct = 0
    for jj in range(size):
        o = order[jj]
        if keep[o]:
            distinct += 1
            if j < sel.size:
                sel[j] = o
                j += 1
    return sel[:j], distinct


@nb.njit(**_OPTS)
def _sift_down(hs: np.ndarray, hi: np.ndarray, hp: np.ndarray, size: int, pos: int) -> None:
    """Restore the min-heap (``hs`` scores, ``hi``/``hp`` payloads) below ``pos``."""
    s, i, p = hs[pos], hi[pos], hp[pos]
    while True:
        c = 2 * pos + 1
        if c >= size:
            break
        if c + 1 < size and hs[c + 1] < hs[c]:
            c += 1
        if hs[c] >= s:
            break
        hs[pos], hi[pos], hp[pos] = hs[c], hi[c], hp[c]
        pos = c
    hs[pos], hi[pos], hp[pos] = s, i, p


@nb.njit(**_OPTS)
def _sift_up(hs: np.ndarray, hi: np.ndarray, hp: np.ndarray, pos: int) -> None:
    s, i, p = hs[pos], hi[pos], hp[pos]
    while pos > 0:
        par = (pos - 1) // 2
        if hs[par] <= s:
            break
        hs[pos], hi[pos], hp[pos] = hs[par], hi[par], hp[par]
        pos = par
    hs[pos], hi[pos], hp[pos] = s, i, p


@nb.njit(**_OPTS)
def _push(hs: np.ndarray, hi: np.ndarray, hp: np.ndarray, size: int, cap: int, s: float, i: int, p: int) -> int:
    """Offer ``(s, i, p)`` to a bounded min-heap holding ``size`` of ``cap``; returns the new size."""
    if size < cap:
        hs[size], hi[size], hp[size] = s, i, p
        _sift_up(hs, hi, hp, size)
        return size + 1
    if s > hs[0]:
        hs[0], hi[0], hp[0] = s, i, p
        _sift_down(hs, hi, hp, size, 0)
    return size


@nb.njit(parallel=True, **_OPTS)
def select_clusters(route: np.ndarray, facet_start: np.ndarray, n: int, joint: bool,
                    n_chunks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best clusters per query.

    Args:
        route: ``(B, C)`` float32 routing scores over all facets' clusters (facet f owns columns
            ``facet_start[f]:facet_start[f + 1]``).
        n: clusters per query (joint) or per facet (``joint=False``).

    Returns:
        ``gid (B, w)`` int64 cluster columns, best first (``-1`` padding), ``score (B, w)`` float32 and
        ``rank (B, w)`` int64 (0 = best), with ``w = n`` (joint) or ``n * F``.
    """
    B, C = route.shape
    F = facet_start.size - 1
    w = n if joint else n * F
    gid = np.full((B, w), -1, np.int64)
    score = np.full((B, w), -np.inf, np.float32)
    rank = np.full((B, w), -1, np.int64)
    step = (B + n_chunks - 1) // n_chunks
    for t in nb.prange(n_chunks):
        hs = np.empty(w, np.float32)
        hi = np.empty(w, np.int64)
        hp = np.empty(w, np.int64)
        for b in range(t * step, min(B, (t + 1) * step)):
            size = 0
            groups = 1 if joint else F
            for g in range(groups):
                lo = 0 if joint else facet_start[g]
                hi_c = C if joint else facet_start[g + 1]
                base = size
                cap = size + n
                for c in range(lo, hi_c):
                    s = route[b, c]
                    # each facet group is its own heap in hs[base:cap]
                    m = size - base
                    if m < n:
                        hs[size], hi[size], hp[size] = s, c, 0
                        _sift_up(hs[base:cap], hi[base:cap], hp[base:cap], m)
                        size += 1
                    elif s > hs[base]:
                        hs[base], hi[base], hp[base] = s, c, 0
                        _sift_down(hs[base:cap], hi[base:cap], hp[base:cap], m, 0)
            order = _order_desc(hs, hi, size)  # best first; ties by lower column
            for j in range(size):
                o = order[j]
                gid[b, j] = hi[o]
                score[b, j] = hs[o]
                rank[b, j] = j
    return gid, score, rank


@nb.njit(parallel=True, **_OPTS)
def scan_rescore(luts: np.ndarray, req_q_ptr: np.ndarray, qfull: np.ndarray,
                 pair_ptr: np.ndarray, pair_q: np.ndarray, pair_gid: np.ndarray,
                 offsets: np.ndarray, entry_rows: np.ndarray, entry_codes: np.ndarray,
                 emb: np.ndarray, ex_ptr: np.ndarray, ex_rows: np.ndarray, removed: np.ndarray,
                 bits: np.ndarray, shortlist: int, k: int, dedup_scan: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scan, pre-rank by codes, de-duplicate, rescore exactly.

    Args:
        luts: ``(Qn, S, W)`` float32 look-up tables, one per query vector: sub-code ``s`` of an entry
            with value ``c`` adds ``luts[q, s, c]``.
        req_q_ptr: ``(B + 1,)`` request b owns query vectors ``req_q_ptr[b]:req_q_ptr[b + 1]``.
        qfull: ``(Qn, D)`` float32 query vectors for exact rescoring (a request's exact score of an
            item is the max over its query vectors; one vector in user mode).
        pair_ptr: ``(B + 1,)`` request b scans pairs ``pair_ptr[b]:pair_ptr[b + 1]`` in order.
        pair_q, pair_gid: ``(P,)`` the query vector scoring the pair's cluster, the cluster column.
        offsets: ``(C + 1,)`` cluster column c owns entries ``offsets[c]:offsets[c + 1]``.
        entry_rows: ``(E,)`` int32 item row of each entry.  entry_codes: ``(E, S)`` uint8/uint16.
        emb: ``(N, D)`` float32 exact item vectors.
        ex_ptr, ex_rows: request b never returns rows ``ex_rows[ex_ptr[b]:ex_ptr[b + 1]]``.
        removed: ``(N // 8 + 1,)`` uint8 bitset of rows no request returns (tombstoned or replaced by a
            delta); read only for entries that would enter the short list.
        bits: ``(T, N // 8 + 1)`` uint8 all-zero seen-bitsets, one per thread chunk (left all-zero).
        shortlist: R, candidates kept for exact rescoring.  k: results per request.
        dedup_scan: de-duplicate while scanning (right when every pair of a request scores with the same
            table, user mode); False keeps copies scored by different tables (trigger mode: an item's
            best trigger may reach it second) and de-duplicates after the exact rescoring instead; each
            copy is then rescored against the query vector of the pair that reached it (cost R * D, not
            R * T * D), so an item's exact score is the best over the triggers whose clusters hold it.

    An entry's code score is computed from its code row; the item is checked against the request's
    seen-bitset only when that score would enter the short list (an item's entries in other facets
    carry the same code row, so in user mode a later copy scores the same and never displaces it).
    Each item therefore enters the short list, and is rescored exactly, at most once (with
    ``dedup_scan``). The bitset is
    N / 8 bytes (cache-resident where an int32 stamp per item is not) and is cleared from the list
    of rows set, so a request costs nothing proportional to N.

    Returns:
        ``rows (B, k)`` int64 (-1 padding), ``exact (B, k)`` float32 (-inf padding), ``pair (B, k)``
        int64 index of the pair that first reached the row (-1 padding), ``entries (B,)`` int64 code
        rows scanned, ``rescored (B,)`` int64 distinct items rescored exactly.
    """
    B = req_q_ptr.size - 1
    S = entry_codes.shape[1]
    D = emb.shape[1]
    T = bits.shape[0]
    out_rows, out_score, out_pair = _result_arrays(B, k)
    n_entries = np.zeros(B, np.int64)
    n_rescored = np.zeros(B, np.int64)
    step = (B + T - 1) // T
    for t in nb.prange(T):
        bt = bits[t]
        hs = np.empty(shortlist, np.float32)
        hi = np.empty(shortlist, np.int64)
        hp = np.empty(shortlist, np.int64)
        ex_score = np.empty(shortlist, np.float32)
        touched = np.empty(1024, np.int64)
        for b in range(t * step, min(B, (t + 1) * step)):
            n_t = 0
            for j in range(ex_ptr[b], ex_ptr[b + 1]):
                touched, n_t = _mark(bt, touched, n_t, ex_rows[j])
            size = 0
            n_e = 0
            for p in range(pair_ptr[b], pair_ptr[b + 1]):
                c = pair_gid[p]
                if c < 0:
                    continue
                lut = luts[pair_q[p]]
                n_e += offsets[c + 1] - offsets[c]
                for e in range(offsets[c], offsets[c + 1]):
                    s = np.float32(0.0)
                    for u in range(S):
                        s += lut[u, entry_codes[e, u]]
                    if size == shortlist and s <= hs[0]:
                        continue
                    r = entry_rows[e]
                    m = np.uint8(1 << (r & 7))
                    if (bt[r >> 3] | removed[r >> 3]) & m:
                        continue
                    if not dedup_scan:
                        size = _push(hs, hi, hp, size, shortlist, s, r, p)
                        continue
                    touched, n_t = _mark(bt, touched, n_t, r)
                    size = _push(hs, hi, hp, size, shortlist, s, r, p)
            for j in range(n_t):
                bt[touched[j] >> 3] = 0
            n_entries[b] = n_e
            # exact rescoring of the short list: max over the request's query vectors
            q0, q1 = req_q_ptr[b], req_q_ptr[b + 1]
            for j in range(size):
                r = hi[j]
                if not dedup_scan:
                    q0, q1 = pair_q[hp[j]], pair_q[hp[j]] + 1
                best = -np.inf
                for q in range(q0, q1):
                    acc = np.float32(0.0)
                    for x in range(D):
                        acc += qfull[q, x] * emb[r, x]
                    best = max(best, acc)
                ex_score[j] = best
            sel, n_rescored[b] = _best_distinct(ex_score, hi, size, not dedup_scan, k)
            for j in range(sel.size):
                o = sel[j]
                out_rows[b, j] = hi[o]
                out_score[b, j] = ex_score[o]
                out_pair[b, j] = hp[o]
    return out_rows, out_score, out_pair, n_entries, n_rescored


@nb.njit(**_OPTS)
def approx_scores(lut: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``(n,)`` float32 sum of look-ups of ``codes (n, S)`` in one query's ``lut (S, W)`` (tests, diagnostics)."""
    n, S = codes.shape
    out = np.zeros(n, np.float32)
    for i in range(n):
        s = np.float32(0.0)
        for u in range(S):
            s += lut[u, codes[i, u]]
        out[i] = s
    return out


@nb.njit(**_OPTS)
def segment_means(x: np.ndarray, rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``(C, D)`` float32 mean of ``x[rows[offsets[c]:offsets[c + 1]]]`` per segment (0 when empty)."""
    C = offsets.size - 1
    D = x.shape[1]
    out = np.zeros((C, D), np.float32)
    acc = np.zeros(D, np.float64)
    for c in range(C):
        acc[:] = 0.0
        n = offsets[c + 1] - offsets[c]
        for e in range(offsets[c], offsets[c + 1]):
            r = rows[e]
            for j in range(D):
                acc[j] += x[r, j]
        if n > 0:
            for j in range(D):
                out[c, j] = acc[j] / n
    return out


@nb.njit(parallel=True, **_OPTS)
def rescore_candidates(cand: np.ndarray, req_q_ptr: np.ndarray, qfull: np.ndarray,
                       pair_ptr: np.ndarray, pair_q: np.ndarray, pair_gid: np.ndarray,
                       entry_rows: np.ndarray, entry_col: np.ndarray, emb: np.ndarray,
                       ex_ptr: np.ndarray, ex_rows: np.ndarray, removed: np.ndarray, bits: np.ndarray,
                       k: int, shortlist: int, dedup_scan: bool = True
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact rescoring of short lists another pre-ranker chose (the fast-scan path of the engine).

    Args:
        cand: ``(Qn, R)`` int64 entries (positions in the inverted file) pre-ranked for each query
            vector, best approximate score first, ``-1`` padding.
        req_q_ptr, qfull, pair_ptr, pair_q, pair_gid, emb, ex_ptr, ex_rows, removed, bits, k: as in
            :func:`scan_rescore`.
        entry_rows: ``(E,)`` int32 item row of each entry.  entry_col: ``(E,)`` int32 its cluster column.
        shortlist: per query vector, at most this many candidates are rescored (R): ``cand``
            is wider by the request's exclusions, so excluded items do not take short-list slots.
        dedup_scan: user mode (one query vector per request): an item's first (best pre-ranked) entry
            is kept and later copies dropped before rescoring. False (trigger mode): every copy is
            rescored against the query vector that reached it and an item keeps its best copy.

    Returns:
        ``rows (B, k)``, ``exact (B, k)``, ``pair (B, k)`` (the pair whose cluster reached the kept copy)
        and ``rescored (B,)`` distinct items rescored, as :func:`scan_rescore`.
    """
    B = req_q_ptr.size - 1
    R = cand.shape[1]
    D = emb.shape[1]
    T = bits.shape[0]
    out_rows, out_score, out_pair = _result_arrays(B, k)
    n_rescored = np.zeros(B, np.int64)
    step = (B + T - 1) // T
    for t in nb.prange(T):
        bt = bits[t]
        cap = R
        hi = np.empty(cap, np.int64)  # row
        he = np.empty(cap, np.int64)  # entry
        hq = np.empty(cap, np.int64)  # query vector
        hs = np.empty(cap, np.float32)  # exact score
        touched = np.empty(1024, np.int64)
        rowbuf = np.empty(R, np.int64)
        for b in range(t * step, min(B, (t + 1) * step)):
            n_t = 0
            for j in range(ex_ptr[b], ex_ptr[b + 1]):
                touched, n_t = _mark(bt, touched, n_t, ex_rows[j])
            need = (req_q_ptr[b + 1] - req_q_ptr[b]) * R
            if need > cap:
                cap = need
                hi = np.empty(cap, np.int64)
                he = np.empty(cap, np.int64)
                hq = np.empty(cap, np.int64)
                hs = np.empty(cap, np.float32)
            size = 0
            for q in range(req_q_ptr[b], req_q_ptr[b + 1]):
                # the short list's rows first (independent reads that overlap), then their vectors are
                # scored with each one's load started _AHEAD rows earlier
                n_c = 0
                while n_c < R and cand[q, n_c] >= 0:
                    rowbuf[n_c] = entry_rows[cand[q, n_c]]
                    n_c += 1
                for j in range(min(n_c, _AHEAD)):
                    prefetch_row(emb, rowbuf[j])
                taken = 0
                for j in range(n_c):
                    if taken == shortlist:
                        break
                    if j + _AHEAD < n_c:
                        prefetch_row(emb, rowbuf[j + _AHEAD])
                    e = cand[q, j]
                    r = rowbuf[j]
                    m = np.uint8(1 << (r & 7))
                    if (bt[r >> 3] | removed[r >> 3]) & m:
                        continue
                    if dedup_scan:
                        touched, n_t = _mark(bt, touched, n_t, r)
                    acc = np.float32(0.0)
                    for x in range(D):
                        acc += qfull[q, x] * emb[r, x]
                    hi[size], he[size], hq[size], hs[size] = r, e, q, acc
                    size += 1
                    taken += 1
            for j in range(n_t):
                bt[touched[j] >> 3] = 0
            sel, n_rescored[b] = _best_distinct(hs, hi, size, not dedup_scan, k)
            for j in range(sel.size):
                o = sel[j]
                out_rows[b, j] = hi[o]
                out_score[b, j] = hs[o]
                c = entry_col[he[o]]
                for p in range(pair_ptr[b], pair_ptr[b + 1]):  # the pair (query, column) that reached it
                    if pair_gid[p] == c and pair_q[p] == hq[o]:
                        out_pair[b, j] = p
                        break
    return out_rows, out_score, out_pair, n_rescored


@nb.njit(**_OPTS)
def route_small(q: np.ndarray, cent8: np.ndarray, scale: np.ndarray, facet_start: np.ndarray, n: int,
                joint: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`select_clusters` over the routing scores ``scale[c] * (q . cent8[c])`` of a few queries
    ``q (B, D)``, computed on the calling thread from int8 centroids ``cent8 (C, D)`` (see
    :func:`quantize_rows`) and offered to the heap as they are computed.

    Returns ``gid (B, w)`` and ``rank (B, w)`` as :func:`select_clusters` (best first, ties by lower column).

    Why not BLAS: a gemv this small is dominated by waking the BLAS thread pool, which stalls for
    milliseconds when the cores are busy (measured: 7 ms per query at 4,166 clusters on 2 loaded
    cores); large batches keep BLAS over the same dequantised centroids, so both rank clusters alike.
    int8 rows are a quarter of float32's bytes: at 1M items (4,166 x 128) 39 vs 69 us per query with
    the centroids in cache, 131 vs 291 us without.
    """
    B, D = q.shape
    C = cent8.shape[0]
    F = facet_start.size - 1
    w = n if joint else n * F
    gid = np.full((B, w), -1, np.int64)
    rank = np.full((B, w), -1, np.int64)
    hs = np.empty(w, np.float32)
    hi = np.empty(w, np.int64)
    hp = np.zeros(w, np.int64)
    groups = 1 if joint else F
    for b in range(B):
        size = 0
        for g in range(groups):
            lo = 0 if joint else facet_start[g]
            hi_c = C if joint else facet_start[g + 1]
            base = size
            cap = size + n
            # the heap block of select_clusters, written out again: as a shared helper (even inlined)
            # this loop ran 4x slower (227 vs 53 us per query at 4,166 columns)
            for c in range(lo, hi_c):
                acc = np.float32(0.0)
                for j in range(D):
                    acc += q[b, j] * np.float32(cent8[c, j])
                s = acc * scale[c]
                m = size - base  # each facet group is its own heap in hs[base:cap]
                if m < n:
                    hs[size], hi[size] = s, c
                    _sift_up(hs[base:cap], hi[base:cap], hp[base:cap], m)
                    size += 1
                elif s > hs[base]:
                    hs[base], hi[base] = s, c
                    _sift_down(hs[base:cap], hi[base:cap], hp[base:cap], m, 0)
        order = _top_unique(hs, hi, size, size)
        for j in range(size):
            gid[b, j] = hi[order[j]]
            rank[b, j] = j
    return gid, rank


@nb.njit(**_OPTS)
def _route_tree_range(q: np.ndarray, gcent: np.ndarray, radius: np.ndarray, gptr: np.ndarray, cent8: np.ndarray,
                      scale: np.ndarray, cols: np.ndarray, n: int, lo: int, hi_b: int, gid: np.ndarray,
                      rank: np.ndarray, visited: np.ndarray) -> None:
    """:func:`route_tree` for queries ``lo:hi_b`` (one chunk)."""
    D = q.shape[1]
    G = gcent.shape[0]
    ub = np.empty(G, np.float64)
    hs = np.empty(n, np.float32)
    hi = np.empty(n, np.int64)
    hp = np.zeros(n, np.int64)
    for b in range(lo, hi_b):
        norm = 0.0
        for j in range(D):
            norm += np.float64(q[b, j]) * np.float64(q[b, j])
        norm = np.sqrt(norm)
        for g in range(G):  # no column of group g scores above q . gcent[g] + |q| radius[g]
            acc = 0.0
            for j in range(D):
                acc += np.float64(q[b, j]) * np.float64(gcent[g, j])
            ub[g] = -(acc + norm * radius[g])
        order = np.argsort(ub)  # best bound first
        m = 0
        seen = 0
        for o in range(G):
            g = order[o]
            if m == n and np.float64(hs[0]) > -ub[g]:
                break  # the heap's worst beats every column left
            for c in range(gptr[g], gptr[g + 1]):
                # the same arithmetic as route_small, so a column scores alike on both paths
                acc32 = np.float32(0.0)
                for j in range(D):
                    acc32 += q[b, j] * np.float32(cent8[c, j])
                sc = acc32 * scale[c]
                if m < n:
                    hs[m], hi[m] = sc, cols[c]
                    _sift_up(hs, hi, hp, m)
                    m += 1
                elif sc > hs[0]:
                    hs[0], hi[0] = sc, cols[c]
                    _sift_down(hs, hi, hp, m, 0)
            seen += gptr[g + 1] - gptr[g]
        visited[b] = seen
        sel = _top_unique(hs, hi, m, m)
        for j in range(m):
            gid[b, j] = hi[sel[j]]
            rank[b, j] = j


@nb.njit(**_OPTS)
def route_tree(q: np.ndarray, gcent: np.ndarray, radius: np.ndarray, gptr: np.ndarray, cent8: np.ndarray,
               scale: np.ndarray, cols: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint routing through a two-level tree (:class:`mfli.serve.route_tree.RouteTree`), on this thread:
    :func:`route_small`'s choice (ties at the last slot aside) without scoring every column.

    Group ``g`` holds rows ``gptr[g]:gptr[g + 1]`` of ``cent8``/``scale`` (int8 centroids and scales,
    group-major; engine columns ``cols``); none of them scores above ``q . gcent[g] + |q| radius[g]``
    (Cauchy-Schwarz). A query ``q (B, D)`` offers the groups' columns to the heap in the order of
    that bound and stops at the first group whose bound the heap's ``n``-th best score beats.

    Returns ``gid (B, n)`` and ``rank (B, n)`` as :func:`route_small`, and ``visited (B,)`` columns scored.
    """
    B = q.shape[0]
    gid = np.full((B, n), -1, np.int64)
    rank = np.full((B, n), -1, np.int64)
    visited = np.zeros(B, np.int64)
    _route_tree_range(q, gcent, radius, gptr, cent8, scale, cols, n, 0, B, gid, rank, visited)
    return gid, rank, visited


@nb.njit(parallel=True, **_OPTS)
def route_tree_chunks(q: np.ndarray, gcent: np.ndarray, radius: np.ndarray, gptr: np.ndarray, cent8: np.ndarray,
                      scale: np.ndarray, cols: np.ndarray, n: int, n_chunks: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`route_tree` over ``n_chunks`` threads (large batches)."""
    B = q.shape[0]
    gid = np.full((B, n), -1, np.int64)
    rank = np.full((B, n), -1, np.int64)
    visited = np.zeros(B, np.int64)
    step = (B + n_chunks - 1) // n_chunks
    for t in nb.prange(n_chunks):
        _route_tree_range(q, gcent, radius, gptr, cent8, scale, cols, n, t * step, min(B, (t + 1) * step), gid,
                          rank, visited)
    return gid, rank, visited


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: ``x (C, D) ~ scale[:, None] * q8`` with ``q8`` in [-127, 127].

    Routing by these costs nothing measurable: at 1M items recall@100 moved by +0.0001 to +0.0006 at
    every (clusters, short list) point from 48 / 300 to 96 / 600.
    """
    m = np.abs(x).max(1) if x.size else np.zeros(x.shape[0], np.float32)
    scale = np.where(m > 0, m / 127.0, 1.0).astype(np.float32)
    q8 = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q8), scale


@nb.njit(**_OPTS)
def column_dots(q: np.ndarray, cent: np.ndarray, gid: np.ndarray) -> np.ndarray:
    """``(Qn, w)`` float32 ``q[i] . cent[gid[i, j]]`` (0 where ``gid`` is -1): the fast-scan lists' column
    biases. One fixed summation order for every batch size, so a query's biases do not depend on its batch."""
    Qn, w = gid.shape
    D = q.shape[1]
    out = np.zeros((Qn, w), np.float32)
    for i in range(Qn):
        for j in range(w):
            c = gid[i, j]
            if c < 0:
                continue
            acc = np.float32(0.0)
            for x in range(D):
                acc += q[i, x] * cent[c, x]
            out[i, j] = acc
    return out


@nb.njit(**_OPTS)
def pair_entries(pair_ptr: np.ndarray, pair_gid: np.ndarray, col_len: np.ndarray) -> np.ndarray:
    """``(B,)`` int64 entries in the columns of each request's pairs (``-1`` columns count 0)."""
    B = pair_ptr.size - 1
    out = np.zeros(B, np.int64)
    for b in range(B):
        n = 0
        for p in range(pair_ptr[b], pair_ptr[b + 1]):
            if pair_gid[p] >= 0:
                n += col_len[pair_gid[p]]
        out[b] = n
    return out


@nb.njit(**_OPTS)
def explain_rows(rows: np.ndarray, pair: np.ndarray, pair_gid: np.ndarray, item_ids: np.ndarray,
                 col_facet: np.ndarray, col_cluster: np.ndarray, source_of_pair: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Result rows ``(B, k)`` (-1 padding) and the pair that reached each -> item ids, facet, cluster and
    source ``(B, k)`` (-1 padding)."""
    B, k = rows.shape
    ids = np.full((B, k), -1, np.int64)
    facet = np.full((B, k), -1, np.int16)
    cluster = np.full((B, k), -1, np.int64)
    source = np.full((B, k), -1, np.int64)
    for b in range(B):
        for j in range(k):
            r = rows[b, j]
            if r < 0:
                continue
            p = max(pair[b, j], 0)
            g = pair_gid[p]
            ids[b, j] = item_ids[r]
            facet[b, j] = col_facet[g]
            cluster[b, j] = col_cluster[g]
            source[b, j] = source_of_pair[p]
    return ids, facet, cluster, source


@nb.njit(**_OPTS)
def delta_trigger_best(req_ptr: np.ndarray, vec: np.ndarray, gid: np.ndarray, doff: np.ndarray, drows: np.ndarray,
                       demb: np.ndarray, delta_ids: np.ndarray, ex_ptr: np.ndarray, ex_rows: np.ndarray, k: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Trigger mode's delta pass: per request, the best ``k`` delta items its triggers' columns hold.

    Every (trigger, column, delta item) is scored ``e_t . e_i``; an item counts once per request at its
    best score (the first trigger and column reaching it on ties), excluded items never.

    Args:
        req_ptr: ``(B + 1,)`` offsets of each request's triggers in ``vec`` and ``gid``.
        vec: ``(T, D)`` float32 trigger vectors; gid: ``(T, W)`` int64 columns each reads (-1: none).
        doff: ``(C + 1,)`` offsets of each column's delta rows in ``drows`` ``(M,)`` (delta-local rows).
        demb: ``(n, D)`` float32 delta vectors; delta_ids: ``(n,)`` their ids (ties: lower id first).
        ex_ptr, ex_rows: each request's excluded delta rows, ``ex_rows[ex_ptr[b]:ex_ptr[b + 1]]``.

    Returns:
        flat ``(request, row, score, column, trigger)``, at most ``k`` per request, best first;
        ``trigger`` indexes ``vec``.
    """
    B = req_ptr.size - 1
    n, D = demb.shape
    W = gid.shape[1]
    best = np.empty(n, np.float32)
    bcol = np.empty(n, np.int64)
    btrig = np.empty(n, np.int64)
    stamp = np.full(n, -1, np.int64)  # the request that last scored the row
    banned = np.full(n, -1, np.int64)  # the request that excludes it
    touched = np.empty(n, np.int64)
    o_req = np.empty(B * k, np.int64)
    o_row = np.empty(B * k, np.int64)
    o_score = np.empty(B * k, np.float32)
    o_col = np.empty(B * k, np.int64)
    o_trig = np.empty(B * k, np.int64)
    out = 0
    for b in range(B):
        for e in range(ex_ptr[b], ex_ptr[b + 1]):
            banned[ex_rows[e]] = b
        m = 0
        for t in range(req_ptr[b], req_ptr[b + 1]):
            for j in range(W):
                c = gid[t, j]
                if c < 0:
                    continue
                for p in range(doff[c], doff[c + 1]):
                    r = drows[p]
                    if banned[r] == b:
                        continue
                    s = np.float32(0.0)
                    for x in range(D):
                        s += vec[t, x] * demb[r, x]
                    if stamp[r] != b:
                        stamp[r] = b
                        touched[m] = r
                        m += 1
                    elif s <= best[r]:
                        continue
                    best[r] = s
                    bcol[r] = c
                    btrig[r] = t
        if m == 0:
            continue
        rows = touched[:m].copy()
        sc = np.empty(m, np.float32)
        ids = np.empty(m, np.int64)
        for q in range(m):
            sc[q] = best[rows[q]]
            ids[q] = delta_ids[rows[q]]
        order = _order_desc(sc, ids, m)
        for q in range(min(k, m)):
            r = rows[order[q]]
            o_req[out] = b
            o_row[out] = r
            o_score[out] = best[r]
            o_col[out] = bcol[r]
            o_trig[out] = btrig[r]
            out += 1
    return o_req[:out], o_row[:out], o_score[:out], o_col[:out], o_trig[:out]


@nb.njit(**_OPTS)
def delta_user_merge(q: np.ndarray, gid: np.ndarray, rank: np.ndarray, doff: np.ndarray, drows: np.ndarray,
                     demb: np.ndarray, ex_ptr: np.ndarray, ex_rows: np.ndarray, res_ids: np.ndarray,
                     res_score: np.ndarray, res_facet: np.ndarray, res_cluster: np.ndarray, res_source: np.ndarray,
                     delta_ids: np.ndarray, col_facet: np.ndarray, col_cluster: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """User mode's delta pass: the delta items of each request's routed columns, scored exactly, merged
    with the engine's results.

    Args:
        q: ``(B, D)`` float32 weighted queries; gid, rank: ``(B, w)`` routed columns, best first (-1: none),
            and their routing ranks.
        doff, drows, demb, delta_ids: each column's delta rows (delta-local), the delta's ``(n, D)``
            vectors and ids; ex_ptr, ex_rows: each request's excluded delta rows.
        res_*: the engine's ``(B, k)`` results; col_facet, col_cluster: each column's facet and cluster.

    Returns:
        ids, scores, facet, cluster, source ``(B, k)`` and ``(B,)`` delta items scored per request. An
        item is explained by the best-ranked column holding it; ties keep the engine's results first,
        then delta items by row.
    """
    B, w = gid.shape
    k = res_ids.shape[1]
    n, D = demb.shape
    stamp = np.full(n, -1, np.int64)
    banned = np.full(n, -1, np.int64)
    first = np.empty(n, np.int64)  # position in gid[b] of the first column holding the row
    touched = np.empty(n, np.int64)
    ids = res_ids.copy()
    score = res_score.copy()
    facet = res_facet.copy()
    cluster = res_cluster.copy()
    source = res_source.copy()
    cnt = np.zeros(B, np.int64)
    for b in range(B):
        for e in range(ex_ptr[b], ex_ptr[b + 1]):
            banned[ex_rows[e]] = b
        m = 0
        for p in range(w):
            c = gid[b, p]
            if c < 0:
                continue
            for i in range(doff[c], doff[c + 1]):
                r = drows[i]
                if banned[r] == b or stamp[r] == b:
                    continue
                stamp[r] = b
                first[r] = p
                touched[m] = r
                m += 1
        cnt[b] = m
        if m == 0:
            continue
        rows = np.sort(touched[:m])
        all_score = np.empty(k + m, np.float64)
        for j in range(k):
            all_score[j] = -np.float64(res_score[b, j])
        d_score = np.empty(m, np.float32)
        for j in range(m):
            r = rows[j]
            s = np.float32(0.0)
            for x in range(D):
                s += q[b, x] * demb[r, x]
            d_score[j] = s
            all_score[k + j] = -np.float64(s)
        order = np.argsort(all_score, kind="mergesort")  # stable: engine results first on ties
        for j in range(k):
            o = order[j]
            if o < k:
                ids[b, j] = res_ids[b, o]
                score[b, j] = res_score[b, o]
                facet[b, j] = res_facet[b, o]
                cluster[b, j] = res_cluster[b, o]
                source[b, j] = res_source[b, o]
            else:
                r = rows[o - k]
                c = gid[b, first[r]]
                ids[b, j] = delta_ids[r]
                score[b, j] = d_score[o - k]
                facet[b, j] = col_facet[c]
                cluster[b, j] = col_cluster[c]
                source[b, j] = rank[b, first[r]]
    return ids, score, facet, cluster, source, cnt
