"""Run resolution for the DAGs: windows, embedded defaults and deterministic snapshot ids.

A run is described by one small JSON-able dict that every later task receives through XCom.
The snapshot id hashes everything that determines the published artifacts (dataset fingerprint,
window, training configuration, code version) so that re-running a day, or a backfill over it,
gives the same id and publishes nothing new.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import mfli
from mfli.revision import code_revision

#: Params that change the published artifacts (thresholds and shard counts do not).
_ARTIFACT_PARAMS = ("lookback_days", "holdout_days", "facets", "epochs", "seed", "blend")


def mfli_home() -> Path:
    """Root of the embedded mode's files (``MFLI_HOME``, default ``.mfli`` in the working directory)."""
    return Path(os.environ.get("MFLI_HOME", ".mfli")).resolve()


def default_dataset_uri() -> str:
    """``MFLI_DATASET_URI`` when set, else the embedded demo catalogue under ``MFLI_HOME``."""
    return os.environ.get("MFLI_DATASET_URI") or str(mfli_home() / "data" / "synthetic")


def default_store_uri() -> str:
    """``MFLI_STORE_URI`` when set (production: ``s3://bucket/prefix``), else the local object store."""
    return os.environ.get("MFLI_STORE_URI") or (mfli_home() / "store").as_uri()


def default_feast_dir() -> str:
    return str(mfli_home() / "feast")


def _as_utc(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no timezone: pass an ISO 8601 time with an offset")
    # a plain stdlib datetime (Airflow hands pendulum objects whose isoformat can differ)
    return datetime.fromtimestamp(dt.timestamp(), tz=timezone.utc)


def dataset_fingerprint(path: str | Path) -> str:
    """sha256 over the dataset folder's file names, sizes and first/last MiB of each file.

    Cheap on 100M-event catalogues, and it changes whenever a file's content is rewritten in practice.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(root).as_posix()}\0{size}\0".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return h.hexdigest()


def snapshot_id_for(end: datetime, fingerprint: str, params: dict) -> str:
    """``YYYYmmddTHHMM-<12 hex>``: sortable by window end, unique per inputs."""
    key = {
        "end": end.isoformat(),
        "dataset": fingerprint,
        "params": {k: params.get(k) for k in _ARTIFACT_PARAMS},
        "code": mfli.__version__,
        # the code itself, not only the version: a fix makes a re-run of the same day a new snapshot
        "revision": code_revision(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{end:%Y%m%dT%H%M}-{digest}"


def snapshot_window_end(snapshot_id: str) -> datetime | None:
    """The window end a snapshot id starts with (``YYYYmmddTHHMM-...`` from :func:`snapshot_id_for`, or
    ``YYYYmmddTHHMMSSZ-...`` from ``mfli.store.snapshots``), UTC; None when the id has neither form."""
    head = str(snapshot_id).split("-", 1)[0]
    for fmt in ("%Y%m%dT%H%M", "%Y%m%dT%H%M%SZ"):
        try:
            return datetime.strptime(head, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def ends_later(a: str, b: str) -> bool:
    """Whether snapshot ``a``'s window ends after snapshot ``b``'s. Ids with the same window end (a
    re-run of the same day with other code or params) are not ordered: their hashes say nothing about
    time. Ids without a window end fall back to comparing the ids."""
    ea, eb = snapshot_window_end(a), snapshot_window_end(b)
    if ea is None or eb is None:
        return a > b
    return ea > eb


def resolve_daily_run(params: dict, data_interval_end: Any, run_id: str) -> dict:
    """The daily DAG's run dict: window ``[end - lookback, end)``, holdout cutoff, ids and URIs.

    ``end`` is the data interval's end on scheduled runs and backfills; manual runs may have no data
    interval in Airflow 3, so the ``end`` Param wins when it is given. The Params are parsed here, once
    (:class:`tasks.params.DailyParams`); the run dict carries their normalised values.
    """
    from tasks.params import DailyParams

    p = DailyParams.parse(params)
    end = _as_utc(p.end) or _as_utc(data_interval_end)
    if end is None:
        raise ValueError("no window end: the run has no data interval and the 'end' Param is empty")
    dataset_uri = p.dataset_uri or default_dataset_uri()
    fingerprint = dataset_fingerprint(dataset_uri)
    snapshot_id = snapshot_id_for(end, fingerprint, p.to_dict())
    store_uri = p.store_uri or default_store_uri()
    start = end - timedelta(days=float(p.lookback_days))
    cutoff = end - timedelta(days=float(p.holdout_days))
    return {
        "kind": "daily",
        "run_id": run_id,
        "snapshot_id": snapshot_id,
        "dataset_uri": dataset_uri,
        "dataset_fingerprint": fingerprint,
        "store_uri": store_uri,
        "work_uri": f"{store_uri.rstrip('/')}/runs/{snapshot_id}",
        "feast_dir": default_feast_dir(),
        "start": start.isoformat(),
        "cutoff": cutoff.isoformat(),
        "end": end.isoformat(),
        "params": p.to_dict(),
    }


def resolve_delta_run(params: dict, data_interval_start: Any, data_interval_end: Any, run_id: str,
                      watermark: dict | None = None) -> dict:
    """The hourly DAG's run dict: window ``[start, end)`` from Params, else the data interval.

    Runs triggered by a new snapshot pass its ``watermark`` (``{"snapshot_id", "data_end"}``, see
    tasks/watermark.py): their window starts at the snapshot's data end, so items created between
    the data end and the publication are indexed for the new snapshot. Without an interval the window
    ends at the current hour (the ``end`` Param wins). The Params are parsed here, once
    (:class:`tasks.params.DeltaParams`).
    """
    from tasks.params import DeltaParams

    p = DeltaParams.parse(params)
    end = _as_utc(p.end) or _as_utc(data_interval_end)
    mark = _as_utc(watermark["data_end"]) if watermark else None
    start = _as_utc(p.start) or mark or _as_utc(data_interval_start)
    if end is None or (mark is not None and not p.end and end <= mark):
        now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
        end = max(now, end) if end is not None else now
    if start is None or start >= end:
        start = end - timedelta(hours=1)
    store_uri = p.store_uri or default_store_uri()
    window = f"{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}"
    return {
        "kind": "delta",
        "run_id": run_id,
        "window": window,
        "dataset_uri": p.dataset_uri or default_dataset_uri(),
        "store_uri": store_uri,
        "work_uri": f"{store_uri.rstrip('/')}/runs/delta-{window}",
        "feast_dir": default_feast_dir(),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "watermark": watermark,
        "params": p.to_dict(),
    }


def shard_ranges(n: int, requested: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` row ranges of ``n`` rows for ``requested`` shards (1..n shards)."""
    import numpy as np

    shards = max(1, min(int(requested), n))
    bounds = np.linspace(0, n, shards + 1).astype(int)
    return [(int(bounds[i]), int(bounds[i + 1])) for i in range(shards)]
