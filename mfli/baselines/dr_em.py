"""Deep Retrieval's discrete part: path codes, path initialisation, the E-step score table and the M-step.

A path (c_1..c_D) with c_d in [0, K) is packed into one int64 code sum_d c_d * K**(D-1-d), the same
convention as :func:`mfli.model.quantizer.pack_codes`. Code -1 means "no path".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np


def pack_paths(paths: np.ndarray, n_nodes: int) -> np.ndarray:
    """Paths ``(..., D)`` -> codes ``(...)`` int64; any -1 node gives code -1."""
    paths = np.asarray(paths, dtype=np.int64)
    D = paths.shape[-1]
    w = n_nodes ** np.arange(D - 1, -1, -1, dtype=np.int64)
    codes = (paths * w).sum(-1)
    return np.where((paths < 0).any(-1), -1, codes)


def unpack_paths(codes: np.ndarray, n_nodes: int, n_layers: int) -> np.ndarray:
    """Codes ``(...)`` -> paths ``(..., D)`` int64; code -1 gives a row of -1."""
    codes = np.asarray(codes, dtype=np.int64)
    w = n_nodes ** np.arange(n_layers - 1, -1, -1, dtype=np.int64)
    paths = (np.maximum(codes, 0)[..., None] // w) % n_nodes
    return np.where(codes[..., None] < 0, -1, paths)


def random_paths(n_items: int, n_paths: int, n_nodes: int, n_layers: int, rng: np.random.Generator) -> np.ndarray:
    """The paper's initialisation: J distinct uniformly random paths per item -> codes ``(N, J)``."""
    n_total = n_nodes**n_layers
    if n_paths > n_total:
        raise ValueError(f"n_paths={n_paths} exceeds the {n_total} paths of a K={n_nodes}, D={n_layers} structure")
    codes = rng.integers(0, n_total, size=(n_items, n_paths))
    # redraw the (rare) duplicates inside a row until every row is distinct
    for _ in range(100):
        s = np.sort(codes, axis=1)
        dup = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if not dup.any():
            break
        codes[dup] = rng.integers(0, n_total, size=(int(dup.sum()), n_paths))
    return codes.astype(np.int64)


def kmeans_paths(
    content: np.ndarray, n_paths: int, n_nodes: int, n_layers: int, seed: int
) -> np.ndarray:
    """Content initialisation: residual k-means (faiss) over D layers -> codes ``(N, J)``.

    Layer d clusters the residual left by layers < d into K centroids. The J paths of an item share
    the first D-1 nodes and differ in the last one: the J nearest last-layer centroids, so similar
    content starts on shared paths while the E-step can still move it.
    """
    x = np.ascontiguousarray(content, dtype=np.float32)
    n = len(x)
    if n < n_nodes or n_paths > n_nodes:
        raise ValueError(f"kmeans path init needs >= K={n_nodes} items and J <= K (got {n} items, J={n_paths})")
    res = x.copy()
    nodes = np.zeros((n, n_layers), dtype=np.int64)
    last = None
    for d in range(n_layers):
        km = faiss.Kmeans(x.shape[1], n_nodes, niter=20, seed=seed + d, verbose=False)
        km.train(res)
        k = n_paths if d == n_layers - 1 else 1
        _, idx = km.index.search(res, k)
        nodes[:, d] = idx[:, 0]
        if d == n_layers - 1:
            last = idx
        res = res - km.centroids[idx[:, 0]]
    paths = np.repeat(nodes[:, None, :], n_paths, axis=1)
    paths[:, :, -1] = last
    return pack_paths(paths, n_nodes)


class ScoreTable:
    """E-step accumulator s[v, c] = sum over item v's training pairs of p(c | x), plus N_v.

    Rows are appended per batch and compacted (summed by key) when the buffer grows, so memory stays
    bounded by the number of distinct (item, path) pairs.
    """

    def __init__(self, n_items: int, n_total_paths: int, compact_every: int = 2_000_000) -> None:
        self.n_items, self.P = n_items, n_total_paths
        self._keys: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []
        self._buffered = 0
        self._compact_every = compact_every
        self.n_visits = np.zeros(n_items, dtype=np.int64)

    def add(self, items: np.ndarray, codes: np.ndarray, probs: np.ndarray) -> None:
        """items ``(B,)``, codes ``(B, b)`` candidate path codes, probs ``(B, b)`` p(c | x)."""
        np.add.at(self.n_visits, items, 1)
        keys = (items[:, None].astype(np.int64) * self.P + codes).ravel()
        self._keys.append(keys)
        self._vals.append(probs.astype(np.float64).ravel())
        self._buffered += keys.size
        if self._buffered >= self._compact_every:
            self._compact()

    def _compact(self) -> None:
        if len(self._keys) <= 1:
            return
        keys, vals = np.concatenate(self._keys), np.concatenate(self._vals)
        uk, inv = np.unique(keys, return_inverse=True)
        self._keys, self._vals = [uk], [np.bincount(inv, weights=vals)]
        self._buffered = uk.size

    def top(
        self, top_s: int, keep_codes: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The top_s candidate paths of each item: (items, codes, scores), 1-D, grouped by item.

        ``keep_codes (N, J)``: each item's current paths stay candidates whatever their rank, so the
        M-step can always leave an item where it is (otherwise beams that concentrate on a few
        crowded paths leave the penalty nowhere to send it).
        """
        self._compact()
        if not self._keys:
            e = np.zeros(0, dtype=np.int64)
            return e, e, np.zeros(0)
        keys, vals = self._keys[0], self._vals[0]
        items, codes = keys // self.P, keys % self.P
        order = np.lexsort((-vals, items))
        items, codes, vals = items[order], codes[order], vals[order]
        start = np.searchsorted(items, items, side="left")
        keep = (np.arange(len(items)) - start) < top_s
        if keep_codes is not None:
            keep |= (codes[:, None] == keep_codes[items]).any(1)
        return items[keep], codes[keep], vals[keep]


@dataclass
class MStepResult:
    """codes ``(N, J)`` int64 (-1 = none); counts: items per used path code."""

    codes: np.ndarray
    counts: dict[int, int]


def m_step(
    cand_items: np.ndarray,
    cand_codes: np.ndarray,
    cand_scores: np.ndarray,
    n_visits: np.ndarray,
    prev_codes: np.ndarray,
    alpha: float,
    rng: np.random.Generator,
    base_counts: dict[int, int] | None = None,
) -> MStepResult:
    """Re-pick each item's J paths greedily under the path-size penalty.

    Items are visited in random order; path j of item v maximises
    ``N_v [log(S_<j + s[v,c]) - log S_<j] - alpha (f(|c|+1) - f(|c|))`` with f(x) = x**4 / 4, |c| the
    number of items already placed on c in this M-step and S_<j the score of v's already chosen paths
    (for j = 0 the gain is N_v log s[v,c]). Items without candidates keep ``prev_codes``.

    Args:
        cand_items, cand_codes, cand_scores: 1-D, grouped by item (from :meth:`ScoreTable.top`).
        n_visits: ``(N,)`` N_v, the number of training pairs of each item.
        prev_codes: ``(N, J)`` the current assignment.
        alpha: penalty weight.
        base_counts: occupancy from items outside this assignment (placing new items into a built
            index); None = start from empty paths (the full M-step).
    """
    n_items, J = prev_codes.shape
    codes = prev_codes.copy()
    counts: dict[int, int] = dict(base_counts or {})
    has = np.zeros(n_items, dtype=bool)
    has[cand_items] = True
    for c in prev_codes[~has].ravel().tolist():
        if c >= 0:
            counts[c] = counts.get(c, 0) + 1
    if len(cand_items) == 0:
        return MStepResult(codes, counts)
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
        # fewer candidates than J (never with the current paths among the candidates): keep old paths
        for c in prev_codes[v].tolist():
            if len(chosen) >= J:
                break
            if c >= 0 and c not in chosen:
                chosen.append(c)
                counts[c] = counts.get(c, 0) + 1
        codes[v, : len(chosen)] = chosen
        codes[v, len(chosen) :] = -1
    return MStepResult(codes, counts)


def neighbour_paths(
    ref_content: np.ndarray,
    ref_codes: np.ndarray,
    new_content: np.ndarray,
    n_neighbors: int,
    alpha: float,
    base_counts: dict[int, int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place unseen items on the paths of their nearest trained items in content space.

    Cosine similarity (faiss inner product on L2-normalised rows). Each neighbour votes for its paths
    with weight max(sim, 0) + 1e-6; the votes play the role of s[v, c] in the same greedy as
    :func:`m_step`, penalised by the occupancy the paths already have, so a burst of near-identical
    new items spreads over its neighbours' paths instead of piling onto one.

    Args:
        ref_content: ``(Nt, C)`` content of trained items; ref_codes ``(Nt, J)`` their path codes.
        new_content: ``(Nn, C)``.
        alpha: path-size penalty weight; base_counts: current items per path code.

    Returns:
        codes ``(Nn, J)`` (-1 where fewer than J distinct paths were voted), neighbour rows ``(Nn, n)``
        into ref_content, and their weights ``(Nn, n)`` normalised to sum to 1 per row.
    """
    ref = np.ascontiguousarray(ref_content, dtype=np.float32).copy()
    new = np.ascontiguousarray(new_content, dtype=np.float32).copy()
    if ref.shape[1] != new.shape[1]:
        raise ValueError(f"content width differs: trained items {ref.shape[1]}, new items {new.shape[1]}")
    faiss.normalize_L2(ref)
    faiss.normalize_L2(new)
    index = faiss.IndexFlatIP(ref.shape[1])
    index.add(ref)
    n = min(n_neighbors, len(ref))
    sims, nb = index.search(new, n)
    w = np.maximum(sims, 0.0) + 1e-6
    J = ref_codes.shape[1]
    rows = np.repeat(np.arange(len(new)), n * J)
    cand = ref_codes[nb].reshape(len(new), n * J).ravel()
    ww = np.repeat(w, J, axis=1).ravel()
    ok = cand >= 0
    P = int(cand.max()) + 1 if ok.any() else 1
    keys = rows[ok].astype(np.int64) * P + cand[ok]
    uk, inv = np.unique(keys, return_inverse=True)
    votes = np.bincount(inv, weights=ww[ok])
    r, c = uk // P, uk % P
    prev = np.full((len(new), J), -1, dtype=np.int64)
    res = m_step(r, c, votes, np.ones(len(new), dtype=np.int64), prev, alpha, rng, base_counts)
    return res.codes, nb, w / w.sum(1, keepdims=True)


def path_stats(codes: np.ndarray, n_total_paths: int) -> dict:
    """Occupancy of the paths: used paths, items per used path (max/mean), Gini over used paths."""
    c = codes[codes >= 0]
    if c.size == 0:
        return {"used_paths": 0, "max_items": 0, "mean_items": 0.0, "gini": 0.0, "total_paths": n_total_paths}
    _, cnt = np.unique(c, return_counts=True)
    s = np.sort(cnt).astype(np.float64)
    n = len(s)
    gini = float((2 * np.arange(1, n + 1) - n - 1) @ s / (n * s.sum())) if n > 1 else 0.0
    return {
        "used_paths": int(n),
        "max_items": int(s[-1]),
        "mean_items": float(s.mean()),
        "gini": gini,
        "total_paths": int(n_total_paths),
    }
