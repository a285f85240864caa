"""The object-store key layout both snapshots and deltas use (one place; validated keys only).

    snapshots/<snapshot_id>/<files...>, snapshots/<snapshot_id>/manifest.json
    deltas/<snapshot_id>/<window>.parquet, deltas/<snapshot_id>/<window>.manifest.json
    LATEST
"""

from __future__ import annotations

import re

from mfli.store.errors import InvalidKey
from mfli.store.uri import validate_key

SNAPSHOTS = "snapshots"
DELTAS = "deltas"
LATEST_KEY = "LATEST"
MANIFEST = "manifest.json"
DELTA_MANIFEST_SUFFIX = ".manifest.json"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_WINDOW = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

__all__ = ["DELTAS", "DELTA_MANIFEST_SUFFIX", "LATEST_KEY", "MANIFEST", "SNAPSHOTS", "delta_keys", "is_snapshot_id",
           "snapshot_key", "validate_snapshot_id", "validate_window"]


def validate_snapshot_id(snapshot_id: str, what: str = "snapshot id") -> str:
    """Ids are 1-128 characters of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit."""
    if not isinstance(snapshot_id, str) or not _ID.match(snapshot_id):
        raise InvalidKey(f"{what} {snapshot_id!r} is invalid: use 1-128 characters of A-Z a-z 0-9 . _ - "
                         "starting with a letter or digit")
    return snapshot_id


def is_snapshot_id(name: str) -> bool:
    """Whether ``name`` is a valid snapshot id (listing folders: anything else is not a snapshot)."""
    return bool(_ID.match(name))


def validate_window(window: str) -> str:
    """Window names: 1-128 characters of ``A-Z a-z 0-9 . _ -`` (no ``:``), see :func:`mfli.store.deltas.window_id`."""
    if not isinstance(window, str) or not _WINDOW.match(window) or window.endswith(".manifest"):
        raise InvalidKey(f"delta window {window!r} is invalid: use 1-128 characters of A-Z a-z 0-9 . _ - "
                         "(e.g. window_id(start) -> '20240101T130000Z')")
    return window


def snapshot_key(snapshot_id: str, rel: str = MANIFEST) -> str:
    """``snapshots/<id>/<rel>`` (default: the snapshot's manifest)."""
    return validate_key(f"{SNAPSHOTS}/{snapshot_id}/{rel}")


def delta_keys(snapshot_id: str, window: str) -> tuple[str, str]:
    """``(parquet key, manifest key)`` of one delta window of a snapshot."""
    base = f"{DELTAS}/{validate_snapshot_id(snapshot_id)}/{validate_window(window)}"
    return validate_key(base + ".parquet"), validate_key(base + DELTA_MANIFEST_SUFFIX)
