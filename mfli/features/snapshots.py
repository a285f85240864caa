"""Feature tables as time series: item content, item/user window counts, user histories.

Every row carries the instant from which it is true, so Feast's point-in-time join (latest row at or
before the event) never hands a training example information from after its event:

- window counts are daily snapshots stamped at midnight ``T``, counting events in ``[T - w, T)``; a
  snapshot is written only where some count changes (the day after an event day, and the days the
  event leaves each window), which is the same join result as one row per day at a fraction of rows;
- a user also gets a row at the first event of each active day, carrying the attributes and the
  snapshot as of that midnight, so every training row sees the user's attributes;
- a history row is stamped 1 us after the event it adds, so the event's own training row sees only
  earlier items.

Snapshot rows are owned by the day they close (``T - 1 day``), opening and history rows by their
event's day; every builder returns that day as a ``_part_ts`` column, the partition the row is written
to, which makes re-running a window rewrite exactly the same rows.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from mfli.features.window import DAY, Window

#: Count windows in days; the feature names in feature_repo/features.py are built from these.
WINDOWS_DAYS: tuple[int, ...] = (1, 7, 30)
#: History rows are visible this long after their event (feature_repo: 1 us after the event).
HISTORY_DELAY = pd.Timedelta(microseconds=1)
_NS_PER_DAY = 86_400 * 10**9
_TOKEN = re.compile(r"\w+", re.UNICODE)


@dataclass
class SnapshotConfig:
    """How feature time series are built."""

    history_len: int = 50  # items kept in user_history (most recent last); the user tower's sequence length
    history_max_age_days: int = 365  # older events drop out of the history (matches user_history ttl)
    title_tokens: int = 32  # title tokens kept in item_profile.title_tokens
    text_tokens: int = 128  # text tokens kept in item_profile.text_tokens

    def lookback(self) -> pd.Timedelta:
        """How far before a window the interaction log must be read to compute its rows exactly."""
        return pd.Timedelta(days=max(max(WINDOWS_DAYS) + 1, self.history_max_age_days))


def tokens(text: str | None, limit: int) -> list[str]:
    """Lower-cased word tokens, at most ``limit``; ``None`` -> ``[]``."""
    if not text:
        return []
    return _TOKEN.findall(text.lower())[:limit]


def item_profile_rows(items: pd.DataFrame, cfg: SnapshotConfig | None = None) -> pd.DataFrame:
    """Canonical items (N, 6) -> item_profile rows (N, 9): content plus tokens and ``created_ts``."""
    cfg = cfg or SnapshotConfig()
    out = items[["item_id", "created_at", "categories", "title", "text", "brand"]].copy()
    out["categories"] = [list(c) for c in out["categories"]]
    out["title_tokens"] = [tokens(t, cfg.title_tokens) for t in out["title"]]
    out["text_tokens"] = [tokens(t, cfg.text_tokens) for t in out["text"]]
    out["created_ts"] = out["created_at"]
    out["_part_ts"] = out["created_at"]
    return out.reset_index(drop=True)


def _ns(ts: pd.Series) -> np.ndarray:
    """UTC nanoseconds since the epoch, int64 (n,)."""
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]").astype("int64")


def _days(ts: pd.Series) -> np.ndarray:
    """UTC day numbers since 1970-01-01, int64 (n,)."""
    return _ns(ts) // _NS_PER_DAY


def _day_ts(days: np.ndarray) -> pd.DatetimeIndex:
    return pd.to_datetime(days.astype("int64") * _NS_PER_DAY, utc=True)


class _DailyCounts:
    """Per-key cumulative daily counts/weight sums for O(log n) window sums.

    Args:
        keys: (n,) int64 entity ids of events.
        days: (n,) int64 UTC day numbers of events.
        weights: (n,) float event weights.
    """

    def __init__(self, keys: np.ndarray, days: np.ndarray, weights: np.ndarray) -> None:
        frame = pd.DataFrame({"k": keys, "d": days, "w": weights.astype("float64")})
        daily = frame.groupby(["k", "d"], sort=True).agg(n=("w", "size"), w=("w", "sum")).reset_index()
        self.keys = daily["k"].to_numpy()
        self.days = daily["d"].to_numpy()
        self.cum_n = np.concatenate([[0], np.cumsum(daily["n"].to_numpy())])
        self.cum_w = np.concatenate([[0.0], np.cumsum(daily["w"].to_numpy())])
        # Sort order is (key, day); a composite (key_rank, day) code keeps one searchsorted for all keys.
        self.uniq, rank = np.unique(self.keys, return_inverse=True)
        self.day0 = int(self.days.min()) if len(self.days) else 0
        self.stride = int(self.days.max() - self.day0 + 4 * max(WINDOWS_DAYS) + 8) if len(self.days) else 1
        self.codes = rank.astype("int64") * self.stride + (self.days - self.day0 + 2 * max(WINDOWS_DAYS) + 2)
        self.key_start = np.searchsorted(self.codes, np.arange(len(self.uniq)) * self.stride, side="left")

    def upto(self, keys: np.ndarray, last_day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative (count, weight sum) of events of ``keys`` on days <= ``last_day``; shapes (m,)."""
        rank = np.searchsorted(self.uniq, keys)
        x = np.clip(last_day - self.day0 + 2 * max(WINDOWS_DAYS) + 2, 0, None)
        pos = np.searchsorted(self.codes, rank * self.stride + x, side="right")
        start = self.key_start[rank]
        n = np.where(pos > start, self.cum_n[pos] - self.cum_n[start], 0)
        w = np.where(pos > start, self.cum_w[pos] - self.cum_w[start], 0.0)
        return n.astype("int64"), w

    def change_points(self, window: Window) -> pd.DataFrame:
        """(key, T) pairs, T a midnight day number in (window.start, window.end], where a count changes."""
        shifts = [1] + [w + 1 for w in WINDOWS_DAYS]
        lo, hi = _days(pd.Series([window.start])).item(), _days(pd.Series([window.end])).item()
        keys = np.concatenate([self.keys] * len(shifts))
        tdays = np.concatenate([self.days + s for s in shifts])
        keep = (tdays > lo) & (tdays <= hi)
        return pd.DataFrame({"k": keys[keep], "T": tdays[keep]}).drop_duplicates().sort_values(["T", "k"])

    def counts_at(self, keys: np.ndarray, tdays: np.ndarray) -> dict[str, np.ndarray]:
        """Window counts at midnight ``tdays``: ``cnt_{w}d`` (m,) int64 and ``wsum_30d`` (m,) float64."""
        out: dict[str, np.ndarray] = {}
        n_hi, w_hi = self.upto(keys, tdays - 1)
        for w in WINDOWS_DAYS:
            n_lo, w_lo = self.upto(keys, tdays - 1 - w)
            out[f"cnt_{w}d"] = n_hi - n_lo
            if w == max(WINDOWS_DAYS):
                out["wsum"] = w_hi - w_lo
        return out


def item_stats_rows(interactions: pd.DataFrame, window: Window) -> pd.DataFrame:
    """item_stats snapshots owned by ``window`` (midnights T in (start, end]).

    Args:
        interactions: canonical events covering at least ``[window.start - 31 days, window.end)``.
    Returns:
        (m, 6) item_id, snapshot_ts, item_cnt_1d, item_cnt_7d, item_cnt_30d, _part_ts.
    """
    window = window.whole_days()
    dc = _DailyCounts(
        interactions["item_id"].to_numpy("int64"),
        _days(interactions["event_ts"]),
        interactions["weight"].to_numpy(),
    )
    cp = dc.change_points(window)
    cnt = dc.counts_at(cp["k"].to_numpy(), cp["T"].to_numpy())
    out = pd.DataFrame({"item_id": cp["k"].to_numpy(), "snapshot_ts": _day_ts(cp["T"].to_numpy())})
    for w in WINDOWS_DAYS:
        out[f"item_cnt_{w}d"] = cnt[f"cnt_{w}d"]
    out["_part_ts"] = out["snapshot_ts"] - DAY
    return out


def user_attrs(users: pd.DataFrame) -> dict[int, list[str]]:
    """user_id -> ``["col=value", ...]`` from the dataset's user feature columns (nulls skipped)."""
    cols = [c for c in users.columns if c != "user_id"]
    if not cols:
        return {}
    ids = users["user_id"].to_numpy("int64")
    values = users[cols].astype("object").where(users[cols].notna(), None).to_numpy()
    return {int(u): [f"{c}={v}" for c, v in zip(cols, row) if v is not None] for u, row in zip(ids, values)}


def user_profile_rows(interactions: pd.DataFrame, users: pd.DataFrame, window: Window) -> pd.DataFrame:
    """user_profile rows owned by ``window``: midnight snapshots T in (start, end] plus, for each
    active day in the window, a row at the user's first event of that day (counts as of that midnight).

    Args:
        interactions: canonical events covering at least ``[window.start - 31 days, window.end)``.
        users: canonical users (user_id + feature columns) for the attributes.
    Returns:
        (m, 8) user_id, snapshot_ts, user_cnt_{1,7,30}d, user_mean_weight_30d, user_attrs, _part_ts.
    """
    window = window.whole_days()
    uid = interactions["user_id"].to_numpy("int64")
    days = _days(interactions["event_ts"])
    dc = _DailyCounts(uid, days, interactions["weight"].to_numpy())
    cp = dc.change_points(window)
    snap = pd.DataFrame({"user_id": cp["k"].to_numpy(), "T": cp["T"].to_numpy()})
    snap["snapshot_ts"] = _day_ts(snap["T"].to_numpy())
    snap["_part_ts"] = snap["snapshot_ts"] - DAY
    inside = window.mask(interactions["event_ts"]).to_numpy()
    ts_ns = _ns(interactions["event_ts"])
    first = (
        pd.DataFrame({"user_id": uid[inside], "T": days[inside], "ns": ts_ns[inside]})
        .sort_values("ns", kind="stable")
        .drop_duplicates(["user_id", "T"], keep="first")
    )
    first["snapshot_ts"] = pd.to_datetime(first.pop("ns").to_numpy(), utc=True)
    first["_part_ts"] = first["snapshot_ts"]
    rows = pd.concat([snap, first], ignore_index=True)
    cnt = dc.counts_at(rows["user_id"].to_numpy(), rows["T"].to_numpy())
    for w in WINDOWS_DAYS:
        rows[f"user_cnt_{w}d"] = cnt[f"cnt_{w}d"]
    n30 = cnt[f"cnt_{max(WINDOWS_DAYS)}d"]
    rows["user_mean_weight_30d"] = np.where(n30 > 0, cnt["wsum"] / np.maximum(n30, 1), 0.0).astype("float32")
    attrs = user_attrs(users)
    rows["user_attrs"] = [attrs.get(int(u), []) for u in rows["user_id"].to_numpy()]
    rows = rows.drop_duplicates(["user_id", "snapshot_ts"]).sort_values(
        ["snapshot_ts", "user_id"], kind="stable"
    )
    return rows.drop(columns="T").reset_index(drop=True)


def user_history_rows(
    interactions: pd.DataFrame, window: Window, cfg: SnapshotConfig | None = None
) -> pd.DataFrame:
    """One user_history row per (user, event time) in ``window``, stamped ``event_ts + 1 us``.

    Each row lists the user's most recent items (oldest first), at most ``cfg.history_len`` of them and
    none older than ``cfg.history_max_age_days`` before the event, including the event's own item(s).

    Args:
        interactions: canonical events covering at least ``[window.start - lookback, window.end)``.
    Returns:
        (m, 5) user_id, history_ts, history_item_ids (list[int64]), history_len, _part_ts.
    """
    cfg = cfg or SnapshotConfig()
    window = window.whole_days()
    ev = interactions[["user_id", "item_id", "event_ts"]].sort_values(
        ["user_id", "event_ts", "item_id"], kind="stable"
    )
    uid = ev["user_id"].to_numpy("int64")
    item = ev["item_id"].to_numpy("int64")
    ts_ns = _ns(ev["event_ts"])
    n = len(ev)
    if n == 0:
        cols = {"user_id": "int64", "history_ts": "datetime64[ns, UTC]", "history_item_ids": "object"}
        cols |= {"history_len": "int64", "_part_ts": "datetime64[ns, UTC]"}
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in cols.items()})
    idx = np.arange(n)
    new_user = np.r_[True, uid[1:] != uid[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, idx, 0))
    # First event within max age: search in (user, time) order with a per-user offset on the time axis.
    _, rank = np.unique(uid, return_inverse=True)
    t0 = ts_ns.min()
    max_age = cfg.history_max_age_days * _NS_PER_DAY
    span = int(ts_ns.max() - t0) + max_age + 1
    if span * (int(rank.max()) + 1) < 2**62:
        code = rank.astype("int64") * span + (ts_ns - t0)
        age_start = np.searchsorted(code, code - max_age, side="left")
    else:  # int64 overflow guard for huge id x time ranges: per-user search
        age_start = np.empty(n, dtype="int64")
        bounds = np.r_[np.flatnonzero(new_user), n]
        for a, b in itertools.pairwise(bounds):
            age_start[a:b] = a + np.searchsorted(ts_ns[a:b], ts_ns[a:b] - max_age, side="left")
    start = np.maximum.reduce([user_start, age_start, idx - cfg.history_len + 1])
    # Several events at one instant become one row listing all of them (the last row of the group).
    last_of_instant = np.r_[(uid[1:] != uid[:-1]) | (ts_ns[1:] != ts_ns[:-1]), True]
    ev_ts = pd.to_datetime(ts_ns, utc=True)
    keep = last_of_instant & window.mask(pd.Series(ev_ts)).to_numpy()
    rows = idx[keep]
    lengths = rows - start[rows] + 1
    offsets = np.r_[0, np.cumsum(lengths)]
    gather = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths) + np.repeat(start[rows], lengths)
    hist = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(item[gather], pa.int64()))
    return pd.DataFrame(
        {
            "user_id": uid[rows],
            "history_ts": ev_ts[rows] + HISTORY_DELAY,
            "history_item_ids": hist.to_pandas(),
            "history_len": lengths.astype("int64"),
            "_part_ts": ev_ts[rows],
        }
    )
