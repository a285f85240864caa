"""Deep Retrieval's discrete part: path codes, path initialisation, the E-step score table and the M-step.

A path (c_1..c_D) with c_d in [0, K) is packed into one int64 code sum_d c_d * K**(D-1-d), the same
convention as :func:`mfli.model.quantizer.pack_codes`. Code -1 means "no path".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import sub

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
    batch: int = 65_536,
) -> MStepResult:
    """Re-pick each item's J paths greedily under the path-size penalty.

    Items are visited in random order; path j of item v maximises
    ``N_v [log(S_<j + s[v,c]) - log S_<j] - alpha (f(|c|+1) - f(|c|))`` with f(x) = x**4 / 4, |c| the
    number of items already placed on c in this M-step and S_<j the score of v's already chosen paths
    (for j = 0 the gain is N_v log s[v,c]); ties go to the earlier candidate. Items without candidates
    keep ``prev_codes``.

    The greedy is sequential (each choice moves the penalties the next item sees), so it stays a Python
    loop, but a lean one: path codes are renumbered densely so occupancy and the current penalty of
    every path are list lookups, and each of an item's J choices is one C-level ``map`` over its own
    candidate slice. Every float is computed with the same operations in the same order as the plain
    per-candidate loop (and ties resolved the same way), so the result is the plain loop's, ~2x faster.

    Args:
        cand_items, cand_codes, cand_scores: 1-D, grouped by item (from :meth:`ScoreTable.top`);
            scores must be finite.
        n_visits: ``(N,)`` N_v, the number of training pairs of each item.
        prev_codes: ``(N, J)`` the current assignment.
        alpha: penalty weight.
        base_counts: occupancy from items outside this assignment (placing new items into a built
            index); None = start from empty paths (the full M-step).
        batch: items whose candidates are held as Python lists at once (memory only; same result).
    """
    n_items, J = prev_codes.shape
    codes = prev_codes.copy()
    counts: dict[int, int] = dict(base_counts or {})
    has = np.zeros(n_items, dtype=bool)
    has[cand_items] = True
    kept = prev_codes[~has]
    u, cnt = np.unique(kept[kept >= 0], return_counts=True)
    for c, k in zip(u.tolist(), cnt.tolist()):
        counts[c] = counts.get(c, 0) + k
    if len(cand_items) == 0:
        return MStepResult(codes, counts)
    cand_scores = np.asarray(cand_scores, dtype=np.float64)
    if not np.isfinite(cand_scores).all():
        bad = int(np.flatnonzero(~np.isfinite(cand_scores))[0])
        raise ValueError(
            f"candidate score {cand_scores[bad]} at row {bad} (item {int(cand_items[bad])}) is not finite"
        )
    if len(cand_codes) and int(np.min(cand_codes)) < 0:
        bad = int(np.flatnonzero(np.asarray(cand_codes) < 0)[0])
        raise ValueError(
            f"candidate path code {int(cand_codes[bad])} at row {bad} is negative (-1 means no path)"
        )
    starts = np.flatnonzero(np.r_[True, cand_items[1:] != cand_items[:-1]])
    ends = np.r_[starts[1:], len(cand_items)]
    item_of = cand_items[starts]
    order = rng.permutation(len(starts))

    # dense path ids over every code the greedy can touch: candidates, and the current paths it may keep
    prev_g = prev_codes[item_of]
    cand_codes = np.asarray(cand_codes, dtype=np.int64)
    universe, dense = _dense_ids(np.concatenate([cand_codes, prev_g.ravel()]))
    cand_d = dense[: len(cand_codes)]
    dup_g = _dup_groups(cand_d, starts, ends)
    prev_d = dense[len(cand_codes) :].reshape(prev_g.shape)
    occ = [int(counts.get(c, 0)) for c in universe.tolist()]
    # the marginal penalty alpha (f(n+1) - f(n)) of each path at its current occupancy n
    pen = [alpha * ((n + 1) ** 4 - n**4) / 4.0 for n in occ]
    pen_at = pen.__getitem__
    score_a = np.maximum(cand_scores, 1e-300)
    nv_g = np.maximum(n_visits[item_of], 1)
    lens = ends - starts
    log = math.log
    neg = -math.inf  # a chosen path: never better than any finite value
    out = np.full((len(starts), J), -1, dtype=np.int64)  # dense path ids, in visiting order
    # items are visited in batches, their candidates gathered in visiting order and turned into Python
    # lists one batch at a time: the lists of a million items' candidates would take gigabytes
    for b0 in range(0, len(order), batch):
        gs = order[b0 : b0 + batch]
        offs = np.r_[0, np.cumsum(lens[gs])]
        pos = np.repeat(starts[gs] - offs[:-1], lens[gs]) + np.arange(offs[-1])
        cd_l, sc_l, offs_l = cand_d[pos].tolist(), score_a[pos].tolist(), offs.tolist()
        nv_l, dup_l, prev_l = nv_g[gs].tolist(), dup_g[gs].tolist(), prev_d[gs].tolist()
        rows: list[list[int]] = []
        for k in range(len(gs)):
            a, b = offs_l[k], offs_l[k + 1]
            chosen: list[int] = []
            if a < b:
                ds, ss = cd_l[a:b], sc_l[a:b]
                n_v = nv_l[k]
                mul = None if n_v == 1 else float(n_v).__mul__  # 1 * x == x: skip the product
                # C-level maps over the item's slice; each value comes from the same float operations, in
                # the same order, as ``n_v * log(s) - pen`` / ``n_v * (log(s_prev + s) - log(s_prev)) - pen``
                ps = list(map(pen_at, ds))  # while v is placed, only its chosen paths change penalty
                gains = map(log, ss)
                vals = list(map(sub, gains if mul is None else map(mul, gains), ps))
                s_prev = 0.0
                taken: list[int] = []
                for j in range(J):
                    if j:
                        gains = map(log(s_prev).__rsub__, map(log, map(s_prev.__add__, ss)))
                        vals = list(map(sub, gains if mul is None else map(mul, gains), ps))
                        if dup_l[k]:
                            for t, d in enumerate(ds):
                                if d in chosen:
                                    vals[t] = neg
                        else:
                            for t in taken:
                                vals[t] = neg
                    best = max(vals)
                    if best == neg:  # every candidate already chosen
                        break
                    i = vals.index(best)  # the first maximum, as a strict ">" scan keeps
                    d = ds[i]
                    chosen.append(d)
                    taken.append(i)
                    s_prev += ss[i]
                    n = occ[d] + 1
                    occ[d] = n
                    pen[d] = alpha * ((n + 1) ** 4 - n**4) / 4.0
                if len(chosen) == J:
                    rows.append(chosen)
                    continue
            # fewer candidates than J (never with the current paths among the candidates): keep old paths
            for d in prev_l[k]:
                if len(chosen) >= J:
                    break
                if d >= 0 and d not in chosen:
                    chosen.append(d)
                    n = occ[d] + 1
                    occ[d] = n
                    pen[d] = alpha * ((n + 1) ** 4 - n**4) / 4.0
            rows.append(chosen + [-1] * (J - len(chosen)))
        out[b0 : b0 + len(gs)] = np.asarray(rows, dtype=np.int64).reshape(len(rows), J)

    out = np.where(out >= 0, universe[np.maximum(out, 0)], -1)
    # an item listed in two separate runs is placed twice; its later placement wins, as in a plain loop
    it = item_of[order]
    last = len(it) - 1 - np.unique(it[::-1], return_index=True)[1]
    codes[it[last]] = out[last]
    occ_a = np.asarray(occ, dtype=np.int64)
    for c, k in zip(universe.tolist(), occ_a.tolist()):
        if k:
            counts[c] = k
    return MStepResult(codes, counts)


def _dense_ids(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes ``(n,)`` (-1 = none) -> (sorted distinct codes ``(U,)``, each code's rank ``(n,)``, -1 kept)."""
    ok = codes >= 0
    if not ok.any():
        return np.zeros(0, dtype=np.int64), np.full(len(codes), -1, dtype=np.int64)
    top = int(codes.max())
    if top <= 4 * len(codes) + (1 << 20):  # a rank table beats sorting when the code range is small
        present = np.zeros(top + 1, dtype=bool)
        present[codes[ok]] = True
        universe = np.flatnonzero(present)
        rank = np.cumsum(present) - 1
        return universe, np.where(ok, rank[np.maximum(codes, 0)], -1)
    universe, inv = np.unique(codes[ok], return_inverse=True)
    dense = np.full(len(codes), -1, dtype=np.int64)
    dense[ok] = inv
    return universe, dense


def _dup_groups(cand_d: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``(G,)`` bool: group g lists some path more than once among ``cand_d[starts[g]:ends[g]]``."""
    out = np.zeros(len(starts), dtype=bool)
    # the callers list each item's paths in increasing order or by score with distinct paths: only
    # groups that are not strictly increasing need the sort
    grp = np.repeat(np.arange(len(starts)), ends - starts)
    rising = np.diff(cand_d) > 0
    unsorted = np.unique(grp[1:][~rising & (grp[1:] == grp[:-1])])
    if len(unsorted) == 0:
        return out
    sel = np.isin(grp, unsorted)
    sg, sd = grp[sel], cand_d[sel]
    order = np.lexsort((sd, sg))
    sg, sd = sg[order], sd[order]
    same = (sg[1:] == sg[:-1]) & (sd[1:] == sd[:-1])
    out[sg[1:][same]] = True
    return out


def _knn(
    ref: np.ndarray, new: np.ndarray, n: int, exact_max: int, nlist: int, nprobe: int, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine k-NN: ``new (Nn, C)`` raw rows among L2-normalised ``ref (Nt, C)`` -> sims, rows ``(Nn, n)``."""
    d = ref.shape[1]
    if len(ref) <= exact_max:
        flat = faiss.IndexFlatIP(d)
        flat.add(ref)
        q = new.copy()
        faiss.normalize_L2(q)
        return flat.search(q, n)
    nlist = nlist or round(4 * math.sqrt(len(ref)))
    nlist = max(1, min(nlist, len(ref) // 39))  # faiss warns below 39 training points per list
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.spherical = True  # unit-norm centroids suit inner product on unit rows
    ivf.cp.niter = 10  # the lists only route the search: a rough k-means is enough
    ivf.train(ref)
    ivf.add(ref)
    ivf.nprobe = min(nprobe, nlist)
    sims = np.empty((len(new), n), dtype=np.float32)
    nb = np.empty((len(new), n), dtype=np.int64)
    flat = None
    for a in range(0, len(new), chunk):
        q = new[a : a + chunk].copy()  # normalised per batch: no second copy of all new rows
        faiss.normalize_L2(q)
        s, i = ivf.search(q, n)
        # probed lists holding fewer than n rows leave -1 slots: search those queries exactly
        miss = np.flatnonzero((i < 0).any(1))
        if len(miss):
            if flat is None:
                flat = faiss.IndexFlatIP(d)
                flat.add(ref)
            s[miss], i[miss] = flat.search(np.ascontiguousarray(q[miss]), n)
        sims[a : a + len(q)], nb[a : a + len(q)] = s, i
    return sims, nb


def neighbour_paths(
    ref_content: np.ndarray,
    ref_codes: np.ndarray,
    new_content: np.ndarray,
    n_neighbors: int,
    alpha: float,
    base_counts: dict[int, int],
    rng: np.random.Generator,
    exact_max: int = 20_000,  # trained items up to which the k-NN is exact (flat); above it faiss IVF
    nlist: int = 0,  # IVF lists; 0 = 4 * sqrt(trained items), capped at one list per 39 of them
    nprobe: int = 16,  # IVF lists scanned per new item
    chunk: int = 65_536,  # new items per search / vote batch (bounds the temporary memory)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place unseen items on the paths of their nearest trained items in content space.

    Cosine similarity (faiss inner product on L2-normalised rows). Each neighbour votes for its paths
    with weight max(sim, 0) + 1e-6; the votes play the role of s[v, c] in the same greedy as
    :func:`m_step`, penalised by the occupancy the paths already have, so a burst of near-identical
    new items spreads over its neighbours' paths instead of piling onto one.

    Up to ``exact_max`` trained items the k-NN is an exact flat search, as it always was. Above it, the
    brute-force search (Nn x Nt dot products, ~10^11 for 900k new items over 90k trained ones: minutes on
    a few cores) gives way to an inverted-file index: faiss IVFFlat with ``nlist`` spherical k-means lists
    trained on the trained rows, ``nprobe`` of them scanned per query, ~8 sqrt(Nt) dot products instead
    of Nt (on 88k 128-d rows, one core: ~45 us per query against ~360 us exact). It can miss a true
    neighbour whose list was not probed and take the next best one, which votes for nearby content's
    paths all the same; on clustered content the top-5 agree on >= 90-99 % of their rows. Queries
    whose probed lists hold fewer than n rows are searched exactly.

    Args:
        ref_content: ``(Nt, C)`` content of trained items; ref_codes ``(Nt, J)`` their path codes.
        new_content: ``(Nn, C)``.
        n_neighbors: n, neighbours per new item.
        alpha: path-size penalty weight; base_counts: current items per path code.
        rng: drives the greedy's visiting order.
        exact_max, nlist, nprobe: when and how the approximate index replaces the exact search.
        chunk: new items searched and voted at once (memory only).

    Returns:
        codes ``(Nn, J)`` (-1 where fewer than J distinct paths were voted), neighbour rows ``(Nn, n)``
        into ref_content, and their weights ``(Nn, n)`` normalised to sum to 1 per row.
    """
    ref = np.ascontiguousarray(ref_content, dtype=np.float32).copy()
    new = np.ascontiguousarray(new_content, dtype=np.float32)
    if ref.shape[1] != new.shape[1]:
        raise ValueError(f"content width differs: trained items {ref.shape[1]}, new items {new.shape[1]}")
    faiss.normalize_L2(ref)
    n = min(n_neighbors, len(ref))
    sims, nb = _knn(ref, new, n, exact_max, nlist, nprobe, chunk)
    w = np.maximum(sims, 0.0) + 1e-6
    J = ref_codes.shape[1]
    ref_codes = np.asarray(ref_codes, dtype=np.int64)
    P = max(int(ref_codes.max()) + 1, 1) if ref_codes.size else 1
    rs, cs, vs = [], [], []
    # votes s[v, c]: each row's (code, weight) pairs summed by code, in row-major key order; rows never
    # mix, so batching rows gives the same sums, in the same summation order, as one pass
    for a in range(0, len(nb), chunk):
        nbc = nb[a : a + chunk]
        rows = np.repeat(np.arange(a, a + len(nbc), dtype=np.int64), n * J)
        cand = ref_codes[nbc].reshape(len(nbc), n * J).ravel()
        ww = np.repeat(w[a : a + chunk], J, axis=1).ravel()
        ok = cand >= 0
        keys = rows[ok] * P + cand[ok]
        uk, inv = np.unique(keys, return_inverse=True)
        vs.append(np.bincount(inv, weights=ww[ok]))
        rs.append(uk // P)
        cs.append(uk % P)
    r, c, votes = np.concatenate(rs), np.concatenate(cs), np.concatenate(vs)
    prev = np.full((len(nb), J), -1, dtype=np.int64)
    res = m_step(r, c, votes, np.ones(len(nb), dtype=np.int64), prev, alpha, rng, base_counts)
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
