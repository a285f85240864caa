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
from their rank in the trigger list instead (:attr:`BlendWeights.new_items_from_trigger`), which keeps
new items reachable. The weights are chosen on the validation split (:func:`choose_blend_weights`).
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
    new_items_from_trigger: bool = True  # new items take the co-engagement share from the trigger list

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
    lists = [(user, 1.0)]
    if coengagement is not None and weights.coengagement:
        lists.append((coengagement, weights.coengagement))
    for b in range(B):
        parts, gains = [], []
        for arr, w in lists:
            row = arr[b][arr[b] >= 0]
            parts.append(row)
            gains.append(w / (RRF_K + np.arange(len(row))))
        if trigger is not None and (weights.trigger or weights.new_items_from_trigger):
            row = trigger[b][trigger[b] >= 0]
            w = np.full(len(row), weights.trigger)
            if weights.new_items_from_trigger and weights.coengagement:
                pos = np.searchsorted(known, row)
                new = pos >= len(known)
                new[~new] = known[pos[~new]] != row[~new]
                w[new] += weights.coengagement
            keep = w > 0  # a list with no weight adds no candidates
            parts.append(row[keep])
            gains.append(w[keep] / (RRF_K + np.flatnonzero(keep)))
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
