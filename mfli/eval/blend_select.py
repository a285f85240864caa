"""Choosing blend mode for a snapshot: its co-engagement table and its list weights, on validation only.

:func:`select_blend` learns the co-engagement table (:func:`mfli.index.coengagement.build_coengagement`)
from the training events, its hyper-parameter chosen on the validation split
(:func:`mfli.eval.validation.validation_set`: each user's latest training events held out), and picks
the blend weights (:func:`mfli.serve.blend.choose_blend_weights`) with a second table fitted on that
split's fit events alone, so no held-out event is seen while choosing. The quality benchmark's
``mfli_blend`` and the daily DAG's evaluation both call it. Usage::

    sel = select_blend(model, snapshot.retriever(), snapshot.index, train_events)
    snapshot = Snapshot(model, index, serving=ServingConfig(blend=sel.config), coengagement=sel.table)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mfli.index.coengagement import CoEngagement, CoEngagementConfig, build_coengagement
from mfli.serve.blend import (
    BlendConfig,
    BlendWeights,
    blend_lists,
    choose_blend_weights,
    choose_new_item_credit,
)


@dataclass
class BlendSelection:
    """What :func:`select_blend` chose.

    Attributes:
        table: the co-engagement table fitted on all training events (what is served).
        config: the blend settings, weights chosen on validation.
        valid_recall: validation recall@100 of every grid point (``"coengagement/trigger"``).
        seconds: ``{"table": ..., "choose": ...}`` wall-clock seconds.
    """

    table: CoEngagement
    config: BlendConfig
    valid_recall: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def fit_tables(train: pd.DataFrame, validation: Any, cfg: CoEngagementConfig | None = None
               ) -> tuple[CoEngagement, CoEngagement]:
    """``(table, fit_table)``: the table on all of ``train`` (hyper-parameter chosen on ``validation``)
    and, with the same hyper-parameter, the table on ``validation.fit`` that the weights are chosen with."""
    cfg = cfg or CoEngagementConfig()
    table = build_coengagement(train, valid=validation, cfg=cfg)
    return table, build_coengagement(validation.fit, cfg=cfg, param=table.param)


def keep_only(ids: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """``ids (B, K)`` ranked lists (-1 padding) with the ids not in sorted ``allowed`` removed, order kept."""
    keep = np.isin(ids, allowed) & (ids >= 0)
    order = np.argsort(~keep, axis=1, kind="stable")  # kept first, in their order
    out = np.take_along_axis(np.where(keep, ids, -1), order, axis=1)
    return out


def existing_items(train: pd.DataFrame, items: pd.DataFrame | None = None) -> np.ndarray:
    """Sorted ids of the items that existed while ``train``'s events happened: those with an event, and
    the catalogue's items created no later than its last event (``items.created_at``, when present).

    The validation split's lists keep these when the new-item credit is chosen: an item in the catalogue
    that nobody engaged with is a miss a credit can cost, while an item created after training (the test
    period's new items) did not exist then and would be a miss no credit could have avoided.
    """
    seen = np.unique(train["item_id"].to_numpy(np.int64))
    if items is None or "created_at" not in items.columns or len(train) == 0:
        return seen
    created = pd.to_datetime(items["created_at"], utc=True, errors="coerce")
    last = pd.to_datetime(train["event_ts"], utc=True).max()
    early = items["item_id"].to_numpy(np.int64)[(created <= last).to_numpy()]
    return np.union1d(seen, early)


def choose_blend(model: Any, retriever: Any, index: Any, validation: Any, fit_table: CoEngagement,
                 depth: int = 200, triggers: int = 10, existing: np.ndarray | None = None
                 ) -> tuple[BlendConfig, dict[str, float]]:
    """The blend settings with the best validation recall@100, and every grid point's recall.

    The validation users' fit histories are the queries; ``fit_table`` must not have seen their
    held-out events (:func:`fit_tables`). Without validation users the weights are 0 (user mode alone).
    ``existing``: sorted ids of the items that existed during training (:func:`existing_items`; default:
    the items with fit or held-out events), the candidates the new-item credit is chosen over."""
    if len(validation.users) == 0:  # nothing to choose on: user mode alone (the other weights 0)
        return BlendConfig(BlendWeights(coengagement=0.0, trigger=0.0), depth, triggers), {}
    q = model.user_embeddings(validation.users, validation.histories).numpy()
    user, co, trig, trend = blend_lists(retriever, fit_table, index, q, validation.histories, depth, triggers)
    # items without a training event cannot be held out, so on validation they are only ever misses; where
    # the test period engages with them they are hits. Left in, they would tilt the weights against
    # the lists that find new items, so the weights are chosen on lists without them
    eligible = np.unique(np.concatenate([validation.fit["item_id"].to_numpy(np.int64),
                                         validation.valid["item_id"].to_numpy(np.int64)]))
    tids = None if trig is None else trig.item_ids
    weights, valid_recall = choose_blend_weights(
        keep_only(user.item_ids, eligible), co, None if tids is None else keep_only(tids, eligible),
        fit_table.item_ids, validation.positives, trending=trend, new_items_grid=())  # the credit: below
    # the credit for new items: the held-out events' items the fitted model never saw stand for the items
    # that arrive after the snapshot; items that existed but drew no event stay in as the misses a credit costs
    if existing is not None:
        eligible = np.union1d(eligible, existing)
    weights, tried = choose_new_item_credit(
        keep_only(user.item_ids, eligible), co, None if tids is None else keep_only(tids, eligible),
        fit_table.item_ids, validation.positives, weights, trending=trend)
    valid_recall.update(tried)
    return BlendConfig(weights, depth, triggers), valid_recall


def select_blend(model: Any, retriever: Any, index: Any, train: pd.DataFrame, *, validation: Any = None,
                 coengagement: CoEngagementConfig | None = None, depth: int = 200, triggers: int = 10,
                 seed: int = 0, items: pd.DataFrame | None = None) -> BlendSelection:
    """:func:`fit_tables` then :func:`choose_blend`.

    Args:
        model: anything with ``user_embeddings(user_ids, histories) -> (U, F, d)`` tensor (a
            :class:`~mfli.model.trained.TrainedModel`).
        retriever, index: the snapshot's retriever (user and trigger mode) and the index it searches.
        train: the training events (``user_id``, ``item_id``, ``event_ts``).
        validation: a :class:`~mfli.eval.validation.ValidationSet` of ``train`` (default: built with ``seed``).
        depth, triggers: :class:`~mfli.serve.blend.BlendConfig`'s list length and trigger count.
        items: the catalogue (``item_id``, ``created_at``), for :func:`existing_items` (None: the items
            with training events).
    """
    from mfli.eval.validation import validation_set

    vs = validation if validation is not None else validation_set(train, seed=seed)
    t0 = time.perf_counter()
    table, fit_table = fit_tables(train, vs, coengagement)
    table_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    config, valid_recall = choose_blend(model, retriever, index, vs, fit_table, depth, triggers,
                                        existing=existing_items(train, items))
    return BlendSelection(table, config, valid_recall, {"table": table_s, "choose": time.perf_counter() - t0})
