"""Most-popular items of the training window: the floor every retriever must beat.

Usage::

    pop = Popularity(PopularityConfig(half_life_days=30)).fit(train_interactions)
    ids, scores = pop.retrieve(user_histories, k=100)   # the same list for everyone, minus seen items
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mfli.data.errors import DataError


@dataclass
class PopularityConfig:
    """How popularity is counted."""

    window_days: float | None = None  # only events in the last window_days before the newest event count
    half_life_days: float | None = None  # recency weight 0.5 ** (age / half_life); None = plain counts
    use_weight: bool = False  # sum the events' ``weight`` column instead of counting events


class Popularity:
    """Ranks items by (optionally recency-weighted) training popularity.

    Attributes (after :meth:`fit`):
        item_ids: ``(N,)`` int64 catalogue ids, most popular first.
        scores: ``(N,)`` float64 their popularity.
    """

    def __init__(self, cfg: PopularityConfig | None = None) -> None:
        self.cfg = cfg or PopularityConfig()
        self.item_ids = np.zeros(0, dtype=np.int64)
        self.scores = np.zeros(0)

    def fit(self, train_interactions: pd.DataFrame, item_ids: Sequence[int] | np.ndarray | None = None) -> Popularity:
        """Count the training events per item.

        Args:
            train_interactions: rows (user_id, item_id[, event_ts][, weight]); event_ts is needed for
                ``window_days`` / ``half_life_days``, weight for ``use_weight``.
            item_ids: optional catalogue ``(N,)``; its items without events rank last (score 0), after
                the counted ones; events of items outside it are ignored.
        """
        cfg = self.cfg
        df = train_interactions
        if "item_id" not in df.columns:
            raise DataError("train_interactions", "missing column", column="item_id")
        w = np.ones(len(df))
        if cfg.window_days is not None or cfg.half_life_days is not None:
            if "event_ts" not in df.columns:
                raise DataError("train_interactions", "window_days/half_life_days need event times", column="event_ts")
            ts = pd.to_datetime(df["event_ts"], utc=True)
            age_days = ((ts.max() - ts).dt.total_seconds() / 86400.0).to_numpy()
            if cfg.window_days is not None:
                w = w * (age_days <= cfg.window_days)
            if cfg.half_life_days is not None:
                w = w * 0.5 ** (age_days / cfg.half_life_days)
        if cfg.use_weight:
            if "weight" not in df.columns:
                raise DataError("train_interactions", "use_weight needs a weight column", column="weight")
            w = w * df["weight"].to_numpy(dtype=np.float64)
        pop = pd.Series(w).groupby(df["item_id"].to_numpy()).sum()
        if item_ids is not None:
            pop = pop.reindex(np.asarray(item_ids, dtype=np.int64), fill_value=0.0)
        # ties broken by id so the ranking is deterministic
        order = np.lexsort((pop.index.to_numpy(), -pop.to_numpy()))
        self.item_ids = pop.index.to_numpy().astype(np.int64)[order]
        self.scores = pop.to_numpy(dtype=np.float64)[order]
        return self

    def retrieve(
        self,
        user_histories: Sequence[Sequence[int]],
        k: int = 100,
        exclude: str | Sequence[Iterable[int]] | None = "history",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k most popular items per query after dropping excluded ones.

        Args:
            user_histories: B lists of catalogue ids (only read for ``exclude="history"``).
            exclude: ``"history"``, None, or B iterables of ids to drop.

        Returns:
            ids ``(B, k)`` int64 (-1 padding if the catalogue runs out) and scores ``(B, k)`` float32.
        """
        Bq = len(user_histories)
        excl = user_histories if exclude == "history" else exclude
        if excl is not None and len(excl) != Bq:
            raise ValueError(f"exclude has {len(excl)} entries for {Bq} queries")
        pos = ranked_positions(self.item_ids, excl, Bq, k)
        hit = pos >= 0
        ids = np.full((Bq, k), -1, dtype=np.int64)
        sc = np.full((Bq, k), -np.inf, dtype=np.float32)
        ids[hit] = self.item_ids[pos[hit]]
        sc[hit] = self.scores[pos[hit]]
        return ids, sc


def ranked_positions(ranked: np.ndarray, exclude: Sequence[Iterable[int]] | None, B: int, k: int) -> np.ndarray:
    """``(B, k)`` int64 positions in ``ranked`` (``(n,)`` ids, best first) of each query's first ``k`` ids
    not in its ``exclude`` entry (None: nothing excluded), -1 padding: one ranking served to every query
    minus what each has seen (popularity, the trending list)."""
    ex_sets = [set(e) for e in exclude] if exclude is not None else [set()] * B
    m = min(len(ranked), k + max((len(e) for e in ex_sets), default=0))  # at most len(e) of the head drop
    head = ranked[:m]
    out = np.full((B, k), -1, dtype=np.int64)
    for r, e in enumerate(ex_sets):
        keep = np.flatnonzero(~np.isin(head, np.fromiter(e, dtype=np.int64, count=len(e))) if e
                              else np.ones(m, bool))[:k]
        out[r, : len(keep)] = keep
    return out
