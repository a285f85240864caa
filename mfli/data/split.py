"""Train/test splits of a canonical dataset (REFERENCE.md section 4) and the validation hold-out.

Three kinds, each returning train events, test events and the **cold item** set, with no leakage:

- ``"time"``: a global cutoff T. Train = events strictly before T, test = events at/after T. Cold items
  = catalogue items (and test items) with no event before T: they can enter the index only through
  the delta path, from content.
- ``"last"``: leave-last-out. Each user's last ``n`` events by time are test; users with ``<= n``
  events stay in train only. Cold items = test items never seen in train.
- ``"user_time"``: per-user time split. Each user's latest ``test_frac`` of events by time are test
  (``round(test_frac * m)``, at least 1, at most ``m - 1``); users with a single event stay in train.
  Every user with >= 2 events is a test user with several positives, so methods separate on small
  datasets where a global cutoff leaves few test users (ml-latest-small: 610 test users against 28
  under ``"time"``). Unlike ``"time"`` it does not hold one global cutoff: a user's train may be later
  than another user's test (the common "temporal leave-n-out" protocol). Cold items = test items
  never seen in train.
- ``"cold"``: cold-item holdout. A random ``frac`` of the items that have events is hidden: all their
  events are test, everything else is train. Cold items = the hidden items.

Every kind partitions the events: train ∪ test = all events, train ∩ test = ∅, and no cold item
occurs in train. Ties in time are broken by row order (a stable sort), so splits are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mfli.data.dataset import Dataset
from mfli.data.errors import DataError

SPLIT_KINDS = ("time", "last", "user_time", "cold")


@dataclass
class Split:
    """A train/test split of interactions.

    Attributes:
        train: (n_train, 4) interactions the model may learn from.
        test: (n_test, 4) held-out interactions (the ground truth of evaluation).
        cold_items: (n_cold,) int64 sorted item ids absent from ``train`` (see the module doc per kind).
        kind: ``"time"``, ``"last"``, ``"user_time"`` or ``"cold"``.
        cutoff: the global time cutoff T for ``"time"``, else None.
    """

    train: pd.DataFrame
    test: pd.DataFrame
    cold_items: np.ndarray
    kind: str
    cutoff: pd.Timestamp | None = None

    def summary(self) -> dict:
        """Counts that describe the split, JSON-ready."""
        train_users = self.train["user_id"].unique()
        test_users = self.test["user_id"].unique()
        cold = np.isin(self.test["item_id"].to_numpy(), self.cold_items)
        return {
            "kind": self.kind,
            "cutoff": self.cutoff.isoformat() if self.cutoff is not None else None,
            "train_events": len(self.train),
            "test_events": len(self.test),
            "train_users": len(train_users),
            "test_users": len(test_users),
            "test_users_in_train": int(np.isin(test_users, train_users).sum()),
            "train_items": int(self.train["item_id"].nunique()),
            "test_items": int(self.test["item_id"].nunique()),
            "cold_items": len(self.cold_items),
            "test_events_on_cold_items": int(cold.sum()),
        }


def _events(ds: Dataset) -> pd.DataFrame:
    inter = ds.interactions
    missing = [c for c in ("user_id", "item_id", "event_ts") if c not in inter.columns]
    if missing:
        raise DataError(f"{ds.name}:interactions", f"missing column(s) {missing}", column=missing[0])
    return inter


def _ts_int(df: pd.DataFrame) -> np.ndarray:
    """Event times as int64 nanoseconds (UTC)."""
    return pd.DatetimeIndex(df["event_ts"]).asi8


def _cold_outside(train: pd.DataFrame, candidates: np.ndarray) -> np.ndarray:
    """Sorted unique ids in ``candidates`` that never occur in ``train``."""
    ids = np.unique(np.asarray(candidates, dtype=np.int64))
    return ids[~np.isin(ids, train["item_id"].to_numpy(dtype=np.int64))]


def _parts(inter: pd.DataFrame, test_mask: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    return inter[~test_mask].reset_index(drop=True), inter[test_mask].reset_index(drop=True)


def time_split(ds: Dataset, cutoff: pd.Timestamp | str | None = None, test_frac: float = 0.2) -> Split:
    """Global time cutoff T: train = events before T, test = events at/after T.

    Args:
        ds: canonical dataset.
        cutoff: T (a naive time is read as UTC). Default: the event time at rank
            ``floor((1 - test_frac) * n_events)``, so about ``test_frac`` of events are test (events
            sharing T's timestamp all go to test).
        test_frac: share of events to test when ``cutoff`` is None, in (0, 1).

    Cold items: every catalogue item (``ds.items`` plus any item with events) with no event before T.
    """
    inter = _events(ds)
    ts = _ts_int(inter)
    if cutoff is None:
        if not 0.0 < test_frac < 1.0:
            raise ValueError(f"time_split: test_frac must be in (0, 1), got {test_frac}")
        if len(ts) == 0:
            raise DataError(f"{ds.name}:interactions", "no events to split")
        k = min(len(ts) - 1, int(np.floor((1.0 - test_frac) * len(ts))))
        t_ns = int(np.partition(ts, k)[k])
        cut = pd.Timestamp(t_ns, tz="UTC")
    else:
        cut = pd.Timestamp(cutoff)
        cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut.tz_convert("UTC")
        t_ns = cut.value
    train, test = _parts(inter, ts >= t_ns)
    catalogue = np.concatenate([ds.items["item_id"].to_numpy(dtype=np.int64),
                                inter["item_id"].to_numpy(dtype=np.int64)])
    return Split(train, test, _cold_outside(train, catalogue), "time", cut)


def leave_last_out(ds: Dataset, n: int = 1) -> Split:
    """Each user's last ``n`` events by time are test; users with ``<= n`` events stay train only.

    Cold items: test items that never occur in train.
    """
    if n < 1:
        raise ValueError(f"leave_last_out: n must be >= 1, got {n}")
    inter = _events(ds)
    # each user's last n events, for users with more than n (the others keep all theirs in train)
    test_mask = _latest_per_user(inter, lambda sizes: np.where(sizes > n, n, 0))
    train, test = _parts(inter, test_mask)
    return Split(train, test, _cold_outside(train, test["item_id"].to_numpy()), "last", None)


def _latest_per_user(inter: pd.DataFrame, n_test) -> np.ndarray:
    """Row mask of each user's latest events by time (ties by row order); ``n_test(sizes) -> (n_users,)``
    gives how many per user, users ordered by id."""
    users = inter["user_id"].to_numpy(dtype=np.int64)
    ts = _ts_int(inter)
    order = np.lexsort((np.arange(len(inter)), ts, users))  # by user, then time, then row
    su = users[order]
    new = np.ones(len(su), dtype=bool)
    new[1:] = su[1:] != su[:-1]
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(su)))
    from_end = np.repeat(starts + sizes, sizes) - 1 - np.arange(len(su))
    mask = np.zeros(len(inter), dtype=bool)
    mask[order] = from_end < np.repeat(np.asarray(n_test(sizes), dtype=np.int64), sizes)
    return mask


def user_time_split(ds: Dataset, test_frac: float = 0.2) -> Split:
    """Each user's latest ``test_frac`` of events (``round``, at least 1, at most m - 1) are test.

    Users with one event stay in train. Cold items: test items that never occur in train.
    """
    if not 0.0 < test_frac < 1.0:
        raise ValueError(f"user_time_split: test_frac must be in (0, 1), got {test_frac}")
    inter = _events(ds)
    test_mask = _latest_per_user(
        inter, lambda m: np.where(m >= 2, np.clip(np.round(test_frac * m), 1, m - 1), 0))
    train, test = _parts(inter, test_mask)
    return Split(train, test, _cold_outside(train, test["item_id"].to_numpy()), "user_time", None)


def cold_item_holdout(ds: Dataset, frac: float = 0.1, seed: int = 0) -> Split:
    """Hide a random ``frac`` of the items that have events from training entirely.

    Test = every event on a hidden item and nothing else; train = all other events.
    Cold items = the hidden items (``round(frac * n_items_with_events)``, at least 1).
    """
    if not 0.0 < frac < 1.0:
        raise ValueError(f"cold_item_holdout: frac must be in (0, 1), got {frac}")
    inter = _events(ds)
    items = inter["item_id"].to_numpy(dtype=np.int64)
    candidates = np.unique(items)
    if len(candidates) < 2:
        raise DataError(f"{ds.name}:interactions", "cold_item_holdout needs events on at least 2 items")
    n_hide = min(len(candidates) - 1, max(1, round(frac * len(candidates))))
    hidden = np.sort(np.random.default_rng(seed).choice(candidates, size=n_hide, replace=False))
    train, test = _parts(inter, np.isin(items, hidden))
    return Split(train, test, hidden.astype(np.int64), "cold", None)


def make_split(ds: Dataset, kind: str, seed: int = 0, **kw) -> Split:
    """Dispatch on ``kind`` (``"time"``, ``"last"``, ``"user_time"``, ``"cold"``); ``kw`` go to that split function.

    ``seed`` only matters for ``"cold"`` (the others are deterministic).
    """
    if kind == "time":
        return time_split(ds, **kw)
    if kind == "last":
        return leave_last_out(ds, **kw)
    if kind == "user_time":
        return user_time_split(ds, **kw)
    if kind == "cold":
        return cold_item_holdout(ds, seed=seed, **kw)
    raise ValueError(f"unknown split kind {kind!r}; expected one of {list(SPLIT_KINDS)}")


def train_valid_split(train: pd.DataFrame, valid_frac: float = 0.05,
                      seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out each user's most recent training events for early stopping.

    A user with ``m`` events gives its last ``k`` by time to validation, where
    ``k = floor(valid_frac * m)`` plus one more with probability equal to the fractional part (so
    about ``valid_frac`` of all events overall, even when users are short), capped at ``m - 1``:
    every user keeps at least one fitting event, and users with a single event give none. Using the
    most recent events mirrors the test splits, which also look forward in time.

    Returns:
        (fit, valid): a partition of ``train``'s rows (original order kept in each).
    """
    if not 0.0 <= valid_frac < 1.0:
        raise ValueError(f"train_valid_split: valid_frac must be in [0, 1), got {valid_frac}")
    users = train["user_id"].to_numpy(dtype=np.int64)
    ts = _ts_int(train)
    order = np.lexsort((np.arange(len(train)), ts, users))
    su = users[order]
    new = np.ones(len(su), dtype=bool)
    new[1:] = su[1:] != su[:-1]
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(su)))
    want = valid_frac * sizes
    k = np.floor(want).astype(np.int64)
    k += np.random.default_rng(seed).random(len(sizes)) < (want - k)
    k = np.minimum(k, sizes - 1)
    from_end = np.repeat(starts + sizes, sizes) - 1 - np.arange(len(su))
    valid_mask = np.zeros(len(train), dtype=bool)
    valid_mask[order] = from_end < np.repeat(k, sizes)
    return train[~valid_mask].reset_index(drop=True), train[valid_mask].reset_index(drop=True)
