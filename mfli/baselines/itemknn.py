"""Item-kNN: cosine item-item similarity over training histories (Deshpande & Karypis 2004 style).

``sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i| |U_j|) + shrink)`` over the binary user x item training
matrix, zero diagonal, each item keeping its ``neighbours`` most similar items (a sparse ``(N, N)``
matrix S, built in row chunks so memory stays ``O(N * neighbours)``). A user scores
``x_u @ S``: the summed similarity of each item to the user's history. Items no history item points
to score 0 and are ordered by training popularity (a 1e-6-scale tie-break), so lists are always full.
``neighbours`` can be chosen on a validation split (:mod:`mfli.eval.validation`). Usage::

    knn = ItemKNN().fit(train_interactions, valid=validation_set(train_interactions))
    ids, scores = knn.retrieve(user_histories, k=100)   # exclude="history" by default
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mfli.baselines.item_scores import interaction_matrix, topk_from_scores

TIE_BREAK = 1e-6  # popularity tie-break scale: below any real similarity difference that matters


@dataclass
class ItemKNNConfig:
    """Item-kNN settings."""

    neighbours: int | None = None  # per item; None: chosen on `valid` from neighbours_grid (else default)
    neighbours_grid: tuple[int, ...] = (20, 50, 100, 200, 500)
    default_neighbours: int = 100  # used when neither neighbours nor a validation set is given
    shrink: float = 10.0  # damps similarities resting on few co-occurrences
    chunk_cells: int = 2**25  # dense cells per similarity chunk (~128 MiB float32)
    k_valid: int = 100  # recall@k_valid selects neighbours


def cosine_topk(X: sp.csr_matrix, neighbours: int, shrink: float = 10.0, chunk_cells: int = 2**25) -> sp.csr_matrix:
    """``(N, N)`` CSR: row i holds item i's ``neighbours`` largest shrunk cosines (> 0), zero diagonal.

    Args:
        X: ``(U, N)`` binary user x item matrix.
    """
    N = X.shape[1]
    Xc = X.T.tocsr().astype(np.float32)  # (N, U)
    Xu = X.tocsc().astype(np.float32)
    norms = np.sqrt(np.asarray(X.sum(0)).ravel().astype(np.float32))
    rows = max(1, chunk_cells // max(N, 1))
    kk = min(neighbours, max(N - 1, 1))
    indptr, indices, data = [0], [], []
    for a in range(0, N, rows):
        b = min(N, a + rows)
        co = (Xc[a:b] @ Xu).toarray()  # (b-a, N) co-occurrence counts
        sim = co / (norms[a:b, None] * norms[None, :] + shrink)
        sim[np.arange(b - a), np.arange(a, b)] = 0.0
        part = np.argpartition(-sim, kk - 1, axis=1)[:, :kk] if kk < N else np.tile(np.arange(N), (b - a, 1))
        vals = np.take_along_axis(sim, part, 1)
        for r in range(b - a):
            keep = vals[r] > 0
            indices.append(part[r][keep])
            data.append(vals[r][keep])
            indptr.append(indptr[-1] + int(keep.sum()))
    idx = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    val = np.concatenate(data) if data else np.zeros(0, np.float32)
    S = sp.csr_matrix((val.astype(np.float32), idx, np.asarray(indptr)), shape=(N, N))
    S.sort_indices()
    return S


def keep_top(S: sp.csr_matrix, neighbours: int) -> sp.csr_matrix:
    """The ``neighbours`` largest entries of each row of S (a cheaper S for a smaller neighbourhood)."""
    indptr, indices, data = [0], [], []
    for r in range(S.shape[0]):
        lo, hi = S.indptr[r], S.indptr[r + 1]
        v, c = S.data[lo:hi], S.indices[lo:hi]
        if hi - lo > neighbours:
            top = np.argpartition(-v, neighbours - 1)[:neighbours]
            v, c = v[top], c[top]
        indices.append(c)
        data.append(v)
        indptr.append(indptr[-1] + len(v))
    out = sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.asarray(indptr)), shape=S.shape)
    out.sort_indices()
    return out


class ItemKNN:
    """Sparse cosine item-item neighbourhood model.

    Attributes (after :meth:`fit`):
        item_ids: ``(N,)`` sorted ids of the items with training events (others are never retrieved).
        S: ``(N, N)`` CSR similarities; ``pop``: ``(N,)`` float32 training counts scaled to [0, 1].
        neighbours: the neighbourhood used; ``selection``: ``{neighbours: validation recall@k}``.
    """

    def __init__(self, cfg: ItemKNNConfig | None = None) -> None:
        self.cfg = cfg or ItemKNNConfig()
        self.item_ids = np.zeros(0, np.int64)
        self.S = sp.csr_matrix((0, 0), dtype=np.float32)
        self.pop = np.zeros(0, np.float32)
        self.neighbours: int | None = None
        self.selection: dict[int, float] = {}

    def _fit_full(self, train: pd.DataFrame, neighbours: int) -> sp.csr_matrix:
        X, _, self.item_ids = interaction_matrix(train)
        counts = np.asarray(X.sum(0)).ravel().astype(np.float32)
        self.pop = counts / max(float(counts.max(initial=0.0)), 1.0)
        return cosine_topk(X, neighbours, self.cfg.shrink, self.cfg.chunk_cells)

    def fit(self, train_interactions: pd.DataFrame, valid=None) -> ItemKNN:
        """Fit on ``train_interactions`` (user_id, item_id); ``valid`` a :class:`ValidationSet` of it."""
        cfg = self.cfg
        n = cfg.neighbours
        self.selection = {}
        if n is None and valid is not None and len(valid.users):
            grid = sorted(cfg.neighbours_grid)
            full = self._fit_full(valid.fit, grid[-1])  # one similarity pass; smaller k by pruning
            for g in grid:
                self.S = keep_top(full, g)
                ids, _ = self.retrieve(valid.histories, cfg.k_valid)
                self.selection[int(g)] = valid.recall(ids, cfg.k_valid)
            n = max(self.selection, key=lambda g: (self.selection[g], -g))  # ties: the smaller neighbourhood
        n = cfg.default_neighbours if n is None else n
        self.S = self._fit_full(train_interactions, n)
        self.neighbours = int(n)
        return self

    def retrieve(self, user_histories: Sequence[Iterable[int]], k: int = 100,
                 exclude: str | Sequence[Iterable[int]] | None = "history") -> tuple[np.ndarray, np.ndarray]:
        """Top-k by ``x_u @ S`` (+ popularity tie-break); ids ``(B, k)`` int64 and scores ``(B, k)``."""
        S, tie = self.S, TIE_BREAK * self.pop
        return topk_from_scores(lambda x: (x @ S).toarray() + tie, user_histories, self.item_ids, k, exclude)
