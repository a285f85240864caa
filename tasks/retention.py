"""Retention of the run work area ``<store>/runs/``: intermediate artifacts of finished runs.

Each run writes under ``runs/<run key>/`` (extracted frames, trained model, index shards; see
tasks/artifacts.py). Nothing there is served, and it holds raw interactions, so it is pruned: a run
folder whose newest object is older than ``keep_days`` is deleted as a whole. Only ``runs/`` is ever
touched (the publisher policy allows deletes there, see infra/iam/). A folder still being written is
young by definition, so a running run is never pruned under a retention of a day or more.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

log = logging.getLogger(__name__)

RUNS = "runs"


def prune_runs(store_uri: str, keep_days: float = 7.0, now: datetime | None = None) -> dict:
    """Delete ``runs/<key>/`` folders idle for more than ``keep_days``; returns what was pruned/kept.

    Returns ``{"pruned": [keys], "kept": n, "objects_deleted": n}``.
    """
    from tasks.artifacts import open_run_store

    if keep_days < 0:
        raise ValueError(f"keep_days must be >= 0, got {keep_days}")
    store = open_run_store(store_uri)
    cutoff = (now or datetime.now(UTC)) - timedelta(days=keep_days)
    pruned, kept, deleted = [], 0, 0
    for key in store.list_dirs(f"{RUNS}/"):
        objs = store.list(f"{RUNS}/{key}/")
        stamps = [o.last_modified for o in objs if o.last_modified is not None]
        if not objs or not stamps or max(stamps) >= cutoff:
            kept += 1
            continue
        deleted += store.delete_prefix(f"{RUNS}/{key}/")
        pruned.append(key)
    log.info("runs/ retention (%s days): pruned %d run folders (%d objects), kept %d",
             keep_days, len(pruned), deleted, kept)
    return {"pruned": pruned, "kept": kept, "objects_deleted": deleted}
