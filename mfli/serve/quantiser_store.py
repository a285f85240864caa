"""The fast-scan pre-ranker's residual quantiser on disk: fitted once where the snapshot is gated.

The scan engine's 4-bit codes (:mod:`mfli.serve.engine_fastscan`) come from a product quantiser fitted
by k-means on a sample of residuals. Fitting it again wherever an engine starts costs time (0.8 s at 1M
items) and, across CPU types, can end in other centroids (the last bit of a k-means sum), hence other
codes and other answers than the gate measured. A snapshot therefore carries the quantiser its gate used
(``fastscan.npz``, :mod:`mfli.snapshot`): ``(n_sub, 16, D / n_sub)`` float32, a few KB. The codes
themselves are recomputed from it at start (a deterministic, exact nearest-centroid pass), so the file
stays small and the engine never serves codes of other vectors.

The file is one npz (no pickles): the centroids and a JSON ``key`` of what they were fitted for
(:func:`quantiser_key`): sub-quantisers, training sample size, seed and the engine's column layout
(:func:`~mfli.serve.list_store.layout_digest`). An engine whose key differs fits its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mfli.serve.keyed_npz import load_keyed, save_keyed

FORMAT = "mfli-fastscan-quantiser/1"

__all__ = ["FORMAT", "StoredQuantiser", "load_quantiser", "quantiser_key", "save_quantiser"]


def quantiser_key(n_sub: int, train_size: int, seed: int, layout: str) -> dict[str, Any]:
    """What a fitted quantiser depends on: its sub-quantisers, ``EngineConfig.pq_train_size`` and
    ``seed``, and the engine's :func:`~mfli.serve.list_store.layout_digest`."""
    return {"format": FORMAT, "n_sub": int(n_sub), "train_size": int(train_size), "seed": int(seed),
            "layout": str(layout)}


class StoredQuantiser:
    """A quantiser read back from a file (:func:`load_quantiser`).

    Attributes:
        centroids: ``(n_sub, 16, D / n_sub)`` float32.
        key: what it was fitted for (:func:`quantiser_key`).
        source: the file it was read from.
    """

    def __init__(self, centroids: np.ndarray, key: dict[str, Any], source: str = "") -> None:
        self.centroids, self.key, self.source = centroids, key, source

    def matches(self, key: dict[str, Any]) -> bool:
        return self.key == key


def save_quantiser(path: str | Path, centroids: np.ndarray, key: dict[str, Any]) -> Path:
    """Write ``centroids (n_sub, 16, dsub)`` and their ``key`` (:func:`quantiser_key`) to ``path`` (npz)."""
    return save_keyed(path, key, centroids=np.ascontiguousarray(centroids, np.float32))


def load_quantiser(path: str | Path) -> StoredQuantiser:
    """Read a quantiser written by :func:`save_quantiser`.

    Raises:
        ValueError: naming the file and the array that is missing or malformed.
    """
    arrays, key, bad = load_keyed(path, ("centroids",), FORMAT,
                                  "a fast-scan quantiser written by mfli.serve.quantiser_store")
    cent = arrays["centroids"]
    if cent.dtype != np.float32 or cent.ndim != 3 or cent.shape[0] != key.get("n_sub") or cent.shape[1] != 16:
        raise bad(f"array 'centroids' is {cent.dtype} {cent.shape}, expected float32 ({key.get('n_sub')}, 16, dsub)")
    if not np.isfinite(cent).all():
        raise bad("array 'centroids' holds NaN or infinite values")
    return StoredQuantiser(cent, key, str(Path(path)))
