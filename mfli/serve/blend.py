"""Blend mode: user mode, co-engagement lists and trigger lists fused into one ranked list.

Three ranked candidate lists per request, each cheap to produce without ANN search:

- ``user``: user mode (codebook / scan engine; ``q . e`` over the reached clusters);
- ``coengagement``: the items the request's history points to in the co-engagement table
  (:mod:`mfli.index.coengagement`, learned from events: the item-item signal the towers miss);
- ``trigger``: trigger mode from the engine's neighbour lists (embedding neighbours of the recent items,
  new items included).

They are fused by weighted reciprocal-rank fusion (Cormack et al. 2009): item i scores
``sum_l w_l / (RRF_K + rank_l(i))`` over the lists it appears in (rank 0 = best; ``w_user`` = 1).
Ranks, not scores, because the three scores live on unrelated scales. Items without training events
have no co-engagement row, so the co-engagement weight would always pass them by; they take that share
at their better rank in the user and trigger lists instead (:attr:`BlendWeights.new_items_best_rank`),
as if the co-engagement list agreed with the list that ranks them best, which keeps new items reachable. The weights are chosen on the validation split (:func:`choose_blend_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RRF_K = 60  # Cormack et al.'s constant: damps the head so one list's top item cannot decide alone
COENGAGEMENT_GRID = (0.0, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)
TRIGGER_GRID = (0.0, 0.2, 0.5)


@dataclass(frozen=True)
class BlendWeights:
    """Weights of the co-engagement and trigger lists, relative to user mode's 1."""

    coengagement: float = 0.5
    trigger: float = 0.2
    # items without training events take the co-engagement weight at their better rank in the user and
    # trigger lists (the co-engagement table cannot rank them)
    new_items_best_rank: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def blend(user: np.ndarray, coengagement: np.ndarray | None, trigger: np.ndarray | None,
          weights: BlendWeights, known: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ranked id lists into the top k.

    Args:
        user, coengagement, trigger: ``(B, K_l)`` int64 ranked ids, -1 padding (None: list absent).
        known: sorted int64 ids of the items with a co-engagement row (the items with training events).

    Returns:
        ids ``(B, k)`` int64 (-1 padding) and fused scores ``(B, k)`` float32 (-inf padding).
    """
    B = user.shape[0]
    ids = np.full((B, k), -1, np.int64)
    sc = np.full((B, k), -np.inf, np.float32)
    credit_new = weights.new_items_best_rank and weights.coengagement > 0
    for b in range(B):
        parts, gains = [], []
        urow = user[b][user[b] >= 0]
        parts.append(urow)
        gains.append(1.0 / (RRF_K + np.arange(len(urow))))
        if coengagement is not None and weights.coengagement:
            crow = coengagement[b][coengagement[b] >= 0]
            parts.append(crow)
            gains.append(weights.coengagement / (RRF_K + np.arange(len(crow))))
        trow = trigger[b][trigger[b] >= 0] if trigger is not None else np.zeros(0, np.int64)
        if weights.trigger and len(trow):
            parts.append(trow)
            gains.append(weights.trigger / (RRF_K + np.arange(len(trow))))
        if credit_new:
            # items without a co-engagement row get its weight at their better rank in the other lists
            cand = np.concatenate([urow, trow])
            rank = np.concatenate([np.arange(len(urow)), np.arange(len(trow))])
            new = ~_isin_sorted(cand, known)
            if new.any():
                cand, rank = cand[new], rank[new]
                order = np.lexsort((rank, cand))
                cand, rank = cand[order], rank[order]
                first = np.ones(len(cand), bool)
                first[1:] = cand[1:] != cand[:-1]
                parts.append(cand[first])
                gains.append(weights.coengagement / (RRF_K + rank[first]))
        allid = np.concatenate(parts)
        if not len(allid):
            continue
        uniq, inv = np.unique(allid, return_inverse=True)
        score = np.bincount(inv, weights=np.concatenate(gains))
        n = min(k, len(uniq))
        top = np.argsort(-score, kind="stable")[:n]
        ids[b, :n] = uniq[top]
        sc[b, :n] = score[top]
    return ids, sc


def _isin_sorted(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(sorted_ids, values)
    ok = pos < len(sorted_ids)
    ok[ok] = sorted_ids[pos[ok]] == values[ok]
    return ok


def choose_blend_weights(user: np.ndarray, coengagement: np.ndarray, trigger: np.ndarray | None,
                         known: np.ndarray, positives: Sequence[np.ndarray], k: int = 100,
                         coengagement_grid: Sequence[float] = COENGAGEMENT_GRID,
                         trigger_grid: Sequence[float] = TRIGGER_GRID) -> tuple[BlendWeights, dict]:
    """The grid point with the best validation recall@k (ties: the smaller weights, user mode first).

    The lists are those of the validation users (queries = their fit histories); ``positives`` their
    held-out items. Returns the weights and ``{"coengagement/trigger": recall}`` for every point.
    """
    from mfli.eval.metrics import recall_at_k

    table: dict[str, float] = {}
    best: tuple[float, float, float] | None = None
    for wc in coengagement_grid:
        for wt in (trigger_grid if trigger is not None else (0.0,)):
            w = BlendWeights(coengagement=wc, trigger=wt)
            ids, _ = blend(user, coengagement, trigger, w, known, k)
            r = recall_at_k(ids, positives, k)
            table[f"{wc:g}/{wt:g}"] = r
            if best is None or r > best[0] + 1e-12:
                best = (r, wc, wt)
    assert best is not None
    return BlendWeights(coengagement=best[1], trigger=best[2]), table
