"""Synthetic embeddings and faiss k-means RQ codebooks for the index tests (no training involved)."""

from __future__ import annotations

from types import SimpleNamespace

import faiss
import numpy as np
import pytest


def clustered(n: int, F: int, d: int, seed: int = 0, centers: int = 12, skew: bool = False) -> np.ndarray:
    """``(n, F, d)`` L2-normalised embeddings around a few random centres per facet.

    ``skew`` draws centre sizes from a heavy-tailed law, so code paths come out badly unbalanced.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, F, d), np.float32)
    for f in range(F):
        c = rng.standard_normal((centers, d)).astype(np.float32)
        p = rng.pareto(0.7, centers) + 1 if skew else np.ones(centers)
        x = c[rng.choice(centers, n, p=p / p.sum())] + 0.4 * rng.standard_normal((n, d)).astype(np.float32)
        out[:, f] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def kmeans_codebooks(emb: np.ndarray, L: int, M: int, seed: int = 0) -> np.ndarray:
    """``(L, F, M, d)`` residual k-means codebooks (faiss), a stand-in for trained ones."""
    _, F, d = emb.shape
    cb = np.zeros((L, F, M, d), np.float32)
    for f in range(F):
        r = emb[:, f].copy()
        for layer in range(L):
            km = faiss.Kmeans(d, M, niter=10, seed=seed + layer, verbose=False, min_points_per_centroid=1)
            km.train(r)
            cb[layer, f] = km.centroids
            _, a = km.index.search(r, 1)
            r = r - km.centroids[a[:, 0]]
    return cb


@pytest.fixture(scope="session")
def synth() -> SimpleNamespace:
    """Helpers: ``synth.clustered(n, F, d, seed)`` and ``synth.kmeans_codebooks(emb, L, M)``."""
    return SimpleNamespace(clustered=clustered, kmeans_codebooks=kmeans_codebooks)
