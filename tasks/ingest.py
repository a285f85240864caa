"""Ingestion task: a dataset folder -> validated -> Feast offline store (day partitions) -> apply ->
materialise. Re-running it for the same window rewrites the same partitions (idempotent).

    python -c "from tasks.ingest import ingest; print(ingest('../shared/datasets/ml-latest-small',
                                                             '.mfli/feast', '.mfli/validation'))"
"""

from __future__ import annotations

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
) -> dict[str, Any]:
    """Load ``dataset_uri``, validate the window's interactions and the items/users tables (result JSON in
    ``validation_dir``), then write, apply and materialise. Nothing is written when validation fails.

    Args:
        start, end: ISO window, widened to whole UTC days; both None = the whole dataset.
        previous_counts: table -> rows of the previous ingestion, for the volume band.
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
    for table, df, scope in (
        ("interactions", inter, scope_for(w["start"], w["end"], prev.get("interactions"))),
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


def ingest_dataset(run: dict) -> dict[str, Any]:
    """Daily DAG task: :func:`ingest` for the run's window; validation results go to ``<work>/validation/``."""
    with scratch_dir() as tmp:
        try:
            out = ingest(
                run["dataset_uri"],
                run["feast_dir"],
                tmp,
                run.get("start"),
                run.get("end"),
                previous_counts=(run.get("params") or {}).get("previous_counts"),
            )
        finally:
            put_dir(run["store_uri"], artifact_uri(run, "validation"), tmp)
    out["validated"] = {
        k: artifact_uri(run, f"validation/{Path(v).name}") for k, v in out["validated"].items()
    }
    return out
