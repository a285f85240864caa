"""EASE (Steck 2019): the closed-form item-item linear autoencoder, a strong first baseline.

``B = I - P diag(1 / diag(P))`` with ``P = (X^T X + lambda I)^-1`` over the binary user x item
training matrix X (zero diagonal: an item never explains itself); a user scores ``x_u @ B``.
Lambda is chosen on a validation split (:mod:`mfli.eval.validation`) from a small grid, then the
model is refitted on all training events. The dense ``(N, N)`` matrices limit it to catalogues of
some tens of thousands of items; larger ones are refused with the memory they would need. Usage::

    ease = Ease().fit(train_interactions, valid=validation_set(train_interactions))
    ids, scores = ease.retrieve(user_histories, k=100)   # exclude="history" by default
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mfli.baselines.item_scores import interaction_matrix, topk_from_scores

DENSE_COPIES = 3  # Gram matrix, its inverse and B live at once during the fit


@dataclass
class EaseConfig:
    """EASE settings."""

    l2: float | None = None  # lambda; None: chosen on `valid` from l2_grid (or default_l2 without valid)
    l2_grid: tuple[float, ...] = (10.0, 50.0, 200.0, 1000.0, 5000.0)  # log-spaced; Steck's best were 1e2-1e3
    default_l2: float = 500.0  # used when neither l2 nor a validation set is given
    max_memory_gb: float = 4.0  # refuse catalogues whose dense solve needs more than this
    k_valid: int = 100  # recall@k_valid selects lambda
    num_threads: int = 0  # torch threads for the solve (0: process default)


def ease_weights(X, l2: float) -> np.ndarray:
    """``(N, N)`` float32 EASE matrix B for the ``(U, N)`` binary matrix X (scipy sparse or dense)."""
    Xt = torch.from_numpy(X.T.toarray() if hasattr(X, "toarray") else np.asarray(X).T).float()
    G = Xt @ Xt.T
    del Xt
    G.diagonal().add_(float(l2))
    # G + lambda I is symmetric positive definite: Cholesky is the cheap, stable inverse
    P = torch.cholesky_inverse(torch.linalg.cholesky(G))
    del G
    B = P / (-P.diagonal()).unsqueeze(0)  # B_ij = -P_ij / P_jj
    B.diagonal().zero_()
    return B.numpy()


class Ease:
    """Closed-form item-item model.

    Attributes (after :meth:`fit`):
        item_ids: ``(N,)`` sorted ids of the items with training events (others are never retrieved).
        B: ``(N, N)`` float32 weights.
        l2: the lambda used; ``selection``: ``{lambda: validation recall@k}`` when chosen on validation.
    """

    def __init__(self, cfg: EaseConfig | None = None) -> None:
        self.cfg = cfg or EaseConfig()
        self.item_ids = np.zeros(0, np.int64)
        self.B = np.zeros((0, 0), np.float32)
        self.l2: float | None = None
        self.selection: dict[float, float] = {}

    def check_size(self, n_items: int) -> None:
        """Raise ValueError if a dense solve over ``n_items`` items would exceed ``max_memory_gb``."""
        need = DENSE_COPIES * 4 * n_items**2 / 2**30
        if need > self.cfg.max_memory_gb:
            raise ValueError(
                f"EASE needs dense {n_items} x {n_items} item-item matrices (~{need:.1f} GiB for {n_items} items "
                f"with training events), over EaseConfig.max_memory_gb={self.cfg.max_memory_gb:g}; "
                "use itemknn (sparse) or raise max_memory_gb")

    def _fit_once(self, train: pd.DataFrame, l2: float) -> None:
        X, _, self.item_ids = interaction_matrix(train)
        self.check_size(len(self.item_ids))
        self.B = ease_weights(X, l2)
        self.l2 = float(l2)

    def fit(self, train_interactions: pd.DataFrame, valid=None) -> Ease:
        """Fit on ``train_interactions`` (user_id, item_id); ``valid`` a :class:`ValidationSet` of it."""
        cfg = self.cfg
        threads = torch.get_num_threads()
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        try:
            n = int(train_interactions["item_id"].nunique())
            self.check_size(n)  # before any work
            l2 = cfg.l2
            self.selection = {}
            if l2 is None and valid is not None and len(valid.users):
                for lam in cfg.l2_grid:
                    self._fit_once(valid.fit, lam)
                    ids, _ = self.retrieve(valid.histories, cfg.k_valid)
                    self.selection[float(lam)] = valid.recall(ids, cfg.k_valid)
                # best recall; ties go to the larger (more regularised) lambda
                l2 = max(self.selection, key=lambda lam: (self.selection[lam], lam))
            self._fit_once(train_interactions, cfg.default_l2 if l2 is None else l2)
        finally:
            torch.set_num_threads(threads)
        return self

    def retrieve(self, user_histories: Sequence[Iterable[int]], k: int = 100,
                 exclude: str | Sequence[Iterable[int]] | None = "history") -> tuple[np.ndarray, np.ndarray]:
        """Top-k by ``x_u @ B``; ids ``(B, k)`` int64 (-1 padding) and scores ``(B, k)`` float32."""
        B = self.B
        return topk_from_scores(lambda x: x @ B, user_histories, self.item_ids, k, exclude)
