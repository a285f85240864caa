"""Facet weights for items without training events, chosen on the validation split.

A delta's items (added after the snapshot) are embedded from content alone, so their facet scores need
not be on the scale of the snapshot's items: ``RetrieverConfig.new_item_facet_weights`` lets serving rank
them by ``sum_f w'_f q_f . e_f`` while every other item keeps ``sum_f w_f q_f . e_f``. This module picks
w' without reading the test events and without assuming which share of what users want is new:

1. *simulate cold items*: a seeded random share (``sim_frac``) of the items with training events is
   embedded from content alone (``item_embeddings(use_ids=False)``, the path a new item takes); the rest
   keep their id + content embeddings;
2. score the validation users (:func:`mfli.eval.validation.validation_set`: each user's latest training
   events held out) by exact search over those items, the simulated-cold ones weighted by w', with the
   user's history excluded;
3. coordinate search over :data:`GRID`, one facet at a time from w' = 1 (the rule without the field),
   keeping a change only when it raises validation recall@100 by more than ``min_rel_gain`` (relative),
   so noise does not move the serving rule away from the old one.

The simulated cold items are positives at their natural rate, so the rule is judged by overall recall:
what a new item gains must outweigh what the warm items it displaces lose. A split whose test
positives are *all* new items (amazon-scientific / cold) rewards any boost of new items; this
procedure does not see that split's composition, by design.

Example::

    choice = choose_new_item_weights(model, ds.items, split.train, validation_set(split.train))
    RetrieverConfig(merge="sum", new_item_facet_weights=choice.weights)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: candidate values of each w'_f (1 = the facet weighs as for every other item)
GRID = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
SIM_FRAC = 0.1  # share of the items with training events embedded content-only to stand for new items
MIN_REL_GAIN = 0.005  # a coordinate move must raise validation recall@100 by more than 0.5% (relative)


@dataclass
class NewItemWeightChoice:
    """What :func:`choose_weights` chose and why.

    Attributes:
        weights: ``(F,)`` chosen w'.
        recall: validation recall@k with ``weights``.
        recall_equal: validation recall@k with w' = 1 (new items scored like every other item).
        cold_recall: recall@k over the simulated-cold positives only, with ``weights``.
        cold_recall_equal: the same with w' = 1.
        tried: ``[(w', recall)]`` every point evaluated, in order.
    """

    weights: tuple[float, ...]
    recall: float
    recall_equal: float
    cold_recall: float
    cold_recall_equal: float
    tried: list[tuple[tuple[float, ...], float]] = field(default_factory=list)


def choose_weights(queries: np.ndarray, embeddings: np.ndarray, cold_embeddings: np.ndarray, item_ids: np.ndarray,
                   simulated: np.ndarray, histories: Sequence[Sequence[int]], positives: Sequence[np.ndarray],
                   k: int = 100, grid: Sequence[float] = GRID, passes: int = 2,
                   min_rel_gain: float = MIN_REL_GAIN) -> NewItemWeightChoice:
    """Coordinate search for w' (see the module docstring), on arrays.

    Args:
        queries: ``(U, F, d)`` validation users' query embeddings.
        embeddings: ``(N, F, d)`` items' serving embeddings (id + content).
        cold_embeddings: ``(N, F, d)`` the same items embedded from content alone.
        item_ids: ``(N,)`` int64.
        simulated: ``(N,)`` bool, the items standing for new ones (scored from ``cold_embeddings`` with w').
        histories: U lists of item ids to exclude (the users' histories).
        positives: U arrays of held-out item ids.
        k: recall cut-off.
        grid: candidate values of each w'_f.
        passes: sweeps over the facets.
        min_rel_gain: relative recall gain a move needs.

    Returns:
        :class:`NewItemWeightChoice`.
    """
    from mfli.eval.metrics import recall_per_user
    from mfli.serve.exact import exact_search

    F = embeddings.shape[1]
    simulated = np.asarray(simulated, bool)
    emb = np.where(simulated[:, None, None], cold_embeddings, embeddings).astype(np.float32)
    sim_ids = item_ids[simulated]
    cold_pos = [np.asarray(p)[np.isin(p, sim_ids)] for p in positives]
    cache: dict[tuple[float, ...], tuple[float, float]] = {}
    tried: list[tuple[tuple[float, ...], float]] = []

    def score(w: tuple[float, ...]) -> float:
        if w not in cache:
            scale = np.where(simulated[:, None], np.asarray(w, np.float32)[None, :], np.float32(1.0))
            got, _ = exact_search(queries, emb * scale[:, :, None], k, item_ids, exclude=histories)
            r = float(np.nanmean(recall_per_user(got, positives, k)))
            rc = recall_per_user(got, cold_pos, k)
            cache[w] = (r, float(np.nanmean(rc)) if np.isfinite(rc).any() else float("nan"))
            tried.append((w, r))
        return cache[w][0]

    best = tuple([1.0] * F)
    best_r = score(best)
    for _ in range(passes):
        moved = False
        for f in range(F):
            for v in grid:
                cand = best[:f] + (float(v),) + best[f + 1:]
                r = score(cand)
                if r > best_r * (1.0 + min_rel_gain):
                    best, best_r, moved = cand, r, True
        if not moved:
            break
    one = tuple([1.0] * F)
    return NewItemWeightChoice(best, best_r, cache[one][0], cache[best][1], cache[one][1], tried)


def choose_new_item_weights(model, items: pd.DataFrame, train: pd.DataFrame, validation,
                            sim_frac: float = SIM_FRAC, seed: int = 0, max_users: int | None = 2000,
                            **kw) -> NewItemWeightChoice:
    """:func:`choose_weights` for a trained model on its validation split.

    Args:
        model: a :class:`~mfli.train.TrainedModel`.
        items: the catalogue (canonical items table).
        train: the training events (the items with events in it form the searched catalogue).
        validation: :class:`~mfli.eval.validation.ValidationSet` of ``train``.
        sim_frac: share of those items embedded content-only (simulated new items).
        seed: seeds the simulated items and the user sample.
        max_users: evaluate at most this many validation users (seeded sample); None = all.
        kw: passed to :func:`choose_weights` (grid, passes, min_rel_gain, k).
    """
    known = np.unique(train["item_id"].to_numpy(np.int64))
    cat = items[items["item_id"].isin(known)].reset_index(drop=True)
    if cat.empty or len(validation.users) == 0:
        raise ValueError("choose_new_item_weights: no items with training events or no validation users")
    ids = cat["item_id"].to_numpy(np.int64)
    emb = model.item_embeddings(cat).numpy()
    cold = model.item_embeddings(cat, use_ids=False).numpy()
    rng = np.random.default_rng(seed)
    simulated = np.zeros(ids.size, bool)
    simulated[rng.choice(ids.size, max(1, round(sim_frac * ids.size)), replace=False)] = True
    sel = np.arange(len(validation.users))
    if max_users and sel.size > max_users:
        sel = np.sort(rng.choice(sel, max_users, replace=False))
    users = validation.users[sel]
    hist = [validation.histories[i] for i in sel]
    pos = [validation.positives[i] for i in sel]
    queries = model.user_embeddings(users, hist).numpy()
    return choose_weights(queries, emb, cold, ids, simulated, hist, pos, **kw)
