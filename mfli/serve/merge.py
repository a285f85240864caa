"""Merging per-facet ranked lists into one: weighted round robin over the facet quotas, de-duplicated.

Position p of list i gets key ``p / quota_i`` (ties: lower list index first), so the order of the
merged columns is the same for every request; an item reached through two facets or paths keeps its
first place. ``merge="sum"`` feeds a single pooled list (quota 1), which this keeps as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FacetList:
    """Ordered results ``(B, k)`` of one facet (or of the pooled facets): combined rows (-1 padding),
    score, cluster position, source (trigger item or beam path rank)."""

    rows: np.ndarray
    score: np.ndarray
    cpos: np.ndarray
    source: np.ndarray

    @classmethod
    def empty(cls, B: int, k: int) -> FacetList:
        none = np.full((B, k), -1, np.int64)
        return cls(none, np.full((B, k), -np.inf, np.float32), none, none)


@dataclass
class Merged:
    """The merged top-k: ``(B, k)`` combined rows (-1 padding), score, facet, cluster position, source."""

    rows: np.ndarray
    score: np.ndarray
    facet: np.ndarray
    cpos: np.ndarray
    source: np.ndarray


def first_occurrence(keys: np.ndarray) -> np.ndarray:
    """Boolean mask of the first occurrence of each key, in array order."""
    if keys.size == 0:
        return np.zeros(0, bool)
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    first = np.ones(keys.size, bool)
    first[1:] = ks[1:] != ks[:-1]
    out = np.empty(keys.size, bool)
    out[order] = first
    return out


def merge_quota(lists: list[FacetList | None], k: int, quotas: np.ndarray, n_rows: int,
                facets: list[np.ndarray] | None = None) -> Merged | None:
    """Interleave ordered lists by weighted round robin, de-duplicate, keep k.

    Args:
        lists: one per facet (None: the facet is off), each ``(B, W_i)``.
        quotas: ``(len(lists),)`` normalised shares.
        n_rows: size of the row space (de-duplication keys).
        facets: per list, the ``(B, W_i)`` facet of each entry when a list pools facets; default the list's index.

    Returns:
        the merged ``(B, k)`` arrays, or None when no list is on.
    """
    live = [i for i, lst in enumerate(lists) if lst is not None and quotas[i] > 0]
    if not live:
        return None
    B = lists[live[0]].rows.shape[0]
    W = max(lists[i].rows.shape[1] for i in live)

    def stack(mats: list[np.ndarray], fill) -> np.ndarray:  # (n_lists, B, W)
        out = []
        for a in mats:
            if a.shape[1] < W:
                a = np.concatenate([a, np.full((B, W - a.shape[1]), fill, a.dtype)], 1)
            out.append(a)
        return np.stack(out)

    n_i = np.array([lists[i].rows.shape[1] for i in live])
    li = np.repeat(np.arange(len(live)), W)
    pi = np.tile(np.arange(W), len(live))
    ok = pi < n_i[li]
    li, pi = li[ok], pi[ok]
    order = np.lexsort((li, pi / quotas[np.array(live)][li]))
    li, pi = li[order], pi[order]
    rows = stack([lists[i].rows for i in live], -1)[li, :, pi].T  # (B, n_cols)
    score = stack([lists[i].score for i in live], -np.inf)[li, :, pi].T
    cpos = stack([lists[i].cpos for i in live], -1)[li, :, pi].T
    source = stack([lists[i].source for i in live], -1)[li, :, pi].T
    if facets is None:
        fac = np.broadcast_to(np.array(live)[li][None, :], rows.shape)
    else:
        fac = stack([facets[j] for j in live], -1)[li, :, pi].T
    valid = rows >= 0
    bidx = np.broadcast_to(np.arange(B)[:, None], rows.shape)
    keyflat = (bidx * (n_rows + 1) + np.where(valid, rows, n_rows)).reshape(-1)
    valid &= first_occurrence(keyflat).reshape(rows.shape)
    slot = np.cumsum(valid, axis=1) - 1
    keep = valid & (slot < k)
    bb, jj = np.nonzero(keep)
    ss = slot[keep]
    out = Merged(np.full((B, k), -1, np.int64), np.full((B, k), -np.inf, np.float32), np.full((B, k), -1, np.int16),
                 np.full((B, k), -1, np.int64), np.full((B, k), -1, np.int64))
    out.rows[bb, ss] = rows[bb, jj]
    out.score[bb, ss] = score[bb, jj]
    out.facet[bb, ss] = fac[bb, jj]
    out.cpos[bb, ss] = cpos[bb, jj]
    out.source[bb, ss] = source[bb, jj]
    return out


def merge_best(ids: np.ndarray, scores: np.ndarray, owner: np.ndarray, B: int, k: int) -> np.ndarray:
    """Per-query result rows -> one list per request: each item once at its best score, top k.

    Args:
        ids, scores: ``(Q, K)`` per-query results (-1 padding); owner: ``(Q,)`` request of each query.

    Returns:
        ``(B, k)`` int64 ids, best first (ties: lower id), -1 padding.
    """
    K = ids.shape[1]
    req, i, s = np.repeat(owner, K), ids.reshape(-1), scores.reshape(-1).astype(np.float64)
    ok = i >= 0
    req, i, s = req[ok], i[ok], s[ok]
    o = np.lexsort((-s, i, req))  # by request, item, best score first
    req, i, s = req[o], i[o], s[o]
    first = np.ones(i.size, bool)
    first[1:] = (req[1:] != req[:-1]) | (i[1:] != i[:-1])
    req, i, s = req[first], i[first], s[first]
    o = np.lexsort((i, -s, req))
    req, i = req[o], i[o]
    pos = np.arange(req.size) - np.searchsorted(req, req)
    keep = pos < k
    out = np.full((B, k), -1, np.int64)
    out[req[keep], pos[keep]] = i[keep]
    return out
