"""Test data shared by the serving tests: unit facet vectors clustered around a few topics."""

from __future__ import annotations

import numpy as np


def topic_vectors(n: int, seed: int, F: int, D: int, topics: int, noise: float = 0.6) -> np.ndarray:
    """``(n, F, D)`` float32 unit vectors: per facet, ``topics`` random centres plus Gaussian ``noise``."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, F, D), np.float32)
    for f in range(F):
        c = rng.standard_normal((topics, D)).astype(np.float32)
        x = c[rng.integers(0, topics, n)] + noise * rng.standard_normal((n, D)).astype(np.float32)
        out[:, f] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rebalanced_index(seed: int, n: int = 900, F: int = 2, D: int = 8, L: int = 2, M: int = 16) -> tuple:
    """``(index, codebooks, codes)``: a rebalanced :class:`MultiFacetIndex` over :func:`topic_vectors`
    (6 topics; ids ``3 * row + 1``), with the k-means residual codebooks ``(L, F, M, D)`` it was built with."""
    from mfli.eval.serving.data import kmeans_rq_codebooks
    from mfli.index.inverted import MultiFacetIndex, encode_paths
    from mfli.index.split_merge import RebalanceConfig, rebalance

    emb = topic_vectors(n, seed, F, D, topics=6)
    cb = kmeans_rq_codebooks(emb, L, M)
    codes = encode_paths(emb, cb)
    ids = np.arange(n, dtype=np.int64) * 3 + 1
    return rebalance(MultiFacetIndex.build(ids, emb, codes, cb), RebalanceConfig(floor=10, cap=60)).index, cb, codes
