"""Exact maximum-inner-product search over multi-facet embeddings: the quality reference for retrieval.

``score(q, i) = sum_f w_f * q_f . e_f(i)`` (facet weights default 1), top-k per query with the
query's seen items excluded, scanning the catalogue in chunks so memory stays ``O(B * chunk)``.

Example::

    ids, scores = exact_search(user_emb, item_emb, k=100, item_ids=items, exclude=histories)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mfli.index.inverted import _as_numpy
from mfli.index.lookup import lookup_sorted


def exact_search(
    queries,
    embeddings,
    k: int,
    item_ids=None,
    weights: Sequence[float] | None = None,
    exclude: Sequence[Sequence[int]] | None = None,
    chunk: int = 65536,
    removed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by summed per-facet inner products.

    Args:
        queries: ``(B, F, d)`` query embeddings.
        embeddings: ``(N, F, d)`` item embeddings.
        k: results per query.
        item_ids: ``(N,)`` int64 ids (default ``0..N-1``).
        weights: ``(F,)`` facet weights w_f (default 1).
        exclude: B lists of item ids never to return (e.g. seen items).
        chunk: items scored at a time.
        removed: ``(N,)`` bool, rows never to return (tombstones).

    Returns:
        ``ids (B, k)`` int64 (-1 padding when fewer than k items qualify) and ``scores (B, k)`` float32
        (-inf padding), best first; ties go to the lower row.
    """
    Q = _as_numpy(queries).astype(np.float32)
    E = _as_numpy(embeddings).astype(np.float32, copy=False)
    if Q.ndim != 3 or E.ndim != 3 or Q.shape[1:] != E.shape[1:]:
        raise ValueError(f"queries (B, F, d) {Q.shape} and embeddings (N, F, d) {E.shape} do not match")
    B, F, d = Q.shape
    N = E.shape[0]
    ids = np.arange(N, dtype=np.int64) if item_ids is None else np.asarray(item_ids, dtype=np.int64)
    if ids.shape != (N,):
        raise ValueError(f"item_ids must be (N={N},), got {ids.shape}")
    w = np.ones(F, np.float32) if weights is None else np.asarray(weights, np.float32)
    if w.shape != (F,):
        raise ValueError(f"weights must have F={F} entries, got {w.shape}")
    # weighting the query once makes the score one matmul over concatenated facets
    qw = (Q * w[None, :, None]).reshape(B, F * d)
    ex_req = ex_row = np.zeros(0, np.int64)
    if exclude is not None:
        if len(exclude) != B:
            raise ValueError(f"exclude must hold one list per query ({B}), got {len(exclude)}")
        lens = np.array([len(e) for e in exclude], np.int64)
        if lens.sum():
            order = np.argsort(ids, kind="stable")
            flat = np.concatenate([np.asarray(e, np.int64).reshape(-1) for e in exclude])
            rows = lookup_sorted(ids[order], order.astype(np.int64), flat)
            req = np.repeat(np.arange(B, dtype=np.int64), lens)
            ex_req, ex_row = req[rows >= 0], rows[rows >= 0]
            o = np.argsort(ex_row, kind="stable")
            ex_req, ex_row = ex_req[o], ex_row[o]
    k_eff = min(k, N)
    best_s = np.full((B, 0), -np.inf, np.float32)
    best_r = np.zeros((B, 0), np.int64)
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        sc = qw @ E[s:e].reshape(e - s, F * d).T  # (B, chunk)
        lo, hi = np.searchsorted(ex_row, [s, e])
        sc[ex_req[lo:hi], ex_row[lo:hi] - s] = -np.inf
        if removed is not None:
            sc[:, removed[s:e]] = -np.inf
        kk = min(k_eff, e - s)
        part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk] if kk < e - s else np.broadcast_to(
            np.arange(e - s), sc.shape)
        cand_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], 1)
        cand_r = np.concatenate([best_r, part + s], 1)
        # keep the k best; order by score desc then row asc so ties are deterministic
        o = np.lexsort((cand_r, -cand_s), axis=1)[:, :k_eff] if cand_s.shape[1] else cand_r
        best_s = np.take_along_axis(cand_s, o, 1)
        best_r = np.take_along_axis(cand_r, o, 1)
    out_ids = np.full((B, k), -1, np.int64)
    out_s = np.full((B, k), -np.inf, np.float32)
    ok = np.isfinite(best_s)
    out_ids[:, :k_eff] = np.where(ok, ids[best_r], -1)
    out_s[:, :k_eff] = best_s
    return out_ids, out_s


class ExactSearcher:
    """Exact search bound to one catalogue (convenience wrapper of :func:`exact_search`).

    Args:
        item_ids: ``(N,)``; embeddings: ``(N, F, d)``; weights: ``(F,)`` facet weights.
    """

    def __init__(self, item_ids, embeddings, weights: Sequence[float] | None = None, chunk: int = 65536) -> None:
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.embeddings = np.ascontiguousarray(_as_numpy(embeddings), dtype=np.float32)
        self.weights = weights
        self.chunk = chunk

    def search(self, queries, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """``(B, F, d)`` queries -> ``ids (B, k)``, ``scores (B, k)``."""
        return exact_search(queries, self.embeddings, k, self.item_ids, self.weights, exclude, self.chunk)
