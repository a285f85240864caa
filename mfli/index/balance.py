"""Cluster-size balance statistics (REFERENCE.md 1.4): max/mean size, Gini, top-1% share, histogram.

Computed per facet from the cluster sizes of an index, before and after split-and-merge.

Example::

    stats = [balance_stats(index.facets[f].sizes()) for f in range(index.n_facets)]
    print(format_balance(before, after, index.facet_names))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


def gini(sizes: np.ndarray) -> float:
    """Gini coefficient of non-negative sizes ``(C,)``: 0 = all equal, -> 1 = one cluster holds all.

    ``G = sum_i (2i - C - 1) x_(i) / (C * sum x)`` with ``x`` sorted ascending, ``i`` from 1.
    """
    x = np.sort(np.asarray(sizes, dtype=np.float64))
    n, total = x.size, x.sum()
    if n == 0 or total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def top_share(sizes: np.ndarray, frac: float = 0.01) -> float:
    """Share of all items held by the largest ``ceil(frac * C)`` clusters."""
    x = np.sort(np.asarray(sizes, dtype=np.float64))[::-1]
    if x.size == 0 or x.sum() == 0:
        return 0.0
    k = max(1, math.ceil(frac * x.size))
    return float(x[:k].sum() / x.sum())


@dataclass
class BalanceStats:
    """Summary of one facet's cluster sizes.

    Attributes:
        n_clusters: clusters with at least one item.
        n_entries: items counted (items x paths per item).
        max_size, mean_size, median_size, min_size: over non-empty clusters.
        gini: Gini coefficient of the sizes.
        top1pct_share: share of items in the largest 1% of clusters.
        hist_edges: power-of-two bin edges ``[1, 2, 4, ...]``; hist_counts: clusters per bin
            (``hist_counts[i]`` counts sizes in ``[edges[i], edges[i+1])``).
    """

    n_clusters: int
    n_entries: int
    max_size: int
    mean_size: float
    median_size: float
    min_size: int
    gini: float
    top1pct_share: float
    hist_edges: list[int]
    hist_counts: list[int]

    def as_dict(self) -> dict:
        return asdict(self)


def balance_stats(sizes: np.ndarray) -> BalanceStats:
    """Statistics of cluster sizes ``(C,)`` (empty clusters are ignored)."""
    x = np.asarray(sizes, dtype=np.int64)
    x = x[x > 0]
    if x.size == 0:
        return BalanceStats(0, 0, 0, 0.0, 0.0, 0, 0.0, 0.0, [1, 2], [0])
    top = int(x.max())
    edges = [2**i for i in range(math.floor(math.log2(top)) + 2)]
    counts, _ = np.histogram(x, bins=edges)
    return BalanceStats(
        n_clusters=int(x.size),
        n_entries=int(x.sum()),
        max_size=top,
        mean_size=float(x.mean()),
        median_size=float(np.median(x)),
        min_size=int(x.min()),
        gini=gini(x),
        top1pct_share=top_share(x, 0.01),
        hist_edges=edges,
        hist_counts=counts.astype(int).tolist(),
    )


def index_balance(index) -> list[BalanceStats]:
    """Per-facet :class:`BalanceStats` of a :class:`~mfli.index.inverted.MultiFacetIndex`."""
    return [balance_stats(csr.sizes()) for csr in index.facets]


def format_balance(before: Sequence[BalanceStats], after: Sequence[BalanceStats], facet_names: Sequence[str]) -> str:
    """A plain-text before/after table, one line per facet and stage."""
    head = f"{'facet':<14}{'stage':<8}{'clusters':>9}{'max':>8}{'mean':>9}{'min':>6}{'gini':>7}{'top1%':>7}"
    lines = [head]
    for name, b, a in zip(facet_names, before, after):
        for stage, s in (("before", b), ("after", a)):
            lines.append(f"{name:<14}{stage:<8}{s.n_clusters:>9}{s.max_size:>8}{s.mean_size:>9.1f}"
                         f"{s.min_size:>6}{s.gini:>7.3f}{s.top1pct_share:>7.3f}")
    return "\n".join(lines)
