"""Ingestion task: a dataset folder -> validated -> Feast offline store (day partitions) -> apply ->
materialise. Re-running it for the same window rewrites the same partitions (idempotent).

    python -c "from tasks.ingest import ingest; print(ingest('../shared/datasets/ml-latest-small',
                                                             '.mfli/feast', '.mfli/validation'))"
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from mfli.features.window import Window
from mfli.validation.runner import validate
from tasks.artifacts import artifact_uri, put_dir, scratch_dir
from tasks.validate import scope_for

os.environ.setdefault("FEAST_USAGE", "False")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def feature_repo(feast_dir: str | Path, data_root: str | None = None):
    """The run's Feast repository: ``feature_repo/`` copied to ``feast_dir`` (definitions refreshed, data
    kept), data root from ``data_root``, else ``MFLI_FEAST_DATA``, else ``feast_dir/data``; environment
    from ``MFLI_FEAST_ENV``."""
    from mfli.features.repo import copy_repo

    return copy_repo(
        feast_dir,
        data_root or os.environ.get("MFLI_FEAST_DATA"),
        env=os.environ.get("MFLI_FEAST_ENV", "local"),
    )


def ingest(
    dataset_uri: str,
    feast_dir: str,
    validation_dir: str | Path,
    start: str | None = None,
    end: str | None = None,
    previous_counts: dict[str, int] | None = None,
    materialize: bool = True,
    data_root: str | None = None,
    require_events: bool = True,
) -> dict[str, Any]:
    """Load ``dataset_uri``, validate the window's interactions and the items/users tables (result JSON in
    ``validation_dir``), then write, apply and materialise. Nothing is written when validation fails.

    Args:
        start, end: ISO window, widened to whole UTC days; both None = the whole dataset.
        previous_counts: table -> rows of the previous ingestion, for the volume band.
        require_events: a window without interactions is a validation failure (daily training);
            False (hourly deltas: a quiet hour's day may have no events yet) skips that check only.
    Returns:
        ``{"window", "rows", "seconds", "feast_dir", "data_root", "validated"}`` (rows per source table).
    """
    from mfli.data.loaders import load_dataset
    from mfli.features.ingest import ingest as ingest_ds

    t0 = time.perf_counter()
    ds = load_dataset(dataset_uri)
    prev = previous_counts or {}
    window = Window.of(start, end).whole_days() if start and end else None
    inter = ds.interactions[window.mask(ds.interactions["event_ts"])] if window else ds.interactions
    w = window.as_dict() if window else {"start": None, "end": None}
    validated = {}
    checks = [("interactions", inter, scope_for(w["start"], w["end"], prev.get("interactions")))]
    if inter.empty and not require_events:
        checks = []  # nothing to validate; items and users are still checked
    for table, df, scope in (
        *checks,
        ("items", ds.items, scope_for(previous_count=prev.get("items"))),
        ("users", ds.users, scope_for(previous_count=prev.get("users"))),
    ):
        validated[table] = validate(df, table, validation_dir, scope, name=f"ingest_{table}").result_path
    repo = feature_repo(feast_dir, data_root)
    report = ingest_ds(ds, repo, window, materialize=materialize)
    report.seconds["total"] = time.perf_counter() - t0
    return {
        "window": report.window,
        "rows": report.rows,
        "seconds": {k: round(v, 3) for k, v in report.seconds.items()},
        "materialized_to": report.materialized_to,
        "feast_dir": str(repo.path),
        "data_root": repo.data_root,
        "validated": validated,
    }


#: ``<feast_dir>/ingested.json``: the last ingestions, ``{window key: ingest output}``.
INGESTED_FILE = "ingested.json"
_INGESTED_KEEP = 64  # entries kept (windows of the last days)


def _ingest_key(run: dict) -> str:
    """Same dataset content (fingerprint) and same whole-day window = same partitions written."""
    from tasks.runs import dataset_fingerprint

    window = Window.of(run["start"], run["end"]).whole_days().as_dict() if run.get("start") and run.get("end") else {}
    fp = run.get("dataset_fingerprint") or dataset_fingerprint(run["dataset_uri"])
    return f"{fp}:{window.get('start')}:{window.get('end')}:{os.environ.get('MFLI_FEAST_DATA', '')}"


def _ingested(feast_dir: str) -> dict[str, Any]:
    path = Path(feast_dir) / INGESTED_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}  # a torn file: ingest again


def _remember(feast_dir: str, key: str, out: dict[str, Any]) -> None:
    done = {k: v for k, v in _ingested(feast_dir).items() if k != key}
    done[key] = out
    done = dict(list(done.items())[-_INGESTED_KEEP:])
    path = Path(feast_dir) / INGESTED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(done))
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new file


def _still_there(done: dict[str, Any]) -> bool:
    """The partitions an earlier ingestion wrote are still in its data root (a wiped offline store is
    ingested again, whatever the marker says)."""
    from mfli.features.offline import partition_days

    try:
        root = done["data_root"]
        if not partition_days(root, "item_profile"):
            return False
        w = done.get("window") or {}
        if (done.get("rows") or {}).get("interactions") and w.get("start") and w.get("end"):
            days = set(partition_days(root, "interactions"))
            return any(w["start"][:10] <= d < w["end"][:10] for d in days)
        return True
    except (OSError, KeyError, TypeError, ValueError):
        return False


def ingest_dataset(run: dict) -> dict[str, Any]:
    """DAG task: :func:`ingest` for the run's window; validation results go to ``<work>/validation/``.

    Hourly runs of one day ingest the same whole-day window: when this feature repo already ingested
    the same dataset content (fingerprint) for the same window, the earlier result is returned with
    ``"reused": True`` and nothing is rewritten (a changed or repaired dataset has a new fingerprint and
    is ingested again). Delta runs accept a window without events (``require_events=False``).
    """
    key = _ingest_key(run)
    done = _ingested(run["feast_dir"]).get(key)
    if done is not None and _still_there(done):
        return {**done, "reused": True}
    with scratch_dir() as tmp:
        try:
            out = ingest(
                run["dataset_uri"],
                run["feast_dir"],
                tmp,
                run.get("start"),
                run.get("end"),
                previous_counts=(run.get("params") or {}).get("previous_counts"),
                require_events=run.get("kind") != "delta",
            )
        finally:
            put_dir(run["store_uri"], artifact_uri(run, "validation"), tmp)
    out["validated"] = {
        k: artifact_uri(run, f"validation/{Path(v).name}") for k, v in out["validated"].items()
    }
    _remember(run["feast_dir"], key, out)
    return out
