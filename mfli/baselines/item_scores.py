"""Shared plumbing of the item-item baselines (EASE, item-kNN): history matrices and top-k lists.

Both baselines score a user by ``x_u @ W`` where ``x_u (N,)`` is the binary vector of the user's
training items over the items with training events and ``W (N, N)`` an item-item matrix; this module
builds ``x_u`` in batches and turns score rows into ``(B, k)`` catalogue ids with the same exclusion
contract as the other baselines (``exclude="history"``, None, or one iterable of ids per query).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mfli.data.errors import DataError
from mfli.index.lookup import positions_in_sorted


def interaction_matrix(train_interactions: pd.DataFrame) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Binary ``(U, N)`` user x item CSR of the training events (repeats count once).

    Returns:
        (X, user_ids (U,), item_ids (N,)): sorted int64 ids labelling the rows and columns.
    """
    for col in ("user_id", "item_id"):
        if col not in train_interactions.columns:
            raise DataError("train_interactions", "missing column", column=col)
    users = train_interactions["user_id"].to_numpy(np.int64)
    items = train_interactions["item_id"].to_numpy(np.int64)
    user_ids, rows = np.unique(users, return_inverse=True)
    item_ids, cols = np.unique(items, return_inverse=True)
    X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(user_ids), len(item_ids)))
    X.sum_duplicates()
    X.data[:] = 1.0
    return X, user_ids, item_ids


def history_rows(histories: Sequence[Iterable[int]], item_ids: np.ndarray) -> sp.csr_matrix:
    """Binary ``(B, N)`` CSR of each history over ``item_ids`` (sorted); unknown ids are ignored."""
    indptr, indices = [0], []
    for h in histories:
        h = np.unique(np.asarray(list(h) if not isinstance(h, np.ndarray) else h, dtype=np.int64))
        pos, ok = positions_in_sorted(item_ids, h)
        indices.append(pos[ok])
        indptr.append(indptr[-1] + int(ok.sum()))
    idx = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    return sp.csr_matrix((np.ones(len(idx), np.float32), idx, np.asarray(indptr)), shape=(len(indptr) - 1, len(item_ids)))


def topk_from_scores(
    score_batch: Callable[[sp.csr_matrix], np.ndarray],
    histories: Sequence[Iterable[int]],
    item_ids: np.ndarray,
    k: int,
    exclude: str | Sequence[Iterable[int]] | None = "history",
    batch: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per query from ``score_batch(x (b, N) csr) -> (b, N) float32`` scores.

    Excluded items (``"history"``: the query's own items) score -inf and never appear; rows run out
    only when fewer than k scorable items remain (padding -1 / -inf).

    Returns:
        ids ``(B, k)`` int64 catalogue ids, best first, and scores ``(B, k)`` float32.
    """
    Bq = len(histories)
    excl = histories if exclude == "history" else exclude
    if excl is not None and len(excl) != Bq:
        raise ValueError(f"exclude has {len(excl)} entries for {Bq} queries")
    N = len(item_ids)
    ids = np.full((Bq, k), -1, dtype=np.int64)
    sc = np.full((Bq, k), -np.inf, dtype=np.float32)
    if N == 0:
        return ids, sc
    kk = min(k, N)
    for a in range(0, Bq, batch):
        b = min(Bq, a + batch)
        s = np.asarray(score_batch(history_rows(histories[a:b], item_ids)), dtype=np.float32)
        if excl is not None:
            ex = history_rows(excl[a:b], item_ids).tocoo()
            s[ex.row, ex.col] = -np.inf
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        ps = np.take_along_axis(s, part, 1)
        order = np.lexsort((part, -ps), axis=1)  # best first, ties by column (deterministic)
        cols = np.take_along_axis(part, order, 1)
        top = np.take_along_axis(ps, order, 1)
        got = np.where(np.isfinite(top), item_ids[cols], -1)
        ids[a:b, :kk] = got
        sc[a:b, :kk] = np.where(np.isfinite(top), top, -np.inf)
    return ids, sc
