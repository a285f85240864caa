"""The rebalance map of one facet: how an original code path reaches its final cluster(s).

The data type :func:`mfli.index.split_merge.rebalance` produces and every later consumer reads: the
index keeps one per facet, delta assignment routes new items through it, beam serving reads the
clusters a path reaches. A path is kept (LEAF: its own cluster), merged (REDIRECT: into a target) or
split (SPLIT: children compared by nearest centroid).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mfli.index.lookup import lookup_sorted

LEAF, REDIRECT, SPLIT = 0, 1, 2  # node kinds
_SHORTLIST_FROM = 64  # above this many centroids, nearest_centroid shortlists with a matmul first
_SHORTLIST = 16

__all__ = ["LEAF", "REDIRECT", "SPLIT", "RebalanceMap", "nearest_centroid"]


def nearest_centroid(x: np.ndarray, centroids: np.ndarray, block: int = 1 << 22) -> np.ndarray:
    """Index of the nearest centroid (squared L2) for each row; first one on ties.

    Computed from explicit differences, row by row, so a row's answer never depends on which other
    rows are in the batch: routing a single new item reproduces exactly the build's assignment.

    Args:
        x: ``(n, d)``.
        centroids: ``(k, d)``.
    """
    x = np.asarray(x, dtype=np.float32)
    c = np.asarray(centroids, dtype=np.float32)
    n, k = x.shape[0], c.shape[0]
    out = np.empty(n, dtype=np.int64)
    if k == 1:
        out[:] = 0
        return out
    if k <= _SHORTLIST_FROM:
        step = max(1, block // max(1, k * c.shape[1]))
        for s in range(0, n, step):
            diff = x[s : s + step, None, :] - c[None, :, :]
            out[s : s + step] = (diff * diff).sum(-1).argmin(1)
        return out
    # many centroids: a BLAS pass (whose rounding may depend on the batch) only shortlists candidates;
    # the decision is the exact per-row difference on the shortlist, sorted so ties keep the first index
    c2 = (c * c).sum(1)
    step = max(1, block // k)
    for s in range(0, n, step):
        xs = x[s : s + step]
        approx = c2[None, :] - 2 * (xs @ c.T)
        short = np.sort(np.argpartition(approx, _SHORTLIST - 1, axis=1)[:, :_SHORTLIST], axis=1)
        diff = xs[:, None, :] - c[short]
        out[s : s + step] = np.take_along_axis(short, (diff * diff).sum(-1).argmin(1)[:, None], 1)[:, 0]
    return out


@dataclass(eq=False)
class RebalanceMap:
    """Routing of one facet: original packed path id -> final cluster id (see the module docstring).

    Attributes:
        M, L: path packing; paths_per_item: ``m`` (top-m paths per item).
        path_ids: ``(P,)`` sorted packed paths seen in the full build.
        path_node: ``(P,)`` root node of each path.
        node_kind: ``(K,)`` int8, LEAF / REDIRECT / SPLIT.
        node_target: ``(K,)`` leaf: cluster id; redirect: target node; split: -1.
        node_child_start, node_child_end: ``(K,)`` children of a split node are node ids in [start, end).
        node_centroid: ``(K, d)`` float32, the centroid a split parent compares items against.
        cluster_ids: ``(C,)`` sorted final cluster ids.
        cluster_centroids: ``(C, d)`` float32 mean embedding of each final cluster's members; routes
            paths never seen in the build (to the nearest centroid) and scores clusters in beam serving.
    """

    M: int
    L: int
    paths_per_item: int
    path_ids: np.ndarray
    path_node: np.ndarray
    node_kind: np.ndarray
    node_target: np.ndarray
    node_child_start: np.ndarray
    node_child_end: np.ndarray
    node_centroid: np.ndarray
    cluster_ids: np.ndarray
    cluster_centroids: np.ndarray
    _reach: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    _ARRAYS = ("path_ids", "path_node", "node_kind", "node_target", "node_child_start", "node_child_end",
               "node_centroid", "cluster_ids", "cluster_centroids")

    @classmethod
    def identity(cls, cluster_ids: np.ndarray, offsets: np.ndarray, rows: np.ndarray, emb: np.ndarray,
                 M: int, L: int, m: int) -> RebalanceMap:
        """Map of an un-rebalanced build: every occupied path is its own cluster (id = path id).

        Args:
            cluster_ids, offsets, rows: the facet's CSR (:class:`~mfli.index.inverted.FacetCSR`; its
                cluster ids are the occupied paths).
            emb: ``(N, d)`` the facet's embeddings (for cluster centroids).
        """
        P = int(cluster_ids.size)
        d = emb.shape[1]
        counts = np.diff(offsets)
        sizes = np.maximum(counts, 1)
        sums = np.zeros((P, d), np.float64)
        nonempty = counts > 0
        if nonempty.any():  # rows are grouped by cluster, so a segmented sum needs no scatter
            sums[nonempty] = np.add.reduceat(emb[rows].astype(np.float64), offsets[:-1][nonempty], axis=0)
        return cls(
            M, L, m,
            path_ids=cluster_ids.copy(),
            path_node=np.arange(P, dtype=np.int64),
            node_kind=np.full(P, LEAF, np.int8),
            node_target=cluster_ids.copy(),
            node_child_start=np.full(P, -1, np.int64),
            node_child_end=np.full(P, -1, np.int64),
            node_centroid=np.zeros((P, d), np.float32),
            cluster_ids=cluster_ids.copy(),
            cluster_centroids=(sums / sizes[:, None]).astype(np.float32),
        )

    @property
    def n_clusters(self) -> int:
        return int(self.cluster_ids.size)

    def route(self, paths: np.ndarray, emb: np.ndarray) -> np.ndarray:
        """Final cluster of each (path, embedding) pair.

        Known paths follow the node graph (split: nearest child centroid, redirect: target). A path
        the full build never saw goes to the cluster with the nearest centroid, which is where the
        build's merge step would have put a one-item cluster (it merges small clusters into the
        nearest one by centroid distance).

        Args:
            paths: ``(n,)`` packed path ids.
            emb: ``(n, d)`` the items' embeddings in this facet.

        Returns:
            ``(n,)`` int64 cluster ids.
        """
        paths = np.asarray(paths, dtype=np.int64)
        emb = np.asarray(emb, dtype=np.float32)
        out = np.full(paths.shape[0], -1, dtype=np.int64)
        node = lookup_sorted(self.path_ids, self.path_node, paths)
        unseen = np.flatnonzero(node < 0)
        if unseen.size:
            out[unseen] = self.cluster_ids[nearest_centroid(emb[unseen], self.cluster_centroids)]
        idx = np.flatnonzero(node >= 0)
        cur = node[idx]
        for _ in range(10_000):
            if idx.size == 0:
                break
            kind = self.node_kind[cur]
            leaf = kind == LEAF
            out[idx[leaf]] = self.node_target[cur[leaf]]
            red = kind == REDIRECT
            cur[red] = self.node_target[cur[red]]
            spl = np.flatnonzero(kind == SPLIT)
            if spl.size:
                spl = spl[np.argsort(cur[spl], kind="stable")]
                nodes, starts = np.unique(cur[spl], return_index=True)
                for u, s, e in zip(nodes, starts, np.append(starts[1:], spl.size)):
                    sel = spl[s:e]
                    a, b = self.node_child_start[u], self.node_child_end[u]
                    cur[sel] = a + nearest_centroid(emb[idx[sel]], self.node_centroid[a:b])
            idx, cur = idx[~leaf], cur[~leaf]
        else:  # pragma: no cover - a cycle would be a bug in rebalance()
            raise RuntimeError("routing did not terminate: the rebalance map has a cycle")
        return out

    def reachable(self) -> tuple[np.ndarray, np.ndarray]:
        """Final clusters reachable from each known path, as CSR over ``path_ids``.

        Returns:
            ``offsets (P + 1,)`` and ``clusters (nnz,)``: path ``path_ids[i]`` can reach
            ``clusters[offsets[i]:offsets[i+1]]`` (one for a kept or merged path, several for a split one).
        """
        if self._reach is not None:
            return self._reach
        memo: dict[int, np.ndarray] = {}

        def resolve(n: int) -> np.ndarray:
            stack, order = [n], []
            while stack:  # iterative post-order: split trees can be deep on skewed data
                u = stack.pop()
                if u in memo:
                    continue
                order.append(u)
                k = self.node_kind[u]
                if k == REDIRECT:
                    stack.append(int(self.node_target[u]))
                elif k == SPLIT:
                    stack.extend(range(int(self.node_child_start[u]), int(self.node_child_end[u])))
            for u in reversed(order):
                if u in memo:
                    continue
                k = self.node_kind[u]
                if k == LEAF:
                    memo[u] = np.array([self.node_target[u]], np.int64)
                elif k == REDIRECT:
                    memo[u] = memo[int(self.node_target[u])]
                else:
                    kids = [memo[c] for c in range(int(self.node_child_start[u]), int(self.node_child_end[u]))]
                    memo[u] = np.unique(np.concatenate(kids))
            return memo[n]

        parts = [resolve(int(n)) for n in self.path_node]
        lens = np.array([p.size for p in parts], np.int64)
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        clusters = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        self._reach = (offsets, clusters)
        return self._reach

    def describe(self, path: int) -> dict:
        """Human-readable fate of one original path: kept / merged / split, with final clusters."""
        node = int(lookup_sorted(self.path_ids, self.path_node, np.array([path]))[0])
        if node < 0:
            return {"path": int(path), "fate": "unseen", "clusters": []}
        offsets, clusters = self.reachable()
        i = int(np.searchsorted(self.path_ids, path))
        fate = {LEAF: "kept", REDIRECT: "merged", SPLIT: "split"}[int(self.node_kind[node])]
        out = {"path": int(path), "fate": fate, "clusters": clusters[offsets[i]:offsets[i + 1]].tolist()}
        if fate == "split":
            a, b = self.node_child_start[node], self.node_child_end[node]
            out["child_centroids"] = self.node_centroid[a:b]
        return out

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Plain arrays for an npz (keys prefixed)."""
        return {prefix + name: getattr(self, name) for name in self._ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str, M: int, L: int, m: int) -> RebalanceMap:
        return cls(M, L, m, **{name: arrays[prefix + name] for name in cls._ARRAYS})
