"""The snapshot watermark carried from the daily publish to the hourly delta (Airflow-free).

A snapshot indexes items up to its data end; it goes live later (training takes hours). Deltas are
bound to one snapshot, and serving drops the deltas of the previous one when the new one goes live, so
items created between the new snapshot's data end and its publication must be indexed by a delta of
the *new* snapshot, or nobody serves them until the next retrain. The publish task therefore puts
``{"snapshot_id", "data_end"}`` on the ``mfli_snapshot`` asset event, and the delta run that event
triggers starts its window at ``data_end`` (the watermark) instead of one hour back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any


def event_extra(snapshot_id: str, data_end: str) -> dict[str, str]:
    """The asset event payload written by a publish that moved LATEST."""
    return {"snapshot_id": snapshot_id, "data_end": data_end}


def _extra(event: Any) -> Mapping:
    extra = event.get("extra") if isinstance(event, Mapping) else getattr(event, "extra", None)
    return extra or {}


def watermark_from_events(triggering: Mapping[Any, Iterable[Any]] | None) -> dict[str, str] | None:
    """``{"snapshot_id", "data_end"}`` of the newest snapshot among the triggering asset events (by
    ``data_end``), or None (a scheduled or manual run, or events without a payload)."""
    best: dict[str, str] | None = None
    for events in (triggering or {}).values():
        for event in events or []:
            extra = _extra(event)
            if not extra.get("data_end") or not extra.get("snapshot_id"):
                continue
            end = datetime.fromisoformat(str(extra["data_end"]))
            if best is None or end > datetime.fromisoformat(best["data_end"]):
                best = {"snapshot_id": str(extra["snapshot_id"]), "data_end": str(extra["data_end"])}
    return best
