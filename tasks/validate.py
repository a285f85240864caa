"""Great Expectations gates as task functions: validate, record the result next to the run's artifacts,
and only then write the artifact. A failed gate raises ``mfli.validation.ValidationFailed`` before
anything is written, so no downstream task can read the bad batch.

    validate_frame(df, "interactions", "runs/42/validation", start="2024-01-01", end="2024-01-08")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from mfli.features.window import Window
from mfli.validation.runner import ValidationFailed, validate
from mfli.validation.suites import RunScope
from tasks.artifacts import artifact_uri, get_parquet, put_dir, put_parquet, scratch_dir

#: Row counts of the last successful extraction, kept beside the feature store (volume band source).
COUNTS_FILE = "last_counts.json"


def scope_for(
    start: str | None = None,
    end: str | None = None,
    previous_count: int | None = None,
    user_columns: dict[str, str] | None = None,
) -> RunScope:
    """A :class:`RunScope` from ISO strings (what tasks receive)."""
    window = Window.of(start, end) if start and end else None
    return RunScope(window=window, previous_count=previous_count, user_columns=user_columns)


def validate_frame(
    df: pd.DataFrame,
    table: str,
    out_dir: str | Path,
    start: str | None = None,
    end: str | None = None,
    previous_count: int | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Validate ``df`` as ``table``; writes ``out_dir/validation_<name>.json``; raises on failure.

    Returns:
        ``{"table", "name", "rows", "checks", "result_path"}``.
    """
    rep = validate(df, table, out_dir, scope_for(start, end, previous_count), name=name)
    return {
        "table": table,
        "name": rep.name,
        "rows": rep.rows,
        "checks": rep.checks,
        "result_path": rep.result_path,
    }


def validate_parquet(
    path: str | Path,
    table: str,
    out_dir: str | Path,
    start: str | None = None,
    end: str | None = None,
    previous_count: int | None = None,
) -> dict[str, Any]:
    """:func:`validate_frame` on a local parquet file (named after the file)."""
    return validate_frame(
        pd.read_parquet(path), table, out_dir, start, end, previous_count, name=Path(path).stem
    )


def gate_and_put(run: dict, df: pd.DataFrame, table: str, name: str, scope: RunScope) -> dict[str, Any]:
    """Validate ``df``; upload the result JSON to ``<work>/validation/``; then (only if it passed) upload
    ``df`` as ``<work>/<name>.parquet``.

    Returns:
        ``{"uri", "rows", "validation_uri"}``; raises :class:`ValidationFailed` without writing ``uri``.
    """
    with scratch_dir() as tmp:
        try:
            validate(df, table, tmp, scope, name=name)
        finally:  # the failing result is the one operators need to read
            put_dir(run["store_uri"], artifact_uri(run, "validation"), tmp)
    uri = put_parquet(run["store_uri"], artifact_uri(run, f"{name}.parquet"), df)
    return {
        "uri": uri,
        "rows": len(df),
        "validation_uri": artifact_uri(run, f"validation/validation_{name}.json"),
    }


def load_counts(feast_dir: str | Path) -> dict[str, int]:
    """Row counts of the previous successful extraction ({} on the first run)."""
    path = Path(feast_dir) / COUNTS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def save_counts(feast_dir: str | Path, counts: dict[str, int]) -> None:
    path = Path(feast_dir) / COUNTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(counts, indent=1, sort_keys=True))


def validate_training(run: dict, extracted: dict) -> dict[str, Any]:
    """Daily DAG gate: re-validate the extracted artifacts as read back from the store.

    ``extract_training`` already refused to write a failing batch; this task re-checks what downstream
    will actually read (a corrupted upload, a manual edit) and records the results under
    ``<work>/validation/`` with a ``recheck_`` prefix.

    Returns:
        ``{"tables": {name: rows}, "validation_uri"}``; raises :class:`ValidationFailed` on failure.
    """
    s = run["store_uri"]
    window = (run["start"], run["end"])
    specs = {
        "interactions": ("interactions", window),
        "items": ("items", (None, None)),
        "users": ("users", (None, None)),
        "training": ("training", window),
    }
    rows: dict[str, int] = {}
    with scratch_dir() as tmp:
        try:
            for key, (table, (start, end)) in specs.items():
                uri = extracted.get(f"{key}_uri")
                if not uri:
                    continue
                df = get_parquet(s, uri)
                validate(df, table, tmp, scope_for(start, end), name=f"recheck_{key}")
                rows[key] = len(df)
        finally:
            put_dir(s, artifact_uri(run, "validation"), tmp)
    return {"tables": rows, "validation_uri": artifact_uri(run, "validation")}


__all__ = [
    "ValidationFailed",
    "gate_and_put",
    "load_counts",
    "save_counts",
    "scope_for",
    "validate_frame",
    "validate_parquet",
    "validate_training",
]
