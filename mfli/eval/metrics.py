"""Evaluation metrics exactly as REFERENCE.md section 4 defines them, plus codebook/index health.

Retrieved lists are ``(U, K')`` int64 item-id matrices, one row per test user, best first, padded with
-1 (padding never counts). ``positives`` is a list of U arrays: each user's held-out positive item ids.

- recall@K: per user ``|top-K ∩ positives| / |positives|``, mean over users with >= 1 positive.
- cold recall@K: the same with positives restricted to cold items, over users with >= 1 cold positive.
- topic-match@K: per user, the share of the (non-padding) top-K whose categories intersect the union of
  the categories of the user's positives; mean over users with >= 1 positive and >= 1 retrieved item.
  Categories are compared as exact strings (a hierarchical item lists each level, e.g.
  ``["Tools", "Tools>Fasteners"]``, so a shared top level already counts as a match).
- long-tail share@K: share of all retrieved (non-padding) top-K slots, pooled over users, holding an
  item among the least popular 80% of the catalogue by training counts (items ranked by count
  ascending, ties by item id; the first ``floor(0.8 * n)`` are the tail; unseen items count 0).
- coverage@K: share of the catalogue retrieved in the top-K of at least one user.

Example::

    pos = positives_by_user(split.test, user_ids)
    metrics = evaluate_retrieval(retrieved, pos, cold_items=split.cold_items,
                                 item_categories=categories_by_item(items), train_counts=train_counts(split.train),
                                 catalogue=items.item_id.to_numpy())
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

#: The K values and metric names the benchmark reports.
RECALL_KS = (50, 100, 200)
METRIC_KEYS = ("recall@50", "recall@100", "recall@200", "cold_recall@100", "topic_match@100",
               "long_tail@100", "coverage@100")


def _topk(retrieved: np.ndarray, k: int) -> np.ndarray:
    r = np.asarray(retrieved, dtype=np.int64)
    if r.ndim != 2:
        raise ValueError(f"retrieved must be a (U, K) matrix, got shape {r.shape}")
    if r.shape[1] < k:
        raise ValueError(f"retrieved lists hold {r.shape[1]} columns, fewer than K={k}")
    return r[:, :k]


def _check_users(retrieved: np.ndarray, positives: Sequence) -> None:
    if len(positives) != np.asarray(retrieved).shape[0]:
        raise ValueError(f"{np.asarray(retrieved).shape[0]} retrieved rows but {len(positives)} positive lists")


def recall_per_user(retrieved: np.ndarray, positives: Sequence[Iterable[int]], k: int) -> np.ndarray:
    """``(U,)`` float64 ``|top-K ∩ positives| / |positives|`` per user, nan for users without positives."""
    _check_users(retrieved, positives)
    top = _topk(retrieved, k)
    out = np.full(len(positives), math.nan)
    for u, (row, pos) in enumerate(zip(top, positives)):
        p = np.unique(np.asarray(list(pos) if not isinstance(pos, np.ndarray) else pos, dtype=np.int64))
        if p.size:
            out[u] = np.isin(np.unique(row[row >= 0]), p).sum() / p.size
    return out


def recall_at_k(retrieved: np.ndarray, positives: Sequence[Iterable[int]], k: int) -> float:
    """Mean over users with >= 1 positive of ``|top-K ∩ positives| / |positives|`` (nan if no such user)."""
    vals = recall_per_user(retrieved, positives, k)
    vals = vals[~np.isnan(vals)]
    return float(vals.mean()) if vals.size else math.nan


def cold_recall_at_k(retrieved: np.ndarray, positives: Sequence[Iterable[int]], cold_items: Iterable[int],
                     k: int) -> float:
    """recall@K with positives restricted to cold items, over users with >= 1 cold positive."""
    cold = np.unique(np.asarray(list(cold_items) if not isinstance(cold_items, np.ndarray) else cold_items,
                                dtype=np.int64))
    restricted = [np.asarray(list(p) if not isinstance(p, np.ndarray) else p, dtype=np.int64) for p in positives]
    restricted = [p[np.isin(p, cold)] for p in restricted]
    return recall_at_k(retrieved, restricted, k)


def topic_match_at_k(retrieved: np.ndarray, positives: Sequence[Iterable[int]],
                     item_categories: Mapping[int, Iterable[str]], k: int) -> float:
    """Mean share of the top-K whose categories intersect those of the user's positives.

    Items missing from ``item_categories`` have no categories (never match).
    """
    _check_users(retrieved, positives)
    top = _topk(retrieved, k)
    vals = []
    for row, pos in zip(top, positives):
        pos = list(pos)
        row = row[row >= 0]
        if not pos or row.size == 0:
            continue
        cats: set[str] = set()
        for p in pos:
            cats.update(item_categories.get(int(p), ()))
        match = sum(1 for i in row if cats.intersection(item_categories.get(int(i), ())))
        vals.append(match / row.size)
    return float(np.mean(vals)) if vals else math.nan


def tail_items(catalogue: Iterable[int], train_counts: Mapping[int, int] | None, share: float = 0.8) -> np.ndarray:
    """The least popular ``share`` of the catalogue by training counts (ties by item id), sorted ids."""
    ids = np.unique(np.asarray(list(catalogue) if not isinstance(catalogue, np.ndarray) else catalogue,
                               dtype=np.int64))
    counts = np.array([int((train_counts or {}).get(int(i), 0)) for i in ids], dtype=np.int64)
    order = np.lexsort((ids, counts))
    return np.sort(ids[order[: math.floor(share * ids.size)]])


def long_tail_share_at_k(retrieved: np.ndarray, catalogue: Iterable[int], train_counts: Mapping[int, int] | None,
                         k: int) -> float:
    """Share of retrieved top-K slots (pooled over users) holding a least-popular-80% item."""
    top = _topk(retrieved, k)
    flat = top[top >= 0]
    if flat.size == 0:
        return math.nan
    return float(np.isin(flat, tail_items(catalogue, train_counts)).mean())


def coverage_at_k(retrieved: np.ndarray, catalogue: Iterable[int], k: int) -> float:
    """Share of the catalogue retrieved in the top-K of at least one user."""
    cat = np.unique(np.asarray(list(catalogue) if not isinstance(catalogue, np.ndarray) else catalogue,
                               dtype=np.int64))
    if cat.size == 0:
        return math.nan
    top = _topk(retrieved, k)
    return float(np.isin(cat, np.unique(top[top >= 0])).mean())


def evaluate_retrieval(
    retrieved: np.ndarray,
    positives: Sequence[Iterable[int]],
    *,
    cold_items: Iterable[int],
    item_categories: Mapping[int, Iterable[str]],
    train_counts: Mapping[int, int] | None,
    catalogue: Iterable[int],
) -> dict[str, float]:
    """All benchmark metrics (keys :data:`METRIC_KEYS`) for ``retrieved (U, >= 200)``."""
    out = {f"recall@{k}": recall_at_k(retrieved, positives, k) for k in RECALL_KS}
    out["cold_recall@100"] = cold_recall_at_k(retrieved, positives, cold_items, 100)
    out["topic_match@100"] = topic_match_at_k(retrieved, positives, item_categories, 100)
    out["long_tail@100"] = long_tail_share_at_k(retrieved, catalogue, train_counts, 100)
    out["coverage@100"] = coverage_at_k(retrieved, catalogue, 100)
    return out


# ---------------------------------------------------------------------- inputs from canonical tables
def positives_by_user(test_interactions, user_ids: Sequence[int]) -> list[np.ndarray]:
    """Held-out positives per user, aligned with ``user_ids``: the distinct items of their test events."""
    grouped = test_interactions.groupby("user_id")["item_id"].unique()
    return [np.asarray(grouped.get(int(u), np.zeros(0)), dtype=np.int64) for u in user_ids]


def histories_by_user(train_interactions):
    """``user_id -> (n_u,) int64`` item ids of each user's training events, oldest first (a Series)."""
    ordered = train_interactions.sort_values(["user_id", "event_ts"], kind="stable")
    return ordered.groupby("user_id")["item_id"].apply(lambda s: s.to_numpy(np.int64))


def categories_by_item(items) -> dict[int, frozenset[str]]:
    """``item_id -> frozenset(categories)`` from a canonical items table."""
    return {int(i): frozenset(c if c is not None else ()) for i, c in zip(items["item_id"], items["categories"])}


def train_counts(train_interactions) -> dict[int, int]:
    """``item_id -> number of training events``."""
    vc = train_interactions["item_id"].value_counts()
    return {int(i): int(c) for i, c in vc.items()}


# ---------------------------------------------------------------------- codebook / index health
def codebook_health(codes: np.ndarray, M: int) -> dict[str, float]:
    """Health of residual-quantisation codes.

    Args:
        codes: ``(N, F, L)`` int codes (or ``(N, F, m, L)``: slot 0 is used).
        M: codes per layer.

    Returns:
        flat dict, per facet f and layer l: ``f{f}.l{l}.utilisation`` (share of the M codes used),
        ``f{f}.l{l}.perplexity`` (exp of the entropy of code usage; M = uniform, 1 = collapsed); per facet:
        ``f{f}.collision_rate`` (share of items whose full path is shared with another item),
        ``f{f}.max_cluster_share`` (share of items in the largest path) and ``f{f}.paths_used``.
    """
    c = np.asarray(codes, dtype=np.int64)
    if c.ndim == 4:
        c = c[:, :, 0, :]
    if c.ndim != 3:
        raise ValueError(f"codes must be (N, F, L), got {c.shape}")
    N, F, L = c.shape
    out: dict[str, float] = {}
    weights = np.array([M ** (L - 1 - i) for i in range(L)], dtype=np.int64)
    for f in range(F):
        for layer in range(L):
            counts = np.bincount(c[:, f, layer], minlength=M)
            p = counts[counts > 0] / max(N, 1)
            out[f"f{f}.l{layer}.utilisation"] = float((counts > 0).sum() / M)
            out[f"f{f}.l{layer}.perplexity"] = float(np.exp(-(p * np.log(p)).sum())) if N else 0.0
        _, inv, cnt = np.unique((c[:, f, :] * weights).sum(-1), return_inverse=True, return_counts=True)
        out[f"f{f}.collision_rate"] = float((cnt[inv] > 1).mean()) if N else 0.0
        out[f"f{f}.max_cluster_share"] = float(cnt.max() / N) if N else 0.0
        out[f"f{f}.paths_used"] = float(cnt.size)
    return out


def index_health(index) -> dict[str, float]:
    """Cluster-size health of a built index: per facet clusters, max/mean size, Gini, top-1% and max share."""
    from mfli.index.balance import balance_stats

    out: dict[str, float] = {}
    for f, csr in enumerate(index.facets):
        s = balance_stats(csr.sizes())
        out[f"f{f}.clusters"] = float(s.n_clusters)
        out[f"f{f}.max_size"] = float(s.max_size)
        out[f"f{f}.mean_size"] = float(s.mean_size)
        out[f"f{f}.gini"] = s.gini
        out[f"f{f}.top1pct_share"] = s.top1pct_share
        out[f"f{f}.max_cluster_share"] = float(s.max_size / s.n_entries) if s.n_entries else 0.0
    return out
