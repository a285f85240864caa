"""Ingestion: a canonical Dataset -> the offline store's day partitions -> Feast apply -> online store.

Re-running a window rewrites that window's partitions (never appends), so retries and backfills are
idempotent. Derived tables (window counts, histories) are recomputed from the interaction log read back
from the store, including ``SnapshotConfig.lookback()`` before the window, so ingesting a long period
in daily windows gives the same rows as ingesting it at once.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import pandas as pd

from mfli.data.dataset import Dataset
from mfli.features import offline, snapshots
from mfli.features.repo import FeatureRepo
from mfli.features.window import Window


@dataclass
class IngestReport:
    """What one ingestion run wrote."""

    window: dict[str, str]  # ISO start/end of the whole-day window that was rewritten
    rows: dict[str, int]  # source table -> rows written for the window
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds
    materialized_to: dict[str, str] = field(default_factory=dict)  # view -> ISO end in the online store

    def as_dict(self) -> dict:
        return asdict(self)


def write_offline(
    ds: Dataset, data_root: str, window: Window | None = None, cfg: snapshots.SnapshotConfig | None = None
) -> IngestReport:
    """Write ``ds`` (canonical tables) into the parquet sources for ``window`` (default: all of it).

    The window is widened to whole UTC days. Events and items outside it are ignored; ``ds`` must hold
    every event of the window's days, and ``ds.users`` the attributes of their users.
    """
    cfg = cfg or snapshots.SnapshotConfig()
    inter, items = ds.interactions, ds.items
    win = (window or Window.covering(inter["event_ts"], items["created_at"])).whole_days()
    report = IngestReport(window=win.as_dict(), rows={})
    t = time.perf_counter()

    ev = inter[win.mask(inter["event_ts"])]
    report.rows["interactions"] = offline.write_partitions(ev, data_root, "interactions", ev["event_ts"], win)
    prof = snapshots.item_profile_rows(items[win.mask(items["created_at"])], cfg)
    report.rows["item_profile"] = offline.write_partitions(
        prof, data_root, "item_profile", prof["_part_ts"], win
    )
    report.seconds["write_sources"] = time.perf_counter() - t

    t = time.perf_counter()
    # Derived rows depend on events before the window: read them back from the store, not from ds.
    log = offline.read_table(data_root, "interactions", Window(win.start - cfg.lookback(), win.end))
    derived = {
        "item_stats": snapshots.item_stats_rows(log, win),
        "user_profile": snapshots.user_profile_rows(log, ds.users, win),
        "user_history": snapshots.user_history_rows(log, win, cfg),
    }
    for table, rows in derived.items():
        report.rows[table] = offline.write_partitions(rows, data_root, table, rows["_part_ts"], win)
    report.seconds["derive"] = time.perf_counter() - t
    return report


def ingest(
    ds: Dataset,
    repo: FeatureRepo,
    window: Window | None = None,
    cfg: snapshots.SnapshotConfig | None = None,
    materialize: bool = True,
) -> IngestReport:
    """Write ``ds`` for ``window`` into ``repo``'s sources, ``apply`` the definitions and (optionally)
    ``materialize_incremental`` up to the window end.

    Returns:
        an :class:`IngestReport` with rows per table and seconds per stage.
    """
    report = write_offline(ds, repo.data_root, window, cfg)
    t = time.perf_counter()
    repo.apply()
    report.seconds["apply"] = time.perf_counter() - t
    if materialize:
        t = time.perf_counter()
        days = [
            d for t in ("interactions", "item_profile") for d in offline.partition_days(repo.data_root, t)[:1]
        ]
        start = pd.Timestamp(min(days), tz="UTC") if days else pd.Timestamp(report.window["start"])
        report.materialized_to = repo.materialize(report.window["end"], start_if_new=start)
        report.seconds["materialize"] = time.perf_counter() - t
    return report
