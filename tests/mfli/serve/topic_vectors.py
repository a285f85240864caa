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
