"""Deltas: per-window parquet files of new/changed items, bound to the snapshot they extend.

Layout::

    deltas/<snapshot_id>/<window>.parquet
    deltas/<snapshot_id>/<window>.manifest.json    # {snapshot_id, window, sha256, size, meta, ...}

A delta is *published* once its manifest exists; the manifest is written after the parquet and is the
only thing readers trust. A delta belongs to exactly one snapshot: it lives under that snapshot's id
and its manifest repeats the id, so a delta computed against an older snapshot (or a manifest copied
elsewhere) is never returned for another one.

Publishing is idempotent per window: the same bytes again are a no-op; different bytes replace the
window (parquet, then manifest). A reader that catches a replacement half-way sees a sha256 mismatch,
re-reads the manifest and retries, and never applies a parquet that does not match its manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mfli.store.base import ObjectStore
from mfli.store.errors import CorruptDelta, ObjectNotFound, SnapshotNotFound
from mfli.store.keys import (
    DELTA_MANIFEST_SUFFIX,
    DELTAS,
    MANIFEST,
    SNAPSHOTS,
    delta_keys,
    validate_snapshot_id,
    validate_window,
)
from mfli.store.manifests import check_file, code_version, dumps, now_iso, scrub

log = logging.getLogger(__name__)

DELTA_FORMAT = "mfli-delta/1"
_PARQUET_MAGIC = b"PAR1"

__all__ = ["DELTAS", "fetch_delta", "list_deltas", "load_deltas", "publish_delta", "validate_window", "window_id"]


def window_id(start: datetime) -> str:
    """The window name for a window starting at ``start`` (UTC), e.g. ``20240101T130000Z``; sorts by time."""
    if start.tzinfo is None:
        raise ValueError("window_id: start must be timezone-aware (UTC)")
    return f"{start.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def _parquet_payload(parquet: bytes | str | Path, window: str) -> tuple[bytes | None, Path | None, str, int]:
    """(bytes or None, path or None, sha256, size), after checking the parquet magic at both ends."""
    if isinstance(parquet, (bytes, bytearray, memoryview)):
        data = bytes(parquet)
        head, tail, what = data[:4], data[-4:], "the given bytes"
        path = None
    else:
        path, data = Path(parquet), None
        if not path.is_file():
            raise FileNotFoundError(f"delta for window {window}: {path} does not exist")
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(max(0, path.stat().st_size - 4))
            tail = f.read(4)
        what = str(path)
    if head != _PARQUET_MAGIC or tail != _PARQUET_MAGIC:
        raise ValueError(f"delta for window {window}: {what} is not a parquet file (no PAR1 magic)")
    if data is not None:
        return data, None, hashlib.sha256(data).hexdigest(), len(data)
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return None, path, sha.hexdigest(), path.stat().st_size


def _read_manifest(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes(key))
    except ObjectNotFound:
        return None
    except ValueError:
        log.warning("ignoring unreadable delta manifest %s/%s", store.uri, key)
        return None


def publish_delta(
    store: ObjectStore,
    snapshot_id: str,
    window: str,
    parquet: bytes | str | Path,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish the delta of ``window`` for ``snapshot_id`` (which must exist).

    Args:
        parquet: the delta table as parquet bytes or a parquet file path.
        meta: JSON fields for the manifest (row counts, time range, source run ...).

    Returns:
        the delta manifest; unchanged (and nothing written) when the same bytes and meta were published.
    """
    data_key, man_key = delta_keys(snapshot_id, window)
    if not store.exists(f"{SNAPSHOTS}/{snapshot_id}/{MANIFEST}"):
        raise SnapshotNotFound(f"{store.uri}: cannot publish delta {window}: snapshot {snapshot_id!r} does not exist")
    data, path, sha, size = _parquet_payload(parquet, window)
    meta = scrub(json.loads(dumps(dict(meta or {}))))
    old = _read_manifest(store, man_key)
    if old and old.get("sha256") == sha and old.get("size") == size and old.get("meta") == meta and \
            old.get("snapshot_id") == snapshot_id and store.exists(data_key):
        log.info("delta %s/%s unchanged on %s", snapshot_id, window, store.uri)
        return old
    manifest = {
        "format": DELTA_FORMAT,
        "snapshot_id": snapshot_id,
        "window": window,
        "file": data_key.rsplit("/", 1)[1],
        "sha256": sha,
        "size": size,
        "meta": meta,
        "created_at": now_iso(),
        "code_version": code_version(),
    }
    if data is not None:
        store.put_bytes(data_key, data)
    else:
        store.put_file(data_key, path)
    store.put_bytes(man_key, store.redact(dumps(manifest).decode()).encode())
    log.info("published delta %s/%s to %s (%d bytes%s)", snapshot_id, window, store.uri, size,
             ", replacing an earlier version" if old else "")
    return manifest


def list_deltas(store: ObjectStore, snapshot_id: str) -> list[dict[str, Any]]:
    """Published deltas of ``snapshot_id`` in window order (their manifests, plus ``key``: the parquet key).

    Manifests naming another snapshot or window than their location, and manifests whose parquet is
    missing, are skipped with a warning.
    """
    prefix = f"{DELTAS}/{validate_snapshot_id(snapshot_id)}/"
    objects = {o.key for o in store.list(prefix)}
    out = []
    for key in sorted(k for k in objects if k.endswith(DELTA_MANIFEST_SUFFIX)):
        window = key[len(prefix):-len(DELTA_MANIFEST_SUFFIX)]
        man = _read_manifest(store, key)
        if man is None:
            continue
        if man.get("snapshot_id") != snapshot_id or man.get("window") != window:
            log.warning("ignoring delta %s on %s: bound to snapshot %r window %r, not %r %r", key, store.uri,
                        man.get("snapshot_id"), man.get("window"), snapshot_id, window)
            continue
        data_key = f"{prefix}{window}.parquet"
        if data_key not in objects:
            log.warning("ignoring delta %s on %s: %s is missing", key, store.uri, data_key)
            continue
        out.append({**man, "key": data_key})
    return sorted(out, key=lambda m: m["window"])


def fetch_delta(store: ObjectStore, manifest: Mapping[str, Any], dest: str | Path, *, attempts: int = 3) -> Path:
    """Download one delta (a manifest from :func:`list_deltas`) to ``dest`` and verify its sha256.

    A mismatch is retried after re-reading the manifest (the window may be being replaced);
    :class:`CorruptDelta` if it persists.
    """
    dest = Path(dest)
    sid, window = manifest["snapshot_id"], manifest["window"]
    data_key, man_key = delta_keys(sid, window)
    for attempt in range(1, attempts + 1):
        try:
            store.get_file(data_key, dest)
            check_file(sid, f"{DELTAS}/{sid}/{window}.parquet", manifest, dest, cls=CorruptDelta)
            return dest
        except (CorruptDelta, ObjectNotFound) as exc:
            dest.unlink(missing_ok=True)
            fresh = _read_manifest(store, man_key)
            if attempt == attempts or fresh is None or fresh.get("snapshot_id") != sid:
                if isinstance(exc, ObjectNotFound):
                    raise CorruptDelta(sid, f"{DELTAS}/{sid}/{window}.parquet", "missing from the store") from None
                raise
            manifest = fresh
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def load_deltas(
    store: ObjectStore, snapshot_id: str, cache_dir: str | Path, manifests: list[dict[str, Any]] | None = None
) -> list[Path]:
    """Download and verify every delta of ``snapshot_id`` into ``<cache_dir>/deltas/<id>/``, window order.

    Files already there with the manifest's sha256 are kept. ``manifests`` defaults to :func:`list_deltas`.
    """
    manifests = list_deltas(store, snapshot_id) if manifests is None else manifests
    folder = Path(cache_dir) / DELTAS / snapshot_id
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for man in manifests:
        if man.get("snapshot_id") != snapshot_id:
            raise CorruptDelta(snapshot_id, str(man.get("window")), "delta bound to another snapshot",
                               snapshot_id, man.get("snapshot_id"))
        dest = folder / f"{validate_window(man['window'])}.parquet"
        try:
            check_file(snapshot_id, dest.name, man, dest, cls=CorruptDelta)
        except (CorruptDelta, OSError):
            fetch_delta(store, man, dest)
        paths.append(dest)
    return paths
