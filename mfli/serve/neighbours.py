"""Item neighbour lists: every item's ``K`` best items, found in its own and nearby clusters at build time.

Trigger mode (item to item) asks, for each trigger item, which items score best against it. The
learned clusters already gather similar items, so each item's list is computed once, when the engine
is built, by exact scoring inside the clusters:

- every cluster column ``c`` is paired with its ``probe`` nearest columns (itself included) by
  centroid inner product, over all facets (:func:`column_neighbours`);
- the members of ``c`` are scored exactly against the (distinct) members of those columns in one
  matrix product, and each member keeps its ``K`` best (one sorted list per item, merged over the
  ``F * m`` columns the item sits in);
- lists are kept best first (:class:`NeighbourLists`), each entry with its build-time score stored in
  one byte (:func:`quantise_scores`: 8 bits over the list's own score range, a float32 floor and step
  per item, so the dequantised scores keep the list's order and are within ``range / 510`` of the
  exact ones). A request then reads its lists' bytes instead of ``T * K`` scattered full vectors: at
  1M items a one-trigger request was ~100 scattered 512-byte reads for 100 dot products, which made
  it memory-bound (docs/benchmarks_serving.md, "Trigger mode: stored list scores"). Lists without stored scores
  (``EngineConfig.list_scores=False``, 1 byte per entry less) rescore every entry exactly.
  A neighbour always sits in one of the columns its item's columns probe, so it is stored *compactly*
  as that column's slot in the item's neighbourhood and its position inside the column,
  ``(a * probe + b) << shift | p`` in a uint16 (``a``: which of the item's ``F * m`` columns, ``b``:
  which of that column's ``probe`` nearest, ``p < 2 ** shift``, the longest column): half the bytes of
  int32 rows. A request decodes with a shift, a mask and one read of the engine's entry table (a
  trigger's column starts are looked up once per request, when first needed), about 0.9x the
  requests/s of int32 rows at 1M items. Codes that do not fit 16 bits (far slots of long columns) are
  escaped to a sorted side table; a catalogue where more than one entry in ``1 / ESCAPE_SHARE_MAX``
  would escape keeps plain ``(N, K)`` int32 rows (``EngineConfig.compact_lists=False`` always does).

Serving (:func:`trigger_lists`) is then a look-up. With stored scores, a request's triggers' lists are
merged best first through a heap of their heads (:func:`_merge_stored`: every list is already in
order), each item kept at its first (best) appearance, triggers / excluded / removed rows skipped,
until ``k`` are kept: no vector read, no de-duplication table, no sort. Without them, every entry read
is rescored exactly and offered to a per-thread slot table; a first pass over ``ceil(k / T)`` entries
per list sets a floor that cuts the rest. No routing and no scan per request either way.

Cost at build: ``sum_c |c| * |candidates(c)| * F * d`` multiply-adds (``probe`` times the members of a
column's neighbourhood); memory ``2 * N * K`` bytes (compact) or ``4 * N * K`` (rows), plus
``N * (K + 8)`` for stored scores. A list holds the
best items of the scanned neighbourhood, so its recall against exact search is bounded by how much of
an item's true neighbour set the ``probe`` nearest clusters hold (``docs/benchmarks_serving.md``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numba as nb
import numpy as np

from mfli.serve.engine_kernels import _mark, _top_unique
from mfli.serve.prefetch import prefetch_row

#: with ``neighbour_probe=None``, columns are probed until a column's neighbourhood holds about this
#: many candidates per list slot: at 1M items (480 items per column, lists of 100) that is 9 columns,
#: where 8 gave recall@100 0.976 against exact per-item neighbours and 16 gave 0.99 (the 200k check
#: in docs/benchmarks_serving.md); small catalogues have small clusters and need more of them
LIST_CANDIDATES = 40
MIN_PROBE = 8

#: compact codes: padding, and "look the row up in the side table"
PAD16 = 65535
ESC16 = 65534
#: compact list entries decoded before the scoring of a run (the entry-table reads overlap)
_DECODE_AHEAD = 16
#: compact lists are kept while at most this share of entries escape (12 side-table bytes each)
ESCAPE_SHARE_MAX = 1 / 12

_OPTS = {"nogil": True, "cache": True, "fastmath": {"reassoc", "contract", "arcp", "nsz"}}


def auto_probe(col_len: np.ndarray, neighbours: int) -> int:
    """Columns to probe per column: ``LIST_CANDIDATES * neighbours`` candidates at the mean column size,
    at least ``MIN_PROBE``, at most every column."""
    C = max(1, col_len.size)
    mean = max(1.0, float(np.mean(col_len)) if col_len.size else 1.0)
    return int(min(C, max(MIN_PROBE, np.ceil(LIST_CANDIDATES * neighbours / mean))))


def column_neighbours(cent: np.ndarray, probe: int, block: int = 1024) -> np.ndarray:
    """``(C, probe)`` int32: per column, the ``probe`` columns with the largest ``cent_c . cent_j``, itself first.

    Args:
        cent: ``(C, D)`` float32 column centroids (the engine's routing means).
    """
    C = cent.shape[0]
    probe = max(1, min(probe, C))
    out = np.empty((C, probe), np.int32)
    for s in range(0, C, block):
        sim = cent[s : s + block] @ cent.T  # (b, C)
        rows = np.arange(s, min(C, s + block))
        sim[rows - s, rows] = np.inf  # the column itself always comes first
        top = np.argpartition(-sim, probe - 1, axis=1)[:, :probe] if probe < C else np.tile(np.arange(C), (len(rows), 1))
        order = np.lexsort((top, -np.take_along_axis(sim, top, 1)), axis=1)  # best first, ties by lower column
        out[s : s + block] = np.take_along_axis(top, order, 1)
    return out


@nb.njit(**_OPTS)
def _worse(s1: float, i1: int, s2: float, i2: int) -> bool:
    """(s1, i1) ranks below (s2, i2): lower score, or equal score and higher row."""
    return s1 < s2 or (s1 == s2 and i1 > i2)


@nb.njit(**_OPTS)
def _sift_down(hs: np.ndarray, hi: np.ndarray, n: int, i: int) -> None:
    """Min-heap (worst at 0) of ``n`` (score, row) pairs: move slot ``i`` down to its place."""
    s0, r0 = hs[i], hi[i]
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and _worse(hs[c + 1], hi[c + 1], hs[c], hi[c]):
            c += 1
        if not _worse(hs[c], hi[c], s0, r0):
            break
        hs[i], hi[i] = hs[c], hi[c]
        i = c
    hs[i], hi[i] = s0, r0


@nb.njit(**_OPTS)
def _sift_up(hs: np.ndarray, hi: np.ndarray, i: int) -> None:
    s0, r0 = hs[i], hi[i]
    while i > 0:
        p = (i - 1) // 2
        if not _worse(s0, r0, hs[p], hi[p]):
            break
        hs[i], hi[i] = hs[p], hi[p]
        i = p
    hs[i], hi[i] = s0, r0


@nb.njit(**_OPTS)
def _merge_block(S: np.ndarray, qrows: np.ndarray, crows: np.ndarray, best_sc: np.ndarray,
                 best_id: np.ndarray, mark: np.ndarray) -> None:
    """Merge block scores ``S (n_q, n_c)`` of items ``qrows`` against ``crows`` into the items' lists.

    ``best_sc, best_id (N, K)``: per item its best (score, row) so far, best first (-inf / -1 padding).
    Better = higher score, then lower row. A row met again through another of the item's columns
    keeps its first score. ``mark (N,)`` uint8 scratch, all zero between calls. Per item: a min-heap
    of the block's K best new rows (O(n_c + accepted * log K)), then a merge of two sorted lists.
    """
    K = best_sc.shape[1]
    hs = np.empty(K, np.float32)
    hi = np.empty(K, np.int32)
    os_ = np.empty(K, np.float32)
    oi = np.empty(K, np.int32)
    for i in range(qrows.size):
        r = qrows[i]
        n_old = 0
        while n_old < K and best_id[r, n_old] >= 0:
            mark[best_id[r, n_old]] = 1
            n_old += 1
        mark[r] = 1
        # a full list's K-th best bounds what can still enter
        tau = best_sc[r, K - 1] if n_old == K else -np.inf
        n = 0
        for j in range(crows.size):
            s = S[i, j]
            if s < tau:
                continue
            c = crows[j]
            if mark[c]:
                continue
            if n < K:
                hs[n], hi[n] = s, c
                _sift_up(hs, hi, n)
                n += 1
            elif _worse(hs[0], hi[0], s, c):
                hs[0], hi[0] = s, c
                _sift_down(hs, hi, K, 0)
        for t in range(n_old):
            mark[best_id[r, t]] = 0
        mark[r] = 0
        # the heap popped worst first fills the new sorted run from its end
        m = n
        while m > 0:
            os_[m - 1], oi[m - 1] = hs[0], hi[0]
            m -= 1
            hs[0], hi[0] = hs[m], hi[m]
            _sift_down(hs, hi, m, 0)
        # merge old (best_*[r, :n_old]) and new (o*[:n]) runs, best first, into K slots
        a = n_old - 1
        b = n - 1
        total = min(K, n_old + n)
        # walk from the best: copy old first to a buffer since it is overwritten in place
        hs[:n_old] = best_sc[r, :n_old]
        hi[:n_old] = best_id[r, :n_old]
        a, b = 0, 0
        for t in range(total):
            if b >= n or (a < n_old and not _worse(hs[a], hi[a], os_[b], oi[b])):
                best_sc[r, t], best_id[r, t] = hs[a], hi[a]
                a += 1
            else:
                best_sc[r, t], best_id[r, t] = os_[b], oi[b]
                b += 1


def build_neighbour_lists(emb: np.ndarray, entry_rows: np.ndarray, offsets: np.ndarray, cent: np.ndarray,
                          K: int, probe: int, nbr_cols: np.ndarray | None = None,
                          with_scores: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``(N, K)`` int32: every item's ``K`` best other items (``emb`` inner product) in its clusters' neighbourhoods;
    with ``with_scores`` also their ``(N, K)`` float32 scores (-inf padding).

    Args:
        emb: ``(N, D)`` float32 full item vectors (all facets concatenated).
        entry_rows, offsets: the engine's inverted file (column ``c`` holds ``entry_rows[offsets[c]:offsets[c + 1]]``).
        cent: ``(C, D)`` float32 column centroids.
        K: list length; probe: columns scored per column (itself and its ``probe - 1`` nearest).
        nbr_cols: :func:`column_neighbours` ``(C, >= probe)`` if already computed.
    """
    N = emb.shape[0]
    K = int(K)
    best_sc = np.full((N, K), -np.inf, np.float32)
    best_id = np.full((N, K), -1, np.int32)
    mark = np.zeros(N, np.uint8)
    nbr_cols = column_neighbours(cent, probe) if nbr_cols is None else nbr_cols[:, :probe]
    for c in range(offsets.size - 1):
        q = entry_rows[offsets[c] : offsets[c + 1]]
        if q.size == 0:
            continue
        cand = np.unique(np.concatenate([entry_rows[offsets[j] : offsets[j + 1]] for j in nbr_cols[c]]))
        S = emb[q] @ emb[cand].T  # (|c|, |cand|) exact scores
        _merge_block(S, q.astype(np.int32), cand.astype(np.int32), best_sc, best_id, mark)
    return (best_id, best_sc) if with_scores else best_id


def quantise_scores(scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One byte per list entry: ``(q (N, K) uint8, lo (N,) float32, step (N,) float32)`` with entry ``j`` of
    item ``r`` read back as ``lo[r] + step[r] * q[r, j]``.

    ``lo`` is the list's lowest score and ``step`` its range over 255, so a dequantised score is within
    ``step / 2`` of the exact one and a list's order is kept (rounding is monotone; equal bytes can
    hide an order the list itself still holds). Padding (``rows < 0``) stores 0.

    Args:
        scores: ``(N, K)`` float32 lists' scores, best first; rows: ``(N, K)`` int32 (-1 padding).
    """
    valid = rows >= 0
    n = valid.sum(axis=1)
    N = scores.shape[0]
    hi = np.where(n > 0, scores[:, 0] if scores.shape[1] else 0.0, 0.0).astype(np.float64)
    last = np.maximum(n - 1, 0)
    lo = np.where(n > 0, scores[np.arange(N), last] if scores.shape[1] else 0.0, 0.0).astype(np.float64)
    step = (hi - lo) / 255.0
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(step[:, None] > 0, np.rint((scores.astype(np.float64) - lo[:, None]) / step[:, None]), 0.0)
    q = np.where(valid, np.clip(q, 0, 255), 0).astype(np.uint8)
    return q, lo.astype(np.float32), step.astype(np.float32)


@dataclass
class NeighbourLists:
    """Every item's neighbour list, best first (see the module docstring for the compact form).

    Attributes:
        codes: ``(N, K)`` uint16 compact codes (``PAD16`` padding, ``ESC16``: in the side table) or,
            when ``shift < 0``, int32 rows (-1 padding).
        shift: bits of the position inside a column (the longest column's), -1 for plain rows.
        col_nbr: ``(C, probe)`` int32 the columns every column probes (:func:`column_neighbours`).
        esc_key, esc_row: ``(n_esc,)`` sorted int64 ``r * K + j`` and int32 rows of the escaped entries.
        score_q, score_lo, score_step: stored scores (:func:`quantise_scores`): ``(N, K)`` uint8, ``(N,)``
            float32 floor and step; ``(0, 0)`` / ``(0,)`` when the lists are rescored exactly.
    """

    codes: np.ndarray
    shift: int
    col_nbr: np.ndarray
    esc_key: np.ndarray
    esc_row: np.ndarray
    score_q: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.uint8))
    score_lo: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    score_step: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def has_scores(self) -> bool:
        return self.score_q.shape[0] > 0

    @property
    def compact(self) -> bool:
        return self.shift >= 0

    @property
    def length(self) -> int:
        return int(self.codes.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.esc_key.nbytes + self.esc_row.nbytes + self.col_nbr.nbytes
                   + self.score_q.nbytes + self.score_lo.nbytes + self.score_step.nbytes)

    def without_scores(self) -> NeighbourLists:
        """The same lists, rescored exactly when served (the stored scores dropped)."""
        return NeighbourLists(self.codes, self.shift, self.col_nbr, self.esc_key, self.esc_row)

    def kernel_args(self, entry_rows: np.ndarray, offsets: np.ndarray) -> tuple:
        """The tuple the serving kernels decode with (built once: unboxing it costs at batch 1)."""
        return (self.codes, np.int64(self.shift), self.col_nbr, offsets, entry_rows, self.esc_key, self.esc_row,
                np.ascontiguousarray(self.score_q, dtype=np.uint8), np.ascontiguousarray(self.score_lo, np.float32),
                np.ascontiguousarray(self.score_step, np.float32))


@nb.njit(**_OPTS)
def _entry_positions(entry_rows: np.ndarray, offsets: np.ndarray, own: np.ndarray) -> np.ndarray:
    """``(N, W)`` int32 position of every item inside each of its own columns ``own (N, W)`` (-1: not there)."""
    N, W = own.shape
    pos = np.full((N, W), -1, np.int32)
    for c in range(offsets.size - 1):
        for e in range(offsets[c], offsets[c + 1]):
            u = entry_rows[e]
            for x in range(W):
                if own[u, x] == c and pos[u, x] < 0:
                    pos[u, x] = e - offsets[c]
                    break
    return pos


@nb.njit(**_OPTS)
def _encode(rows: np.ndarray, own: np.ndarray, col_nbr: np.ndarray, pos: np.ndarray, shift: int, escape_at: int,
            out: np.ndarray) -> int:
    """Compact codes of ``rows (N, K)`` into ``out``: the smallest ``(a * P + b) << shift | p`` that reaches
    each neighbour, ``ESC16`` from ``escape_at`` on; returns the escapes, or -1 - r when item r has a
    neighbour outside its neighbourhood (the lists were built with other columns)."""
    N, K = rows.shape
    W = own.shape[1]
    P = col_nbr.shape[1]
    n_esc = 0
    for r in range(N):
        for j in range(K):
            u = rows[r, j]
            if u < 0:
                out[r, j] = PAD16
                continue
            code = -1
            for a in range(W):
                for b in range(P):
                    col = col_nbr[own[r, a], b]
                    for x in range(W):
                        if own[u, x] == col:
                            code = ((a * P + b) << shift) | pos[u, x]
                            break
                    if code >= 0:
                        break
                if code >= 0:
                    break
            if code < 0:
                return -1 - r
            if code >= escape_at:
                out[r, j] = ESC16
                n_esc += 1
            else:
                out[r, j] = code
    return n_esc


def encode_lists(rows: np.ndarray, own: np.ndarray, col_nbr: np.ndarray, entry_rows: np.ndarray,
                 offsets: np.ndarray, compact: bool = True, escape_at: int = ESC16,
                 scores: np.ndarray | None = None) -> NeighbourLists:
    """Store ``rows (N, K)`` int32 lists (:func:`build_neighbour_lists`) compactly where that saves bytes.

    Args:
        own: ``(N, W)`` int32 every item's own columns; col_nbr: ``(C, P)`` the columns each probed.
        compact: False keeps int32 rows.  escape_at: codes from here on go to the side table (tests
            lower it to exercise the escapes).
        scores: ``(N, K)`` float32 the entries' scores, stored in a byte each (:func:`quantise_scores`);
            None: the lists are rescored exactly when served.
    """
    col_nbr = np.ascontiguousarray(col_nbr, dtype=np.int32)
    sc = {} if scores is None else dict(zip(("score_q", "score_lo", "score_step"), quantise_scores(scores, rows)))
    plain = NeighbourLists(np.ascontiguousarray(rows, dtype=np.int32), -1, col_nbr, np.zeros(0, np.int64),
                           np.zeros(0, np.int32), **sc)
    col_len = np.diff(offsets)
    longest = int(col_len.max()) if col_len.size else 0
    shift = (longest - 1).bit_length() if longest else 0
    if not compact or rows.size == 0 or longest < 1 or (1 << shift) > escape_at:
        return plain
    out = np.empty(rows.shape, np.uint16)
    pos = _entry_positions(entry_rows, offsets, np.ascontiguousarray(own, dtype=np.int32))
    n_esc = _encode(rows, own, col_nbr, pos, shift, min(escape_at, ESC16), out)
    if n_esc < 0:
        raise ValueError(f"item row {-1 - n_esc} has a neighbour outside the columns its columns probe")
    if n_esc > ESCAPE_SHARE_MAX * rows.size:
        return plain
    key = np.flatnonzero(out.reshape(-1) == ESC16).astype(np.int64)  # r * K + j, sorted
    return NeighbourLists(out, shift, col_nbr, key, rows.reshape(-1)[key].astype(np.int32), **sc)


@nb.njit(**_OPTS)
def _list_row(lists: tuple, own: np.ndarray, tr: int, j: int) -> int:
    """Row of entry ``j`` of item ``tr``'s list (-1: padding), decoding compact codes."""
    codes, shift, col_nbr, offsets, entry_rows, esc_key, esc_row = lists[:7]
    c = np.int64(codes[tr, j])
    if shift < 0:
        return c
    if c >= ESC16:
        if c == PAD16:
            return -1
        return np.int64(esc_row[np.searchsorted(esc_key, np.int64(tr) * codes.shape[1] + j)])
    ab = c >> shift
    P = col_nbr.shape[1]
    a = ab // P
    col = col_nbr[own[tr, a], ab - a * P]
    return np.int64(entry_rows[offsets[col] + (c & ((np.int64(1) << shift) - 1))])


@nb.njit(**_OPTS)
def first_invalid(lists: tuple, own: np.ndarray, n_items: int) -> int:
    """Flat index ``r * K + j`` of the first entry that does not decode to a row in ``[0, n_items)`` inside
    the engine's arrays (lists read from a file are checked once before serving), or -1 when all do."""
    codes, shift, col_nbr, offsets, _entry_rows, esc_key, esc_row = lists[:7]
    N, K = codes.shape
    W = own.shape[1]
    P = col_nbr.shape[1]
    C = col_nbr.shape[0]
    n_esc = 0
    for r in range(N):
        for j in range(K):
            c = np.int64(codes[r, j])
            if shift < 0:
                if c < -1 or c >= n_items:
                    return r * K + j
                continue
            if c == PAD16:
                continue
            if c == ESC16:
                if n_esc >= esc_key.size or esc_key[n_esc] != np.int64(r) * K + j:
                    return r * K + j
                if esc_row[n_esc] < 0 or esc_row[n_esc] >= n_items:
                    return r * K + j
                n_esc += 1
                continue
            ab = c >> shift
            a = ab // P
            if a >= W or own[r, a] < 0 or own[r, a] >= C:
                return r * K + j
            col = col_nbr[own[r, a], ab - a * P]
            if col < 0 or col >= C or offsets[col] + (c & ((np.int64(1) << shift) - 1)) >= offsets[col + 1]:
                return r * K + j
    if shift >= 0 and n_esc != esc_key.size:
        return N * K
    return -1


@nb.njit(**_OPTS)
def decode_rows(lists: tuple, own: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``(n, K)`` int32 neighbour rows of items ``rows`` (-1 padding) from :meth:`NeighbourLists.kernel_args`."""
    K = lists[0].shape[1]
    out = np.full((rows.size, K), -1, np.int32)
    for i in range(rows.size):
        for j in range(K):
            r = _list_row(lists, own, rows[i], j)
            if r < 0:
                break
            out[i, j] = r
    return out


@nb.njit(**_OPTS)
def _offer(slot: np.ndarray, hi: np.ndarray, hq: np.ndarray, hs: np.ndarray, size: int, r: int, q: int,
           s: float) -> int:
    """Keep row ``r`` once with its best score (ties: the lower trigger index); returns the new size."""
    p = slot[r]
    if p < 0:
        slot[r] = size
        hi[size], hq[size], hs[size] = r, q, s
        return size + 1
    if s > hs[p] or (s == hs[p] and q < hq[p]):
        hq[p], hs[p] = q, s
    return size


@nb.njit(**_OPTS)
def _read_lists(q0: int, q1: int, j0: int, j1: int, tau: float, trig_rows: np.ndarray, lists: tuple,
                own: np.ndarray, emb: np.ndarray, bt: np.ndarray, removed: np.ndarray, slot: np.ndarray, hi: np.ndarray,
                hq: np.ndarray, hs: np.ndarray, size: int, starts: np.ndarray, rbuf: np.ndarray, single: bool,
                ids2: np.ndarray) -> int:
    """Entries ``j0 .. j1 - 1`` of the lists of triggers ``q0 .. q1 - 1``, each scored exactly and offered
    (:func:`_offer`) until one scores below ``tau`` (lists run best first); returns the new size. (Lists
    with stored scores are merged instead, :func:`_merge_stored`.)

    Compact lists are decoded ``_DECODE_AHEAD`` entries at a time into ``rbuf`` before they are scored,
    so the entry-table reads of a run overlap instead of each delaying its own vector's read.
    ``starts ((q1 - q0) * F * m * probe,)`` int64: the triggers' neighbourhood column starts, -1 until
    first needed (reset once per request, shared by both passes). ``single``: one trigger (no de-duplication).
    ``ids2``: ``(N, 1)`` view of the item ids (:func:`_prefetch_entry`)."""
    codes, shift, col_nbr, offsets, entry_rows, esc_key, esc_row = lists[:7]
    slot2 = slot.reshape((slot.size, 1))  # a view, for _prefetch_entry
    mask = (np.int64(1) << max(shift, 0)) - 1
    K = codes.shape[1]
    W = own.shape[1]
    P = col_nbr.shape[1]
    for q in range(q0, q1):
        tr = trig_rows[q]
        if tr < 0:
            continue
        if shift < 0:  # int32 rows
            for j in range(j0, min(j1, j0 + _DECODE_AHEAD)):
                if codes[tr, j] >= 0:
                    _prefetch_entry(emb, own, ids2, slot2, codes[tr, j], single)
            for j in range(j0, j1):
                r = np.int64(codes[tr, j])
                if r < 0:
                    break
                if j + _DECODE_AHEAD < j1 and codes[tr, j + _DECODE_AHEAD] >= 0:
                    _prefetch_entry(emb, own, ids2, slot2, codes[tr, j + _DECODE_AHEAD], single)
                size, below = _offer_scored(r, q, _dot(emb, tr, r), tau, bt, removed, slot, hi, hq, hs, size, single)
                if below:
                    break
            continue
        base = (q - q0) * W * P
        j = j0
        done = False
        while j < j1 and not done:
            n = min(_DECODE_AHEAD, j1 - j)
            m = 0
            for t in range(n):
                c = np.int64(codes[tr, j + t])
                if c < ESC16:
                    ab = c >> shift
                    st = starts[base + ab]
                    if st < 0:
                        a = ab // P
                        st = offsets[col_nbr[own[tr, a], ab - a * P]]
                        starts[base + ab] = st
                    rbuf[m] = entry_rows[st + (c & mask)]
                elif c == PAD16:
                    break
                else:
                    rbuf[m] = esc_row[np.searchsorted(esc_key, np.int64(tr) * K + j + t)]
                # loads while the run's earlier rows are scored (issued as each row is decoded: decoding a
                # whole run first, as _decode_run does for the merge, was 0.8-0.9x here)
                _prefetch_entry(emb, own, ids2, slot2, rbuf[m], single)
                m += 1
            done = m < n  # padding: the list ends here
            for t in range(m):
                size, below = _offer_scored(rbuf[t], q, _dot(emb, tr, rbuf[t]), tau, bt, removed, slot, hi, hq, hs,
                                            size, single)
                if below:
                    done = True
                    break
            j += n
    return size


@nb.njit(**_OPTS)
def _prefetch_entry(emb: np.ndarray, own: np.ndarray, ids2: np.ndarray, slot2: np.ndarray, r: int, single: bool) -> None:
    """Start loading row ``r``'s vector (for exact rescoring); with one trigger also its own
    columns and id, which the answer reads for every row of the list (scattered reads of 8 MB arrays at
    1M items; 1.03-1.12x / 1.09-1.10x the requests/s at batch 1 / 64, cache-cold, two runs); with
    several, its de-duplication slot (``slot2``, ``(N, 1)``), which every offered row reads. The rows
    several triggers keep are prefetched when the answer is written (:func:`_answer_chunk`): most of
    their rows drop below the floor (docs/benchmarks_serving.md, "Trigger mode")."""
    prefetch_row(emb, r)
    if single:
        prefetch_row(own, r)
        prefetch_row(ids2, r)
    else:
        prefetch_row(slot2, r)


@nb.njit(**_OPTS)
def _dot(emb: np.ndarray, tr: int, r: int) -> float:
    """``emb[tr] . emb[r]`` in float32."""
    acc = np.float32(0.0)
    for x in range(emb.shape[1]):
        acc += emb[tr, x] * emb[r, x]
    return acc


@nb.njit(**_OPTS)
def _offer_scored(r: int, q: int, acc: float, tau: float, bt: np.ndarray, removed: np.ndarray, slot: np.ndarray,
                  hi: np.ndarray, hq: np.ndarray, hs: np.ndarray, size: int, single: bool) -> tuple[int, bool]:
    """Offer row ``r`` with score ``acc`` (from trigger ``q``) unless excluded; ``below``: it scored under ``tau``.
    ``single``: the request's only trigger, whose list holds each row once (no de-duplication)."""
    if (bt[r >> 3] | removed[r >> 3]) & np.uint8(1 << (r & 7)):
        return size, False
    if acc < tau:
        return size, True
    if single:
        hi[size], hq[size], hs[size] = r, q, acc
        return size + 1, False
    return _offer(slot, hi, hq, hs, size, r, q, acc), False


@nb.njit(**_OPTS)
def _decode_run(lists: tuple, own: np.ndarray, tr: int, j0: int, n: int, starts: np.ndarray, base: int,
                out: np.ndarray) -> int:
    """Rows of entries ``j0 .. j0 + n - 1`` of item ``tr``'s list into ``out``; returns how many there are
    (fewer at the list's padding). ``starts[base:]``: the trigger's neighbourhood column starts (-1 until
    first needed). The loads of a run are independent, so their misses overlap."""
    codes, shift, col_nbr, offsets, entry_rows, esc_key, esc_row = lists[:7]
    K = codes.shape[1]
    m = 0
    if shift < 0:
        for t in range(n):
            r = np.int64(codes[tr, j0 + t])
            if r < 0:
                break
            out[m] = r
            m += 1
        return m
    mask = (np.int64(1) << shift) - 1
    P = col_nbr.shape[1]
    for t in range(n):
        c = np.int64(codes[tr, j0 + t])
        if c < ESC16:
            ab = c >> shift
            st = starts[base + ab]
            if st < 0:
                a = ab // P
                st = offsets[col_nbr[own[tr, a], ab - a * P]]
                starts[base + ab] = st
            out[m] = entry_rows[st + (c & mask)]
        elif c == PAD16:
            break
        else:
            out[m] = esc_row[np.searchsorted(esc_key, np.int64(tr) * K + j0 + t)]
        m += 1
    return m


@nb.njit(**_OPTS)
def _ahead(s1: float, r1: int, q1: int, s2: float, r2: int, q2: int) -> bool:
    """(s1, r1, q1) comes before (s2, r2, q2): higher score, then lower row, then lower trigger."""
    return s1 > s2 or (s1 == s2 and (r1 < r2 or (r1 == r2 and q1 < q2)))


@nb.njit(**_OPTS)
def _heap_down(hs: np.ndarray, hr: np.ndarray, hq: np.ndarray, n: int, i: int) -> None:
    """Max-heap (first in :func:`_ahead` order at 0) of ``n`` list heads: move slot ``i`` down."""
    s0, r0, q0 = hs[i], hr[i], hq[i]
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and _ahead(hs[c + 1], hr[c + 1], hq[c + 1], hs[c], hr[c], hq[c]):
            c += 1
        if not _ahead(hs[c], hr[c], hq[c], s0, r0, q0):
            break
        hs[i], hr[i], hq[i] = hs[c], hr[c], hq[c]
        i = c
    hs[i], hr[i], hq[i] = s0, r0, q0


@nb.njit(**_OPTS)
def _merge_stored(q0: int, q1: int, trig_rows: np.ndarray, lists: tuple, own: np.ndarray, ids2: np.ndarray,
                  bt: np.ndarray, removed: np.ndarray, touched: np.ndarray, n_t: int, k: int, hi: np.ndarray,
                  hq: np.ndarray, hs: np.ndarray, starts: np.ndarray) -> tuple[int, int, np.ndarray, int]:
    """A request's triggers' lists (one or several) with stored scores, merged best first: the answer in
    order, no rescoring, no de-duplication table and no sort.

    Every list is already in order (stored scores never rise along a list), so a heap of the ``T``
    lists' heads yields the entries of all of them best first; an item's first appearance is its best
    trigger, later ones are skipped (its bit is set in ``bt``, recorded in ``touched`` for the reset),
    and the merge stops at the ``k``-th kept item. Each list is decoded ``_DECODE_AHEAD`` entries at a
    time; a kept row's id and columns are prefetched for the answer.

    Returns:
        ``(size, entries_read, touched, n_t)``: ``hi, hq, hs[:size]`` hold the answer (row, trigger
        index, score) in order.
    """
    codes, sq, slo, sstep = lists[0], lists[7], lists[8], lists[9]
    K = codes.shape[1]
    WP = own.shape[1] * lists[2].shape[1]
    nq = q1 - q0
    R = _DECODE_AHEAD
    buf = np.empty((nq, R), np.int64)
    fill = np.zeros(nq, np.int64)  # decoded rows in buf[i]
    head = np.zeros(nq, np.int64)  # next of them to offer
    at = np.zeros(nq, np.int64)  # list position of buf[i, 0]
    hps = np.empty(nq, np.float32)
    hpr = np.empty(nq, np.int64)
    hpq = np.empty(nq, np.int64)
    n = 0
    for i in range(nq):
        tr = trig_rows[q0 + i]
        if tr < 0:
            continue
        fill[i] = _decode_run(lists, own, tr, 0, min(R, K), starts, i * WP, buf[i])
        if fill[i] == 0:
            continue
        hps[n] = slo[tr] + sstep[tr] * np.float32(sq[tr, 0])
        hpr[n] = buf[i, 0]
        hpq[n] = i
        n += 1
    for i in range(n // 2 - 1, -1, -1):
        _heap_down(hps, hpr, hpq, n, i)
    size = 0
    read = 0
    while n > 0 and size < k:
        r, i = hpr[0], hpq[0]
        read += 1
        if not (bt[r >> 3] | removed[r >> 3]) & np.uint8(1 << (r & 7)):
            hi[size], hq[size], hs[size] = r, q0 + i, hps[0]
            size += 1
            touched, n_t = _mark(bt, touched, n_t, r)
            prefetch_row(ids2, r)
            prefetch_row(own, r)
        # the list's next entry takes its place in the heap, or the list leaves it
        tr = trig_rows[q0 + i]
        head[i] += 1
        if head[i] == fill[i] and fill[i] == R and at[i] + R < K:  # a full run used up: decode the next
            at[i] += R
            head[i] = 0
            fill[i] = _decode_run(lists, own, tr, at[i], min(R, K - at[i]), starts, i * WP, buf[i])
        if head[i] < fill[i]:  # (a short run ended at the list's padding)
            hps[0] = slo[tr] + sstep[tr] * np.float32(sq[tr, at[i] + head[i]])
            hpr[0] = buf[i, head[i]]
        else:
            n -= 1
            hps[0], hpr[0], hpq[0] = hps[n], hpr[n], hpq[n]
        _heap_down(hps, hpr, hpq, n, 0)
    return size, read, touched, n_t


@nb.njit(**_OPTS)
def _sorted_run(score: np.ndarray, rows: np.ndarray, size: int, k: int) -> np.ndarray:
    """Positions of the best ``k`` of ``score[:size]`` (ties: lower row), as :func:`_top_unique` orders them,
    by insertion sort: linear when the input is already almost in order (one trigger's list)."""
    o = np.arange(size)
    for a in range(1, size):
        x = o[a]
        s, r = score[x], rows[x]
        j = a - 1
        while j >= 0 and (score[o[j]] < s or (score[o[j]] == s and rows[o[j]] > r)):
            o[j + 1] = o[j]
            j -= 1
        o[j + 1] = x
    return o[: min(k, size)]


@nb.njit(**_OPTS)
def _write_answer(b: int, sel: np.ndarray, hi: np.ndarray, hq: np.ndarray, hs: np.ndarray, trig_rows: np.ndarray,
                  own: np.ndarray, item_ids: np.ndarray, col_facet: np.ndarray, col_cluster: np.ndarray,
                  out_ids: np.ndarray, out_score: np.ndarray, out_facet: np.ndarray, out_cluster: np.ndarray,
                  out_source: np.ndarray) -> None:
    """Row ``b`` of the answer from positions ``sel`` of ``hi / hq / hs`` (row, trigger index, score), each
    item explained by a column it shares with its trigger (else its own first one); the rest of the row is
    padding."""
    W = own.shape[1]
    for j in range(sel.size):
        o = sel[j]
        r = hi[o]
        tr = trig_rows[hq[o]]
        c = own[r, 0]
        found = False
        for u in range(W):
            for v in range(W):
                if own[r, u] == own[tr, v]:
                    c = own[r, u]
                    found = True
                    break
            if found:
                break
        out_ids[b, j] = item_ids[r]
        out_score[b, j] = hs[o]
        out_facet[b, j] = col_facet[c]
        out_cluster[b, j] = col_cluster[c]
        out_source[b, j] = item_ids[tr]
    for j in range(sel.size, out_ids.shape[1]):  # padding (the outputs come uninitialised)
        out_ids[b, j] = -1
        out_score[b, j] = -np.inf
        out_facet[b, j] = -1
        out_cluster[b, j] = -1
        out_source[b, j] = -1


@nb.njit(**_OPTS)
def _answer_chunk(b0: int, b1: int, bt: np.ndarray, slot: np.ndarray, req_q_ptr: np.ndarray, trig_rows: np.ndarray,
                  lists: tuple, emb: np.ndarray, own: np.ndarray, ex_ptr: np.ndarray, ex_rows: np.ndarray,
                  exclude_triggers: bool, removed: np.ndarray, k: int, item_ids: np.ndarray,
                  col_facet: np.ndarray, col_cluster: np.ndarray, out_ids: np.ndarray, out_score: np.ndarray,
                  out_facet: np.ndarray, out_cluster: np.ndarray, out_source: np.ndarray,
                  n_scored: np.ndarray, entries: np.ndarray) -> None:
    """Requests ``b0 .. b1 - 1`` of :func:`trigger_lists` on one thread (scratch ``bt``, ``slot``)."""
    K = lists[0].shape[1]
    W = own.shape[1]
    cap = K
    hi = np.empty(cap, np.int64)
    hq = np.empty(cap, np.int64)
    hs = np.empty(cap, np.float32)
    touched = np.empty(1024, np.int64)
    WP = W * lists[2].shape[1]
    starts = np.empty(WP, np.int64)
    rbuf = np.empty(_DECODE_AHEAD, np.int64)
    ids2 = item_ids.reshape((item_ids.size, 1))  # a view, for _prefetch_entry
    stored = lists[7].shape[0] > 0
    for b in range(b0, b1):
        entries[b] = (req_q_ptr[b + 1] - req_q_ptr[b]) * K
        n_t = 0
        for j in range(ex_ptr[b], ex_ptr[b + 1]):
            touched, n_t = _mark(bt, touched, n_t, ex_rows[j])
        n_trig = 0
        for q in range(req_q_ptr[b], req_q_ptr[b + 1]):
            if trig_rows[q] >= 0:
                n_trig += 1
                if exclude_triggers:
                    touched, n_t = _mark(bt, touched, n_t, trig_rows[q])
        if n_trig * K > cap:
            cap = n_trig * K
            hi = np.empty(cap, np.int64)
            hq = np.empty(cap, np.int64)
            hs = np.empty(cap, np.float32)
        h = min(K, (k + n_trig - 1) // max(n_trig, 1))
        q0, q1 = req_q_ptr[b], req_q_ptr[b + 1]
        if (q1 - q0) * WP > starts.size:
            starts = np.empty((q1 - q0) * WP, np.int64)
        starts[: (q1 - q0) * WP] = -1
        single = n_trig == 1  # a list holds each row once: no de-duplication (the slots stay untouched)
        if stored:  # lists with stored scores: one merge gives the answer in order
            size, read, touched, n_t = _merge_stored(q0, q1, trig_rows, lists, own, ids2, bt, removed, touched,
                                                     n_t, k, hi, hq, hs, starts)
            for j in range(n_t):
                bt[touched[j] >> 3] = 0
            n_scored[b] = read
            _write_answer(b, np.arange(size), hi, hq, hs, trig_rows, own, item_ids, col_facet, col_cluster, out_ids,
                          out_score, out_facet, out_cluster, out_source)
            continue
        size = _read_lists(q0, q1, 0, h, -np.inf, trig_rows, lists, own, emb, bt, removed, slot, hi, hq, hs, 0,
                           starts, rbuf, single, ids2)
        if h < K:
            tau = -np.inf
            if size >= k:
                tau = np.partition(hs[:size], size - k)[size - k]
                # build-time and request-time dot products may differ in the last bits
                tau -= 1e-5 * max(1.0, abs(tau))
            size = _read_lists(q0, q1, h, K, tau, trig_rows, lists, own, emb, bt, removed, slot, hi, hq, hs,
                               size, starts, rbuf, single, ids2)
        for j in range(n_t):
            bt[touched[j] >> 3] = 0
        if not single:
            for j in range(size):
                slot[hi[j]] = -1
        n_scored[b] = size
        # one trigger: its list order is (nearly) the exact order, so an insertion sort is ~linear
        if n_trig == 1:
            sel = _sorted_run(hs, hi, size, k)
        else:
            sel = _top_unique(hs, hi, size, k)
        if not single:  # the kept rows' ids and columns, loaded ahead of the loop that reads them
            for j in range(sel.size):
                prefetch_row(ids2, hi[sel[j]])
                prefetch_row(own, hi[sel[j]])
        _write_answer(b, sel, hi, hq, hs, trig_rows, own, item_ids, col_facet, col_cluster, out_ids, out_score,
                      out_facet, out_cluster, out_source)


@nb.njit(**_OPTS)
def lookup_rows(sorted_ids: np.ndarray, sorted_rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``(n,)`` int64 rows of item ``ids`` (-1: unknown) from the index's sorted id table: one compiled call,
    where numpy's searchsorted / compare / where cost ~13 us at batch 1."""
    out = np.full(ids.size, -1, np.int64)
    n = sorted_ids.size
    for i in range(ids.size):
        p = np.searchsorted(sorted_ids, ids[i])
        if p < n and sorted_ids[p] == ids[i]:
            out[i] = sorted_rows[p]
    return out


@nb.njit(parallel=True, **_OPTS)
def trigger_lists(sorted_ids: np.ndarray, sorted_rows: np.ndarray, lists: tuple, emb: np.ndarray, own: np.ndarray,
                  item_ids: np.ndarray, col_facet: np.ndarray, col_cluster: np.ndarray, bits: np.ndarray,
                  slots: np.ndarray, req_q_ptr: np.ndarray, trig_ids: np.ndarray, ex_ptr: np.ndarray,
                  ex_rows: np.ndarray, exclude_triggers: bool, removed: np.ndarray, k: int, o_ids: np.ndarray,
                  o_score: np.ndarray, o_facet: np.ndarray, o_cluster: np.ndarray, o_source: np.ndarray,
                  n_scored: np.ndarray, entries: np.ndarray) -> None:
    """Trigger-mode answers from the neighbour lists: each request's triggers' lists, merged best first
    by their stored scores (:func:`_merge_stored`), or rescored exactly when the lists store none.

    Exact rescoring takes two passes per request: the first ``ceil(k / T)`` entries of each of its
    ``T`` triggers' lists give a floor ``tau`` (the k-th best distinct score so far, which the final
    k-th best can only exceed); the rest of each list is read until an entry scores below ``tau``
    (lists are sorted best first, so nothing after it can enter). At ``T = 16`` this scores about a
    fifth of the ``T * K`` entries; the merge reads about ``k`` entries whatever ``T``.

    The arguments that stay the same from request to request come first (the engine binds them once);
    the outputs come last, allocated by the caller: at batch 1 that costs less than returning six new
    arrays (docs/benchmarks_serving.md, "Trigger mode: one request at a time").

    Args:
        sorted_ids, sorted_rows: the index's id -> row table (:func:`lookup_rows`, inside the call: one
            compiled call per batch).
        lists: :meth:`NeighbourLists.kernel_args` (lists best first).  emb: ``(N, D)`` float32 full vectors.
        own: ``(N, F * m)`` int32 every item's own cluster columns (for explanations).
        item_ids: ``(N,)`` row -> id; col_facet, col_cluster: ``(C,)`` column -> facet, cluster id.
        bits: ``(T, N // 8 + 1)`` uint8 and ``slots`` ``(T, N)`` int32 (-1) per-thread scratch, restored
            after each request (one chunk of requests per thread).
        req_q_ptr: ``(B + 1,)`` request b's triggers are ``trig_ids[req_q_ptr[b]:req_q_ptr[b + 1]]``
            (ids unknown to the index are skipped).
        ex_ptr, ex_rows: rows request b never returns (``ex_rows[ex_ptr[b]:ex_ptr[b + 1]]``);
            ``exclude_triggers``: nor its triggers.
        removed: ``(N // 8 + 1,)`` uint8 bitset of rows no request returns.

    Outputs, written whole (padding included):
        ``(B, k)`` item ids (-1 padding), scores (float32 best ``e_t . e_i`` over the request's triggers;
        ties: lower row), facet (int16) and cluster of the column explaining the item (a cluster it
        shares with its best trigger, else its own first one), source (that trigger's id);
        ``n_scored (B,)`` distinct candidates scored exactly (list entries merged, with stored scores) and
        ``entries (B,)`` list entries the request may read (its triggers times the list length).
    """
    B = req_q_ptr.size - 1
    T = bits.shape[0]
    trig_rows = lookup_rows(sorted_ids, sorted_rows, trig_ids)
    step = (B + T - 1) // T
    for t in nb.prange(T):
        _answer_chunk(t * step, min(B, (t + 1) * step), bits[t], slots[t], req_q_ptr, trig_rows, lists, emb, own,
                      ex_ptr, ex_rows, exclude_triggers, removed, k, item_ids, col_facet, col_cluster,
                      o_ids, o_score, o_facet, o_cluster, o_source, n_scored, entries)


@nb.njit(**_OPTS)
def trigger_lists_serial(sorted_ids: np.ndarray, sorted_rows: np.ndarray, lists: tuple, emb: np.ndarray,
                         own: np.ndarray, item_ids: np.ndarray, col_facet: np.ndarray, col_cluster: np.ndarray,
                         bits: np.ndarray, slots: np.ndarray, req_q_ptr: np.ndarray, trig_ids: np.ndarray,
                         ex_ptr: np.ndarray, ex_rows: np.ndarray, exclude_triggers: bool, removed: np.ndarray, k: int,
                         o_ids: np.ndarray, o_score: np.ndarray, o_facet: np.ndarray, o_cluster: np.ndarray,
                         o_source: np.ndarray, n_scored: np.ndarray, entries: np.ndarray) -> None:
    """:func:`trigger_lists` on the calling thread (scratch row 0): a batch-1 request skips ~15 us of
    thread-pool launch."""
    trig_rows = lookup_rows(sorted_ids, sorted_rows, trig_ids)
    _answer_chunk(0, req_q_ptr.size - 1, bits[0], slots[0], req_q_ptr, trig_rows, lists, emb, own, ex_ptr, ex_rows,
                  exclude_triggers, removed, k, item_ids, col_facet, col_cluster, o_ids, o_score, o_facet, o_cluster,
                  o_source, n_scored, entries)
