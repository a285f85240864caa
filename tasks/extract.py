"""Extraction tasks: Feast -> validated canonical artifacts in the run's work area.

- ``extract_training(run)``: point-in-time training examples for ``[start, end)`` plus the canonical
  interactions/items/users tables the trainer reads; every table passes its GX suite before any of
  them is written.
- ``extract_new_items(run)``: items created in ``[start, end)`` for the hourly delta pipeline.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from mfli.features.window import Window
from mfli.validation.runner import validate
from tasks.artifacts import artifact_uri, put_dir, put_parquet, scratch_dir
from tasks.ingest import feature_repo
from tasks.validate import load_counts, save_counts, scope_for

CANONICAL_ITEM_COLUMNS = ["item_id", "created_at", "categories", "title", "text", "brand"]


def users_from_training(frame: pd.DataFrame) -> pd.DataFrame:
    """Canonical users (user_id + attribute columns as strings) from the latest ``user_attrs`` per user.

    Returns:
        (n_users, 1 + n_attrs) sorted by user_id.
    """
    last = frame.sort_values("event_ts", kind="stable").drop_duplicates("user_id", keep="last")
    rows = []
    for uid, attrs in zip(last["user_id"].to_numpy(), last["user_attrs"]):
        row: dict[str, Any] = {"user_id": int(uid)}
        for token in attrs:
            key, _, value = str(token).partition("=")
            row[key] = value
        rows.append(row)
    users = pd.DataFrame(rows, columns=None if rows else ["user_id"])
    users["user_id"] = users["user_id"].astype("int64")
    return users.sort_values("user_id").reset_index(drop=True)


def extract_training(run: dict, ingested: dict | None = None) -> dict[str, Any]:
    """Daily DAG task: training examples and canonical tables for the run's window.

    Reads ``run["feast_dir"]``, ``run["start"]``, ``run["end"]``; writes under ``run["work_uri"]``:
    ``training.parquet`` (events + features), ``interactions.parquet``, ``items.parquet`` (catalogue as
    of ``end``), ``users.parquet`` and ``validation/validation_*.json``. Volume bands compare with the
    previous successful extraction's counts (kept in ``feast_dir``).

    Returns:
        ``{"training_uri", "interactions_uri", "items_uri", "users_uri", "n_interactions", "n_items",
        "n_users", "window", "seconds", "validation_uri"}``.
    """
    from mfli.features.extract import items_in_window, training_frame
    from mfli.features.offline import partition_days

    t0 = time.perf_counter()
    repo = feature_repo(run["feast_dir"])
    window = Window.of(run["start"], run["end"])
    frame = training_frame(repo, window)
    days = partition_days(repo.data_root, "item_profile")
    first = pd.Timestamp(days[0], tz="UTC") if days else window.start
    catalogue = (
        items_in_window(repo, Window(min(first, window.start), window.end)) if first < window.end else None
    )
    items = (
        catalogue[CANONICAL_ITEM_COLUMNS]
        if catalogue is not None
        else pd.DataFrame(columns=CANONICAL_ITEM_COLUMNS)
    )
    tables = {
        "training": ("training", frame, window),
        "interactions": ("interactions", frame[["user_id", "item_id", "event_ts", "weight"]], window),
        "items": ("items", items, None),
        "users": ("users", users_from_training(frame) if len(frame) else pd.DataFrame({"user_id": []}), None),
    }
    prev = load_counts(run["feast_dir"])
    with scratch_dir() as tmp:
        try:  # every table must pass before any is written
            for name, (table, df, w) in tables.items():
                scope = scope_for(
                    *(w.as_dict().values() if w else (None, None)), previous_count=prev.get(name)
                )
                validate(df, table, tmp, scope, name=name)
        finally:
            put_dir(run["store_uri"], artifact_uri(run, "validation"), tmp)
    out: dict[str, Any] = {}
    for name, (_, df, _) in tables.items():
        out[f"{name}_uri"] = put_parquet(run["store_uri"], artifact_uri(run, f"{name}.parquet"), df)
    counts = {name: len(df) for name, (_, df, _) in tables.items()}
    save_counts(run["feast_dir"], counts)
    out.update(
        n_interactions=counts["interactions"],
        n_items=counts["items"],
        n_users=counts["users"],
        window=window.as_dict(),
        seconds=round(time.perf_counter() - t0, 3),
        validation_uri=artifact_uri(run, "validation"),
    )
    return out


def extract_new_items(run: dict) -> pd.DataFrame:
    """Hourly DAG task: canonical items created in ``[run["start"], run["end"])``, validated.

    An hour without new items is normal: the empty frame is returned without a gate (the DAG skips).
    Otherwise the ``new_items`` suite runs (window, ids, content, categories, tokens) and its result is
    written to ``<work>/validation/validation_new_items.json``; a failure raises before anything is used.

    Returns:
        (n_new, 6) canonical items ordered by (created_at, item_id).
    """
    from mfli.features.extract import items_in_window

    repo = feature_repo(run["feast_dir"])
    window = Window.of(run["start"], run["end"])
    items = items_in_window(repo, window)
    if items.empty:
        return items[CANONICAL_ITEM_COLUMNS]
    with scratch_dir() as tmp:
        try:
            validate(items, "new_items", tmp, scope_for(run["start"], run["end"]), name="new_items")
        finally:
            put_dir(run["store_uri"], artifact_uri(run, "validation"), tmp)
    return items[CANONICAL_ITEM_COLUMNS]
