"""Split-and-merge rebalancing of a freshly built index (REFERENCE.md 1.4), and the routing map it leaves.

After a full build, per facet:

1. **split**: a cluster with more than ``cap`` (B_upp) items is split by faiss k-means on its members
   into ``ceil(size / target)`` parts; every member goes to its nearest centroid. A part still above
   the cap is split again. (k-means on the members' embeddings equals k-means on their residuals
   ``e - e_hat`` for a single-path cluster: all members share ``e_hat``, and k-means is translation
   invariant. The centroids are stored in embedding space so routing needs no reconstruction.)
   When k-means cannot separate the members (e.g. near-identical points) the cluster is cut in two at
   the median of its first principal direction, expressed as two centroids so routing stays
   "nearest centroid".
2. **merge**: a cluster with fewer than ``floor`` (B_low) items is merged into its nearest cluster of
   the same facet (distance between member means), preferring a target whose size stays within the
   cap. Rounds repeat until no cluster is below the floor. A forced merge (no target with room) makes
   a cluster above the cap; it is then cut at the median (both halves are >= floor because
   ``cap >= 2 * floor``) in the next round.

Afterwards ``floor <= |cluster| <= cap`` for every cluster, with two documented exceptions: a facet
holding fewer than ``floor`` entries in total ends as one cluster below the floor, and a cluster of
identical points cannot be split (reported in ``RebalanceResult.report``).

The :class:`RebalanceMap` records how an original packed code path reaches its final cluster, as a
small graph of nodes: a *leaf* is a final cluster, a *redirect* is a merged cluster pointing to its
target, a *split* node sends an item to its nearest child centroid. :meth:`RebalanceMap.route` walks
it, so new items are routed exactly as the build routed its members (see :mod:`mfli.index.delta`).
Final cluster ids are dense, ``0..C_f-1`` per facet.

Example::

    result = rebalance(index, RebalanceConfig(floor=32, cap=512))
    index2, maps = result.index, result.maps
    print(result.before[0].gini, result.after[0].gini)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mfli.index.balance import BalanceStats, balance_stats
from mfli.index.inverted import MultiFacetIndex
from mfli.index.rebalance_map import LEAF, REDIRECT, SPLIT, RebalanceMap, nearest_centroid

_EXACT_KNN = 8192  # merge neighbours are searched exactly up to this many clusters, by IVF above


@dataclass
class RebalanceConfig:
    """Split-and-merge bounds. Scale them to the catalogue (the paper's clusters hold 1e2..1e4 items)."""

    floor: int = 16  # B_low: clusters below this are merged
    cap: int = 256  # B_upp: clusters above this are split; must be >= 2 * floor
    target: int | None = None  # part size aimed at when splitting; default (floor + cap) // 2
    kmeans_iters: int = 20  # faiss k-means iterations per split
    seed: int = 0  # k-means seed (offset by node id, so results are deterministic)
    knn: int = 8  # neighbour clusters examined per small cluster in a merge round
    max_rounds: int = 10  # split+merge rounds before giving up (reported, never silent)

    def validated(self) -> RebalanceConfig:
        """Check the bounds are feasible; returns self."""
        if self.floor < 1:
            raise ValueError(f"floor must be >= 1, got {self.floor}")
        if self.cap < 2 * self.floor:
            raise ValueError(
                f"cap={self.cap} < 2 * floor={2 * self.floor}: a cluster just above the cap could not be "
                "split into two parts that are both above the floor"
            )
        t = self.part_size
        if not self.floor <= t <= self.cap:
            raise ValueError(f"target={t} must lie in [floor={self.floor}, cap={self.cap}]")
        return self

    @property
    def part_size(self) -> int:
        return self.target if self.target is not None else (self.floor + self.cap) // 2


@dataclass
class RebalanceResult:
    """Output of :func:`rebalance`.

    Attributes:
        index: the rebalanced index (dense cluster ids, ``maps`` attached).
        maps: one :class:`RebalanceMap` per facet (also ``index.maps``).
        before, after: per-facet :class:`~mfli.index.balance.BalanceStats`.
        report: per-facet counts (splits, merges, forced merges, rounds, exceptions).
    """

    index: MultiFacetIndex
    maps: list[RebalanceMap]
    before: list[BalanceStats]
    after: list[BalanceStats]
    report: list[dict]


class _FacetRebalancer:
    """Split-and-merge state for one facet. Entries are (item row, path slot) pairs."""

    def __init__(self, paths: np.ndarray, emb: np.ndarray, cfg: RebalanceConfig) -> None:
        # paths: (N, m) packed path ids; emb: (N, d)
        self.cfg = cfg
        self.emb = np.ascontiguousarray(emb, dtype=np.float32)
        self.m = paths.shape[1]
        flat = paths.reshape(-1)
        order = np.argsort(flat, kind="stable")
        self.path_ids, starts, counts = np.unique(flat[order], return_index=True, return_counts=True)
        self.bisect: set[int] = set()  # leaves made oversize by a forced merge: cut at the median
        self.stuck: set[int] = set()  # leaves that cannot be split (identical points)
        self.report = {"splits": 0, "bisections": 0, "merges": 0, "forced_merges": 0, "rounds": 0,
                       "unsplittable": 0, "below_floor_facet": False}
        order = order.astype(np.int64)
        # initial leaves, one per occupied path, created in path order (node id = path index)
        sums = np.add.reduceat(self.emb[order // self.m], starts, axis=0).astype(np.float64) if starts.size else []
        P = int(starts.size)
        # node table (python lists: it grows one node at a time during splits)
        self.kind: list[int] = [LEAF] * P  # LEAF / REDIRECT / SPLIT
        self.target: list[int] = [-1] * P  # leaf: cluster id (set at the end); redirect: target node
        self.cstart: list[int] = [-1] * P  # split: children are nodes [cstart, cend)
        self.cend: list[int] = [-1] * P
        self.centroid: list[np.ndarray | None] = [None] * P  # what a split parent compares items with
        self.size: list[int] = [int(c) for c in counts]
        self.sum: list[np.ndarray] = list(sums)  # float64 sum of member embeddings (for merge distances)
        self.members: dict[int, list[np.ndarray]] = {  # leaf -> entry ids (item row * m + slot)
            i: [order[s : s + c]] for i, (s, c) in enumerate(zip(starts, counts))}

    # -------------------------------------------------------------- node helpers
    def _new_leaf(self, entries: np.ndarray, centroid: np.ndarray | None) -> int:
        n = len(self.kind)
        self.kind.append(LEAF)
        self.target.append(-1)
        self.cstart.append(-1)
        self.cend.append(-1)
        self.centroid.append(centroid)
        self.size.append(int(entries.size))
        self.sum.append(self.emb[entries // self.m].astype(np.float64).sum(0))
        self.members[n] = [entries]
        return n

    def _entries(self, n: int) -> np.ndarray:
        parts = self.members[n]
        if len(parts) > 1:
            parts[:] = [np.concatenate(parts)]
        return parts[0]

    def _find(self, n: int) -> int:
        root = n
        while self.kind[root] == REDIRECT:
            root = self.target[root]
        while self.kind[n] == REDIRECT and self.target[n] != root:  # path compression
            self.target[n], n = root, self.target[n]
        return root

    def _leaves(self) -> list[int]:
        return [n for n, k in enumerate(self.kind) if k == LEAF]

    # -------------------------------------------------------------- split
    def _kmeans_parts(self, x: np.ndarray, node: int) -> np.ndarray | None:
        import faiss

        S = x.shape[0]
        k = min(S, max(2, math.ceil(S / self.cfg.part_size)))
        km = faiss.Kmeans(x.shape[1], k, niter=self.cfg.kmeans_iters, seed=self.cfg.seed + node,
                          min_points_per_centroid=1, max_points_per_centroid=S, verbose=False)
        km.train(x)
        cent = km.centroids
        counts = np.bincount(nearest_centroid(x, cent), minlength=k)
        cent = cent[counts > 0]  # an unused centroid changes nobody's nearest centroid
        if cent.shape[0] < 2:
            return None
        return np.ascontiguousarray(cent, dtype=np.float32)

    @staticmethod
    def _median_parts(x: np.ndarray) -> np.ndarray | None:
        """Two centroids whose bisector is the median hyperplane of the first principal direction."""
        mu = x.mean(0, dtype=np.float64)
        xc = x.astype(np.float64) - mu
        _, vecs = np.linalg.eigh(xc.T @ xc)
        v = vecs[:, -1]
        proj = np.sort(xc @ v)
        h = proj.size // 2
        gaps = np.flatnonzero(proj[1:] > proj[:-1])  # cut between two distinct values closest to the median
        if gaps.size == 0:
            return None
        g = gaps[np.argmin(np.abs(gaps + 1 - h))]
        t = (proj[g] + proj[g + 1]) / 2
        spread = max(float(proj[-1] - proj[0]) / 4, 1e-3)
        p = mu + t * v
        return np.stack([p - spread * v, p + spread * v]).astype(np.float32)

    def _split(self, node: int) -> list[int]:
        ent = self._entries(node)
        x = self.emb[ent // self.m]
        cent = None
        if node not in self.bisect:
            cent = self._kmeans_parts(x, node)
        assign = nearest_centroid(x, cent) if cent is not None else None
        if assign is None or np.bincount(assign).max() == ent.size:
            cent = self._median_parts(x)
            assign = nearest_centroid(x, cent) if cent is not None else None
            if assign is None or np.bincount(assign, minlength=2).min() == 0:
                self.stuck.add(node)
                self.report["unsplittable"] += 1
                return []
            self.report["bisections"] += 1
        else:
            self.report["splits"] += 1
        children = [self._new_leaf(ent[assign == j], cent[j]) for j in range(cent.shape[0])]
        self.kind[node] = SPLIT
        self.cstart[node], self.cend[node] = children[0], children[-1] + 1
        del self.members[node]
        self.bisect.discard(node)
        return children

    def split_oversize(self) -> None:
        queue = [n for n in self._leaves() if self.size[n] > self.cfg.cap and n not in self.stuck]
        while queue:
            n = queue.pop()
            for c in self._split(n):
                if self.size[c] > self.cfg.cap:
                    queue.append(c)

    # -------------------------------------------------------------- merge
    def _neighbour_index(self, cents: np.ndarray):
        """kNN structure over cluster centroids: exact below ``_EXACT_KNN`` clusters, else IVF
        (deterministic: seeded k-means; a missed true neighbour only means the next nearest is used)."""
        import faiss

        d = cents.shape[1]
        if cents.shape[0] <= _EXACT_KNN:
            index = faiss.IndexFlatL2(d)
        else:
            nlist = int(4 * math.sqrt(cents.shape[0]))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
            index.cp.seed = self.cfg.seed
            index.cp.niter = 10
            index.train(cents)
            index.nprobe = 16
        index.add(cents)
        return index

    def merge_small(self) -> None:
        floor, cap = self.cfg.floor, self.cfg.cap
        kind, size = self.kind, self.size
        while True:
            leaves = np.array(self._leaves(), dtype=np.int64)
            sizes = np.array([size[n] for n in leaves], dtype=np.int64)
            is_small = sizes < floor
            small = leaves[is_small]
            if small.size == 0 or leaves.size < 2:
                if small.size:
                    self.report["below_floor_facet"] = True
                return
            cents = (np.stack([self.sum[n] for n in leaves]) / sizes[:, None]).astype(np.float32)
            index = self._neighbour_index(cents)
            k = min(self.cfg.knn + 1, leaves.size)
            _, nbrs = index.search(cents[is_small], k)
            nbr_nodes = np.where(nbrs >= 0, leaves[np.maximum(nbrs, 0)], -1).tolist()
            for i in np.lexsort((small, sizes[is_small])).tolist():  # smallest first
                a = int(small[i])
                if kind[a] != LEAF or size[a] >= floor:
                    continue
                b_room = b_any = None
                for b in nbr_nodes[i]:
                    if b < 0:
                        continue
                    if kind[b] != LEAF:
                        b = self._find(b)
                        if kind[b] != LEAF:
                            continue
                    if b == a:
                        continue
                    if b_any is None:
                        b_any = b
                    if size[a] + size[b] <= cap:
                        b_room = b
                        break
                if b_room is None:
                    b_room = self._nearest_leaf(a, leaves, cents, need_room=True)
                if b_room is None:
                    b_room = b_any if b_any is not None else self._nearest_leaf(a, leaves, cents, need_room=False)
                    self.report["forced_merges"] += 1
                if b_room is not None:
                    self._merge(a, b_room)

    def _nearest_leaf(self, a: int, leaves: np.ndarray, cents: np.ndarray, need_room: bool) -> int | None:
        """Nearest live leaf to ``a`` by a full scan (fallback when no kNN neighbour fits)."""
        self.report["full_scans"] = self.report.get("full_scans", 0) + 1
        ca = (self.sum[a] / self.size[a]).astype(np.float32)
        for j in np.argsort(((cents - ca) ** 2).sum(1), kind="stable").tolist():
            b = self._find(int(leaves[j]))
            if b == a or self.kind[b] != LEAF:
                continue
            if not need_room or self.size[a] + self.size[b] <= self.cfg.cap:
                return b
        return None

    def _merge(self, a: int, b: int) -> None:
        self.members[b].extend(self.members.pop(a))
        self.size[b] += self.size[a]
        self.sum[b] = self.sum[b] + self.sum[a]
        self.kind[a], self.target[a] = REDIRECT, b
        self.report["merges"] += 1
        if self.size[b] > self.cfg.cap:
            self.bisect.add(b)
        self.bisect.discard(a)

    # -------------------------------------------------------------- driver
    def run(self) -> None:
        for r in range(self.cfg.max_rounds):
            self.report["rounds"] = r + 1
            self.split_oversize()
            self.merge_small()
            if not any(self.size[n] > self.cfg.cap and n not in self.stuck for n in self._leaves()):
                break
        leaves = self._leaves()
        self.report["violations"] = int(sum(
            1 for n in leaves if not (self.cfg.floor <= self.size[n] <= self.cfg.cap)))

    def finish(self, N: int, M: int, L: int) -> tuple[RebalanceMap, np.ndarray]:
        """Dense cluster ids, the map, and assignments ``(N, m)``."""
        leaves = self._leaves()
        d = self.emb.shape[1]
        assign = np.full(N * self.m, -1, dtype=np.int64)
        cents = np.zeros((len(leaves), d), np.float32)
        for cid, n in enumerate(leaves):
            self.target[n] = cid
            assign[self._entries(n)] = cid
            cents[cid] = self.sum[n] / max(self.size[n], 1)
        for n in range(len(self.kind)):
            if self.kind[n] == REDIRECT:
                self.target[n] = self._find(n)
        node_cent = np.zeros((len(self.kind), d), np.float32)
        for n, c in enumerate(self.centroid):
            if c is not None:
                node_cent[n] = c
        mp = RebalanceMap(
            M=M, L=L, paths_per_item=self.m,
            path_ids=self.path_ids.astype(np.int64),
            path_node=np.arange(self.path_ids.size, dtype=np.int64),  # leaves were created in path order
            node_kind=np.array(self.kind, np.int8),
            node_target=np.array(self.target, np.int64),
            node_child_start=np.array(self.cstart, np.int64),
            node_child_end=np.array(self.cend, np.int64),
            node_centroid=node_cent,
            cluster_ids=np.arange(len(leaves), dtype=np.int64),
            cluster_centroids=cents,
        )
        return mp, assign.reshape(N, self.m)


def rebalance(index: MultiFacetIndex, config: RebalanceConfig | None = None) -> RebalanceResult:
    """Split-and-merge a freshly built index so ``floor <= |cluster| <= cap`` in every facet.

    Args:
        index: a build from :meth:`MultiFacetIndex.build` (cluster ids are code paths).
        config: bounds and k-means settings.

    Returns:
        :class:`RebalanceResult` with the new index (dense cluster ids, same items, rows and embeddings),
        the per-facet maps, balance statistics before/after and a report.
    """
    cfg = (config or RebalanceConfig()).validated()
    if index.rebalanced:
        raise ValueError("index is already rebalanced: rebalance the full build (cluster ids = code paths)")
    maps, assigns, before, after, report = [], [], [], [], []
    N = index.n_items
    for f in range(index.n_facets):
        before.append(balance_stats(index.facets[f].sizes()))
        fr = _FacetRebalancer(index.assignments[:, f, :], index.embeddings[:, f, :], cfg)
        fr.run()
        mp, assign = fr.finish(N, index.M, index.L)
        maps.append(mp)
        assigns.append(assign)
        report.append(dict(fr.report, facet=index.facet_names[f], floor=cfg.floor, cap=cfg.cap))
    assignments = np.stack(assigns, axis=1)
    meta = dict(index.meta, rebalance={"floor": cfg.floor, "cap": cfg.cap, "target": cfg.part_size,
                                       "seed": cfg.seed})
    new = MultiFacetIndex.from_assignments(index.item_ids, index.embeddings, assignments, index.static_score,
                                           maps, index.facet_names, index.M, index.L, True, meta)
    for f in range(new.n_facets):
        after.append(balance_stats(new.facets[f].sizes()))
    return RebalanceResult(new, maps, before, after, report)
