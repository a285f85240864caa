"""Trigger mode (the paper's item-to-item serving): which clusters a request's triggers point at, and
how the chosen clusters' items are interleaved (see :mod:`mfli.serve.retriever` for the whole walk).

Per request and facet the trigger items' clusters (all path slots) form a histogram;
:func:`draw_clusters` picks K of them with a weight each, the chosen clusters' items are scored
(:mod:`mfli.serve.scoring`) and :func:`round_robin` interleaves them: the item at rank r of a cluster
of weight w gets key ``r / w`` (ties: higher similarity, then lower cluster position).
"""

from __future__ import annotations

import numpy as np

from mfli.serve.merge import FacetList, first_occurrence
from mfli.serve.scoring import topk


def draw_clusters(g_req: np.ndarray, g_count: np.ndarray, g_last: np.ndarray, B: int, K: int, sampling: str,
                  rng: np.random.Generator) -> np.ndarray:
    """Weight of each histogram group (0 = not chosen). Groups are sorted by (request, cluster).

    Args:
        g_req, g_count, g_last: per group (request, cluster) its request, trigger-path count and most
            recent trigger position.
        K: clusters drawn per request; sampling: "multinomial" (K draws, weight = draws) or "topk"
            (the K most frequent, weight = count; ties: more recent trigger, then lower cluster).
    """
    G = g_req.size
    weight = np.zeros(G, np.int64)
    req_start = np.searchsorted(g_req, np.arange(B))
    if sampling == "topk":
        if G == 0:
            return weight
        order = np.lexsort((np.arange(G), -g_last, -g_count, g_req))
        rank = np.arange(G) - req_start[g_req[order]]
        chosen = order[rank < K]
        weight[chosen] = g_count[chosen]
        return weight
    u = rng.random((B, K))  # drawn for every request, so the stream does not depend on the data
    if G == 0:
        return weight
    n_g = np.bincount(g_req, minlength=B)
    local = np.arange(G) - req_start[g_req]
    csum = np.cumsum(g_count)
    before = np.concatenate([[0], csum])[req_start][g_req]  # count total before this request's groups
    total = np.bincount(g_req, weights=g_count, minlength=B).astype(np.int64)
    cdf = np.full((B, int(n_g.max())), np.inf)
    cdf[g_req, local] = (csum - before) / total[g_req]
    idx = (cdf[:, None, :] <= u[:, :, None]).sum(-1)  # inverse CDF: (B, K) group within request
    has = n_g > 0
    drawn = (req_start[:, None] + idx)[has].reshape(-1)
    weight += np.bincount(drawn, minlength=G)
    return weight


def round_robin(B: int, k: int, m: int, n_rows: int, p_score: np.ndarray, p_rows: np.ndarray, s_req: np.ndarray,
                s_pos: np.ndarray, s_w: np.ndarray, s_trig: np.ndarray) -> FacetList:
    """Rank candidates inside their cluster, interleave a request's clusters by ``rank / weight``.

    Args:
        m: paths per item; n_rows: size of the row space (de-duplication keys).
        p_score, p_rows: ``(S, W)`` scored candidates, one row per chosen cluster (-inf / -1: padding or
            excluded), from :meth:`mfli.serve.scoring.ClusterScorer.score`.
        s_req, s_pos, s_w, s_trig: per chosen cluster (sorted by request): request, cluster
            position, weight, explaining trigger.

    Returns:
        the facet's ordered list, ``(B, k)`` per field.
    """
    S = s_req.size
    if S == 0:
        return FacetList.empty(B, k)
    # 1. torch.topk ranks each chosen cluster's row;
    # an item kept through another cluster (top-m paths) frees a slot: m * k per cluster suffice
    kk = min(k * m, p_score.shape[1])
    top, vals = topk(p_score, kk)  # column j of the result is rank j inside the cluster
    rows_c = np.take_along_axis(p_rows, top, 1)
    # 2. place each request's clusters side by side and sort every row by (rank / weight, -score, cluster)
    local = np.arange(S) - np.searchsorted(s_req, s_req)
    Kc = int(local.max()) + 1
    shape = (B, Kc * kk)
    cols = (local[:, None] * kk + np.arange(kk)[None, :]).reshape(-1)
    reqs = np.repeat(s_req, kk)
    rr = np.full(shape, np.inf)
    rr[reqs, cols] = (np.arange(kk)[None, :] / s_w[:, None]).reshape(-1)
    sc = np.full(shape, -np.inf, np.float32)
    sc[reqs, cols] = vals.reshape(-1)
    rr[~np.isfinite(sc)] = np.inf  # a cluster with fewer than kk live items leaves holes
    src = np.full(shape, -1, np.int64)
    src[reqs, cols] = np.repeat(np.arange(S), kk)
    rw = np.full(shape, -1, np.int64)
    rw[reqs, cols] = rows_c.reshape(-1)
    cp = np.full(shape, np.iinfo(np.int64).max)
    cp[reqs, cols] = np.repeat(s_pos, kk)
    order = np.lexsort((cp, -sc, rr), axis=1)
    sc, src, rw = (np.take_along_axis(a, order, 1) for a in (sc, src, rw))
    valid = np.isfinite(sc)
    # 3. an item reached through two of its paths keeps its first place
    bidx = np.broadcast_to(np.arange(B)[:, None], shape)
    key = (bidx * (n_rows + 1) + np.where(valid, rw, n_rows)).reshape(-1)
    valid &= first_occurrence(key).reshape(shape)
    slot = np.cumsum(valid, axis=1) - 1
    keep = valid & (slot < k)
    bb, jj = np.nonzero(keep)
    out_rows = np.full((B, k), -1, np.int64)
    out_score = np.full((B, k), -np.inf, np.float32)
    out_pos = np.full((B, k), -1, np.int64)
    out_trig = np.full((B, k), -1, np.int64)
    ss = slot[keep]
    s_of = src[bb, jj]
    out_rows[bb, ss] = rw[bb, jj]
    out_score[bb, ss] = sc[bb, jj]
    out_pos[bb, ss] = s_pos[s_of]
    out_trig[bb, ss] = s_trig[s_of]
    return FacetList(out_rows, out_score, out_pos, out_trig)
