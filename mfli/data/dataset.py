"""A dataset in canonical form: interactions, items and users tables plus where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from mfli.data.schema import conform


@dataclass
class Dataset:
    """Canonical tables (see :mod:`mfli.data.schema`).

    Attributes:
        name: short name, e.g. ``"ml-latest-small"``.
        format: detected source format, e.g. ``"movielens-latest"``, ``"amazon-lcrec"``, ``"mfli-parquet"``.
        interactions: (n_events, 4) user_id, item_id, event_ts, weight.
        items: (n_items, 6) item_id, created_at, categories, title, text, brand.
        users: (n_users, 1 + n_features) user_id, features...
        meta: free-form provenance (source path, generator config, timestamp rule...).
    """

    name: str
    format: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def conformed(self) -> "Dataset":
        """Return a copy whose tables are checked and cast to the canonical schemas."""
        return Dataset(
            self.name,
            self.format,
            conform(self.interactions, "interactions", f"{self.name}:interactions"),
            conform(self.items, "items", f"{self.name}:items"),
            conform(self.users, "users", f"{self.name}:users"),
            dict(self.meta),
        )

    def stats(self) -> dict:
        """Summary counts: users/items with at least one event, events, first/last event time (ISO 8601)."""
        inter = self.interactions
        ts = inter["event_ts"]
        return {
            "format": self.format,
            "users": int(inter["user_id"].nunique()),
            "items": int(inter["item_id"].nunique()),
            "interactions": int(len(inter)),
            "first_ts": ts.min().isoformat() if len(inter) else None,
            "last_ts": ts.max().isoformat() if len(inter) else None,
        }
