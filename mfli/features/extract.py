"""Extraction through Feast: point-in-time training examples, new items of a window, online user features.

All three go through a feature service (``training``, ``item_delta``, ``user_online``), so what a
consumer receives is defined once in ``feature_repo/features.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mfli.features import offline
from mfli.features.repo import FeatureRepo
from mfli.features.window import Window

if TYPE_CHECKING:
    from feast import FeatureStore

#: Feature columns whose missing value has a meaning: no row yet = no events in the window / no history.
COUNT_FEATURES = ("item_cnt_1d", "item_cnt_7d", "item_cnt_30d", "user_cnt_1d", "user_cnt_7d", "user_cnt_30d")
LIST_FEATURES = ("user_attrs", "history_item_ids", "categories", "title_tokens", "text_tokens")
#: Content columns of item_profile, in canonical items order after item_id/created_at.
ITEM_COLUMNS = ("categories", "title", "text", "brand", "title_tokens", "text_tokens")


def _as_list(v: object) -> list:
    """Feast returns list features as lists, numpy arrays or None; normalise to a Python list."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return []
    if isinstance(v, np.ndarray):
        return v.tolist()
    return list(v) if isinstance(v, (list, tuple)) else v  # anything else is left for validation to flag


def _fill(df: pd.DataFrame) -> pd.DataFrame:
    """Give absent rows their meaning (zero counts, empty lists) and the canonical dtypes."""
    for c in COUNT_FEATURES + ("history_len",):
        if c in df:
            df[c] = pd.to_numeric(df[c]).fillna(0).astype("int64")
    if "user_mean_weight_30d" in df:
        df["user_mean_weight_30d"] = pd.to_numeric(df["user_mean_weight_30d"]).fillna(0.0).astype("float32")
    for c in LIST_FEATURES:
        if c in df:
            df[c] = [_as_list(v) for v in df[c]]
    if "history_item_ids" in df:
        df["history_item_ids"] = [
            [int(i) for i in v] if isinstance(v, list) else v for v in df["history_item_ids"]
        ]
    if "created_ts" in df:
        df["created_ts"] = pd.to_datetime(df["created_ts"], utc=True)
    return df


def _historical(store: FeatureStore, entity: pd.DataFrame, service: str) -> pd.DataFrame:
    """``get_historical_features`` for ``service``; every entity row comes back, in entity order.

    Args:
        entity: (n, k) frame with ``event_timestamp`` and every join key the service needs.
    Returns:
        (n, k + n_features) ``entity`` plus the service's feature columns (null: no valid row).
    """
    job = store.get_historical_features(entity_df=entity, features=store.get_feature_service(service))
    out = job.to_df()
    if len(out) != len(entity):  # the offline store must keep every example; never train on a subset
        raise RuntimeError(f"offline store returned {len(out)} rows for {len(entity)} entity rows")
    return out


def training_frame(repo: FeatureRepo, window: Window, service: str = "training") -> pd.DataFrame:
    """Training examples: the interaction log rows in ``window`` joined point-in-time with ``service``.

    Each row sees, per feature view, the latest feature row stamped at or before its ``event_ts`` (and
    within the view's ttl).

    Returns:
        (n_events, 4 + n_features) user_id, item_id, event_ts, weight, then the service's features,
        ordered by (event_ts, user_id, item_id). Missing item content stays null (validation flags it).
    """
    log = offline.read_table(repo.data_root, "interactions", window)
    log = log[window.mask(log["event_ts"])].sort_values(["event_ts", "user_id", "item_id"], kind="stable")
    log = log.reset_index(drop=True)
    if log.empty:
        return log
    entity = log.rename(columns={"event_ts": "event_timestamp"})
    out = _historical(repo.store(), entity, service).rename(columns={"event_timestamp": "event_ts"})
    return _fill(out)


def items_in_window(repo: FeatureRepo, window: Window) -> pd.DataFrame:
    """Items created in ``[window.start, window.end)`` with their ``item_delta`` content features.

    Returns:
        (n_new, 8) item_id, created_at, categories, title, text, brand, title_tokens, text_tokens,
        ordered by (created_at, item_id): the delta pipeline's input.
    """
    store = repo.store()
    prof = offline.read_table(repo.data_root, "item_profile", window)
    prof = prof[window.mask(prof["created_at"])]
    cols = ["item_id", "created_at", *ITEM_COLUMNS]
    if prof.empty:
        return prof[cols].reset_index(drop=True)
    entity = pd.DataFrame({"item_id": prof["item_id"].to_numpy(), "event_timestamp": window.end})
    out = _fill(_historical(store, entity, "item_delta")).rename(columns={"created_ts": "created_at"})
    return out[cols].sort_values(["created_at", "item_id"], kind="stable").reset_index(drop=True)


def online_user_features(repo: FeatureRepo, user_ids: Iterable[int]) -> pd.DataFrame:
    """``user_online`` features from the online store, one row per requested user (request order).

    Users unknown to the online store get zero counts and empty lists.

    Returns:
        (B, 1 + n_features) user_id, history_item_ids, history_len, user_cnt_*, user_mean_weight_30d,
        user_attrs.
    """
    store = repo.store()
    rows = [{"user_id": int(u)} for u in user_ids]
    resp = store.get_online_features(features=store.get_feature_service("user_online"), entity_rows=rows)
    out = pd.DataFrame(resp.to_dict())
    return _fill(out)
