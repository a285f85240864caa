"""Feature space: vocabularies that turn canonical item/user tables into padded integer tensors.

Id conventions shared by every vocabulary: 0 = padding / missing, 1 = out-of-vocabulary (OOV),
2.. = known values. Item ids seen in training get an id index 1..n (0 = unknown id), so an item
that was never trained on is encoded from its content alone (the cold-start path).

Vocabularies are fitted on the *training* items only: a token that no training item carries would
never receive a gradient, so it is OOV by construction rather than a random vector.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mfli.data.errors import DataError
from mfli.data.schema import CATEGORY_SEP
from mfli.model.config import FeatureConfig, from_dict, to_dict

PAD, OOV = 0, 1
_TOKEN_RE = re.compile(r"[a-z0-9]+")
_FORMAT_VERSION = 1


def tokenize(text: str | None) -> list[str]:
    """Lowercase alphanumeric runs: ``"Toy Story (1995)" -> ["toy", "story", "1995"]``."""
    if not text or not isinstance(text, str):
        return []
    return _TOKEN_RE.findall(text.lower())


def category_tokens(categories: Iterable[str] | None) -> list[str]:
    """Every hierarchical prefix of every path, unique in order: ``["A>B"] -> ["A", "A>B"]``."""
    out: dict[str, None] = {}
    if categories is None:
        return []
    for path in categories:
        if not isinstance(path, str) or not path:
            continue
        parts = [p.strip() for p in path.split(CATEGORY_SEP)]
        for i in range(1, len(parts) + 1):
            out[CATEGORY_SEP.join(parts[:i])] = None
    return list(out)


def leaf_categories(categories: Iterable[str] | None) -> list[str]:
    """The most specific paths of an item, unique in order: paths that are a prefix of another of
    its paths are dropped (``["A", "A>B", "A>B>C", "D"] -> ["A>B>C", "D"]``)."""
    if categories is None:
        return []
    paths = list(dict.fromkeys(CATEGORY_SEP.join(p.strip() for p in c.split(CATEGORY_SEP))
                               for c in categories if isinstance(c, str) and c))
    return [p for p in paths if not any(q.startswith(p + CATEGORY_SEP) for q in paths)]


def _item_text_tokens(title: Any, text: Any, cap: int) -> list[str]:
    toks = list(dict.fromkeys(tokenize(title) + tokenize(text)))  # title first, unique
    return toks[:cap]


def _cats(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [str(v) for v in value]


@dataclass
class ItemFeatures:
    """Encoded items; all tensors share the first dimension N.

    Attributes:
        item_ids: ``(N,)`` int64 raw item ids.
        id_index: ``(N,)`` int64 id-embedding row (0 = id unseen in training).
        categories: ``(N, C)`` int64 category ids incl. hierarchical prefixes (0 = pad).
        tokens: ``(N, T)`` int64 title/text token ids (0 = pad, 1 = OOV).
        brand: ``(N,)`` int64 (0 = no brand, 1 = OOV).
        age: ``(N,)`` int64 age bucket at the reference time (last bucket = unknown).
    """

    item_ids: torch.Tensor
    id_index: torch.Tensor
    categories: torch.Tensor
    tokens: torch.Tensor
    brand: torch.Tensor
    age: torch.Tensor

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    def rows(self, idx: torch.Tensor) -> ItemFeatures:
        """Subset by row positions ``idx`` (any shape is flattened)."""
        idx = idx.reshape(-1)
        return ItemFeatures(*(t[idx] for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.item_ids, self.id_index, self.categories, self.tokens, self.brand, self.age)

    def to(self, device: torch.device | str) -> ItemFeatures:
        return ItemFeatures(*(t.to(device) for t in self.tensors()))

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        names = ("item_ids", "id_index", "categories", "tokens", "brand", "age")
        return {f"{prefix}{n}": t.contiguous() for n, t in zip(names, self.tensors())}

    @staticmethod
    def from_state(state: dict[str, torch.Tensor], prefix: str) -> ItemFeatures:
        names = ("item_ids", "id_index", "categories", "tokens", "brand", "age")
        return ItemFeatures(*(state[f"{prefix}{n}"] for n in names))


@dataclass
class UserFeatures:
    """Encoded users: ``user_ids (U,)`` int64 and ``values (U, K)`` int64 feature-token ids (K may be 0)."""

    user_ids: torch.Tensor
    values: torch.Tensor

    def to(self, device: torch.device | str) -> UserFeatures:
        return UserFeatures(self.user_ids.to(device), self.values.to(device))


class FeatureSpace:
    """Vocabularies for items (categories, text tokens, brand, age, known ids) and user features.

    Build with :meth:`fit`, encode with :meth:`encode_items` / :meth:`encode_users`, persist with
    :meth:`save` / :meth:`load` (JSON, no pickle).
    """

    def __init__(
        self,
        config: FeatureConfig,
        categories: list[str],
        tokens: list[str],
        brands: list[str],
        user_columns: list[str],
        user_numeric_edges: dict[str, list[float]],
        user_values: list[str],
        known_item_ids: np.ndarray,
        reference_time: pd.Timestamp,
    ) -> None:
        self.config = config
        self.categories = categories
        self.tokens = tokens
        self.brands = brands
        self.user_columns = user_columns
        self.user_numeric_edges = user_numeric_edges
        self.user_values = user_values
        self.known_item_ids = np.sort(np.asarray(known_item_ids, dtype=np.int64))
        self.reference_time = pd.Timestamp(reference_time)
        if self.reference_time.tzinfo is None:
            self.reference_time = self.reference_time.tz_localize("UTC")
        self._cat_index = {c: i + 2 for i, c in enumerate(categories)}
        self._tok_index = {t: i + 2 for i, t in enumerate(tokens)}
        self._brand_index = {b: i + 2 for i, b in enumerate(brands)}
        self._user_index = {v: i + 2 for i, v in enumerate(user_values)}

    # sizes the towers need -------------------------------------------------------------------
    @property
    def n_ids(self) -> int:
        """Rows of the item id embedding: known ids + the "unknown" row 0."""
        return len(self.known_item_ids) + 1

    @property
    def n_categories(self) -> int:
        return len(self.categories) + 2

    @property
    def n_tokens(self) -> int:
        return len(self.tokens) + 2

    @property
    def n_brands(self) -> int:
        return len(self.brands) + 2

    @property
    def n_age(self) -> int:
        return len(self.config.age_bucket_days) + 2  # buckets + "unknown"

    @property
    def n_user_values(self) -> int:
        return len(self.user_values) + 2

    # fitting ---------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        items: pd.DataFrame,
        users: pd.DataFrame | None,
        train_item_ids: np.ndarray,
        reference_time: pd.Timestamp,
        config: FeatureConfig | None = None,
    ) -> FeatureSpace:
        """Fit vocabularies on the rows of ``items`` whose id is in ``train_item_ids``.

        Args:
            items: canonical items table (the catalogue).
            users: canonical users table (``user_id`` + optional feature columns) or None.
            train_item_ids: ids of items with training interactions; they get id embeddings.
            reference_time: "now" for item age buckets (the training cutoff).
        """
        cfg = config or FeatureConfig()
        for col in ("item_id", "categories", "title", "text", "brand"):
            if col not in items.columns:
                raise DataError("items", f"missing column {col!r} needed for item features", column=col)
        known = np.unique(np.asarray(train_item_ids, dtype=np.int64))
        train_items = items[items["item_id"].isin(known)]
        cat_count: Counter[str] = Counter()
        tok_count: Counter[str] = Counter()
        brand_count: Counter[str] = Counter()
        for cats, title, text, brand in zip(train_items["categories"], train_items["title"],
                                            train_items["text"], train_items["brand"]):
            cat_count.update(category_tokens(_cats(cats)))
            tok_count.update(_item_text_tokens(title, text, cfg.max_text_tokens))
            if isinstance(brand, str) and brand:
                brand_count[brand] += 1
        categories = [c for c, _ in cat_count.most_common(cfg.category_vocab_size)]
        tokens = [t for t, n in tok_count.most_common(cfg.text_vocab_size) if n >= cfg.text_min_count]
        brands = [b for b, n in brand_count.most_common(cfg.brand_vocab_size) if n >= cfg.brand_min_count]

        user_columns: list[str] = []
        edges: dict[str, list[float]] = {}
        values: list[str] = []
        if users is not None and len(users.columns) > 1:
            if "user_id" not in users.columns:
                raise DataError("users", "missing column 'user_id'", column="user_id")
            user_columns = [c for c in users.columns if c != "user_id"]
            val_count: Counter[str] = Counter()
            for col in user_columns:
                series = users[col]
                if pd.api.types.is_numeric_dtype(series) and series.nunique() > cfg.numeric_bins:
                    qs = np.nanquantile(series.to_numpy(dtype=float), np.linspace(0, 1, cfg.numeric_bins + 1)[1:-1])
                    edges[col] = [float(q) for q in np.unique(qs)]
                val_count.update(t for t in cls._user_tokens(series, col, edges.get(col)) if t is not None)
            values = [v for v, _ in val_count.most_common(cfg.user_value_vocab_size)]
        return cls(cfg, categories, tokens, brands, user_columns, edges, values, known, reference_time)

    @staticmethod
    def _user_tokens(series: pd.Series, col: str, edges: list[float] | None) -> list[str | None]:
        if edges is not None:
            x = series.to_numpy(dtype=float)
            bins = np.searchsorted(np.asarray(edges), x, side="right")
            return [None if np.isnan(v) else f"{col}=bin{b}" for v, b in zip(x, bins)]
        return [None if pd.isna(v) else f"{col}={v}" for v in series]

    # encoding --------------------------------------------------------------------------------
    def id_index(self, item_ids: np.ndarray) -> np.ndarray:
        """Raw ids ``(N,)`` -> id-embedding rows ``(N,)`` (0 for ids not seen in training)."""
        ids = np.asarray(item_ids, dtype=np.int64)
        if len(self.known_item_ids) == 0:
            return np.zeros(len(ids), dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.known_item_ids, ids), len(self.known_item_ids) - 1)
        return np.where(self.known_item_ids[pos] == ids, pos + 1, 0).astype(np.int64)

    def age_bucket(self, created_at: pd.Series, reference_time: pd.Timestamp | None = None) -> np.ndarray:
        """Age buckets ``(N,)`` of ``created_at`` at ``reference_time`` (default: the fitted one)."""
        ref = pd.Timestamp(reference_time) if reference_time is not None else self.reference_time
        ts = pd.to_datetime(created_at, utc=True)
        days = ((ref - ts) / pd.Timedelta(days=1)).to_numpy(dtype=float)
        edges = np.asarray(self.config.age_bucket_days, dtype=float)
        b = np.searchsorted(edges, np.maximum(days, 0.0), side="right")
        return np.where(np.isnan(days), len(edges) + 1, b).astype(np.int64)

    def encode_items(self, items: pd.DataFrame, reference_time: pd.Timestamp | None = None) -> ItemFeatures:
        """Canonical items table ``(N rows)`` -> :class:`ItemFeatures`; unknown values map to OOV."""
        for col in ("item_id", "categories", "title", "text", "brand", "created_at"):
            if col not in items.columns:
                raise DataError("items", f"missing column {col!r} needed to encode items", column=col)
        cfg = self.config
        n = len(items)
        cats = np.zeros((n, cfg.max_categories), dtype=np.int64)
        toks = np.zeros((n, cfg.max_text_tokens), dtype=np.int64)
        brand = np.zeros(n, dtype=np.int64)
        for r, (c, title, text, b) in enumerate(zip(items["categories"], items["title"], items["text"], items["brand"])):
            ci = [self._cat_index.get(x, OOV) for x in category_tokens(_cats(c))][: cfg.max_categories]
            cats[r, : len(ci)] = ci
            ti = [self._tok_index.get(x, OOV) for x in _item_text_tokens(title, text, cfg.max_text_tokens)]
            toks[r, : len(ti)] = ti
            if isinstance(b, str) and b:
                brand[r] = self._brand_index.get(b, OOV)
        ids = items["item_id"].to_numpy(dtype=np.int64)
        return ItemFeatures(
            item_ids=torch.from_numpy(ids.copy()),
            id_index=torch.from_numpy(self.id_index(ids)),
            categories=torch.from_numpy(cats),
            tokens=torch.from_numpy(toks),
            brand=torch.from_numpy(brand),
            age=torch.from_numpy(self.age_bucket(items["created_at"], reference_time)),
        )

    def encode_users(self, users: pd.DataFrame) -> UserFeatures:
        """Users table -> :class:`UserFeatures` ``values (U, K)``, K = number of feature columns."""
        if "user_id" not in users.columns:
            raise DataError("users", "missing column 'user_id'", column="user_id")
        ids = users["user_id"].to_numpy(dtype=np.int64)
        vals = np.zeros((len(users), len(self.user_columns)), dtype=np.int64)
        for j, col in enumerate(self.user_columns):
            if col not in users.columns:
                continue  # a feature absent at serving time is "missing", not an error
            toks = self._user_tokens(users[col], col, self.user_numeric_edges.get(col))
            vals[:, j] = [PAD if t is None else self._user_index.get(t, OOV) for t in toks]
        return UserFeatures(torch.from_numpy(ids.copy()), torch.from_numpy(vals))

    # persistence -----------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format_version": _FORMAT_VERSION,
            "config": to_dict(self.config),
            "categories": self.categories,
            "tokens": self.tokens,
            "brands": self.brands,
            "user_columns": self.user_columns,
            "user_numeric_edges": self.user_numeric_edges,
            "user_values": self.user_values,
            "known_item_ids": self.known_item_ids.tolist(),
            "reference_time": self.reference_time.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict) -> FeatureSpace:
        if data.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"feature space format {data.get('format_version')!r} != {_FORMAT_VERSION}")
        return cls(
            from_dict(FeatureConfig, data["config"]),
            list(data["categories"]),
            list(data["tokens"]),
            list(data["brands"]),
            list(data["user_columns"]),
            {k: list(v) for k, v in data["user_numeric_edges"].items()},
            list(data["user_values"]),
            np.asarray(data["known_item_ids"], dtype=np.int64),
            pd.Timestamp(data["reference_time"]),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpace:
        return cls.from_json(json.loads(Path(path).read_text()))
