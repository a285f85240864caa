"""Two-level routing for the scan engine: the clusters flat routing picks, without scoring them all.

Flat routing scores every column centroid for every query: at 1M items that is 4,166 int8 rows of
128 (533 KB), about 55 us per query with them in cache and 100-130 us when the scan of the previous
request has evicted them, a fifth of a batch-1 request. Here the columns' centroids are grouped by
k-means (``G`` about ``sqrt(C)`` groups; faiss, seeded and single-threaded so every build groups
alike), and each group keeps its mean ``m_g`` and radius ``r_g`` (the farthest member, as routing
scores it: the int8 rows dequantised). No column of group g can score above ``q . m_g + |q| r_g``
(Cauchy-Schwarz), so a query visits groups in the order of that bound and stops as soon as its
``n``-th best column so far beats the next group's bound (:func:`mfli.serve.engine_kernels.route_tree`):
the same clusters as flat routing, with the same int8 arithmetic (ties at the last slot aside), and
no recall to tune away. How many columns it skips depends on the data; at 1M items it scored about
35-40% of them. Catalogues with fewer than ``MIN_COLUMNS`` columns route flat. Usage::

    tree = RouteTree.build(cent, cent8, scale, groups=RouteTree.auto_groups(C))
    gid, rank, visited = engine_kernels.route_tree(q, *tree.arrays, n)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_COLUMNS = 1024  # fewer columns: flat routing (the tree's saving is a few microseconds)
_KMEANS_ITER = 20
#: radius margin, relative to the largest centroid norm: covers float32 rounding of the column scores
_MARGIN = 1e-4


@dataclass
class RouteTree:
    """Columns grouped for routing.

    Attributes:
        gcent: ``(G, D)`` float32 group centroids (mean of their columns' centroids).
        radius: ``(G,)`` float64 the largest distance from ``gcent[g]`` to a member's dequantised
            centroid, plus a rounding margin.
        gptr: ``(G + 1,)`` int64: group ``g`` holds rows ``gptr[g]:gptr[g + 1]`` of the arrays below.
        cent8: ``(C, D)`` int8 column centroids, group-major; scale: ``(C,)`` float32 their scales.
        cols: ``(C,)`` int64 the engine column of each row.
    """

    gcent: np.ndarray
    radius: np.ndarray
    gptr: np.ndarray
    cent8: np.ndarray
    scale: np.ndarray
    cols: np.ndarray

    @staticmethod
    def auto_groups(n_columns: int) -> int:
        """``round(sqrt(C))`` groups from ``MIN_COLUMNS`` columns on, else 0 (flat routing)."""
        return round(math.sqrt(n_columns)) if n_columns >= MIN_COLUMNS else 0

    @classmethod
    def build(cls, cent: np.ndarray, cent8: np.ndarray, scale: np.ndarray, groups: int, seed: int = 0) -> RouteTree:
        """Group the ``C`` columns: ``cent (C, D)`` float32 centroids (clustered), ``cent8``/``scale`` their
        int8 form (:func:`mfli.serve.engine_kernels.quantize_rows`, what is scored)."""
        import faiss

        C, D = cent.shape
        if not 1 <= groups <= C:
            raise ValueError(f"route groups must be in [1, {C}] for {C} columns, got {groups}")
        x = np.ascontiguousarray(cent, dtype=np.float32)
        km = faiss.Kmeans(D, groups, niter=_KMEANS_ITER, seed=seed, verbose=False, min_points_per_centroid=1,
                          max_points_per_centroid=max(256, -(-C // groups)))
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # a fixed summation order: the same groups for every thread count
        try:
            km.train(x)
            group = km.index.search(x, 1)[1][:, 0]
        finally:
            faiss.omp_set_num_threads(threads)
        order = np.argsort(group, kind="stable")
        counts = np.bincount(group, minlength=groups)
        gptr = np.zeros(groups + 1, np.int64)
        np.cumsum(counts, out=gptr[1:])
        sums = np.zeros((groups, D), np.float64)
        np.add.at(sums, group, x)
        gcent = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        deq = cent8.astype(np.float64) * scale.astype(np.float64)[:, None]  # what routing scores
        dist = np.linalg.norm(deq - gcent[group].astype(np.float64), axis=1)
        radius = np.zeros(groups, np.float64)
        np.maximum.at(radius, group, dist)
        radius += _MARGIN * float(np.linalg.norm(deq, axis=1).max(initial=0.0))
        return cls(np.ascontiguousarray(gcent), radius, gptr, np.ascontiguousarray(cent8[order]),
                   np.ascontiguousarray(scale[order], dtype=np.float32), order.astype(np.int64))

    @property
    def n_groups(self) -> int:
        return int(self.gcent.shape[0])

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """``(gcent, radius, gptr, cent8, scale, cols)``: the kernel's tree arguments."""
        return self.gcent, self.radius, self.gptr, self.cent8, self.scale, self.cols

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays))
