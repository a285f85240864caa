"""Object store and the snapshot/delta publishing protocol.

``open_store(uri)`` picks the backend from the URI (a local directory by default, ``s3://`` through
boto3); :mod:`mfli.store.snapshots` and :mod:`mfli.store.deltas` publish and load versioned index
snapshots and their hourly deltas on any store. See docs/storage.md.

Example::

    from mfli.store import open_store, publish_snapshot, load_snapshot
    store = open_store("s3://models/mfli")                 # or ".mfli/store"
    publish_snapshot(store, "runs/42/artifacts", "20240101T000000Z", metrics={"recall@50": 0.31})
    local_dir = load_snapshot(store)                        # LATEST, every checksum verified
"""

from __future__ import annotations

from pathlib import Path

from mfli.store.base import ObjectInfo, ObjectStore

# The protocol modules import only the pieces above (never this package root), so importing them here is safe.
from mfli.store.deltas import list_deltas, load_deltas, publish_delta, window_id
from mfli.store.errors import (
    CorruptDelta,
    CorruptSnapshot,
    InvalidKey,
    ObjectNotFound,
    PreconditionFailed,
    PublishConflict,
    SnapshotError,
    SnapshotNotFound,
    StoreAuthError,
    StoreError,
)
from mfli.store.snapshots import (
    LatestPointer,
    apply_retention,
    list_snapshots,
    load_snapshot,
    new_snapshot_id,
    open_snapshot,
    publish_snapshot,
    read_latest,
    read_manifest,
    rollback,
    verify_snapshot,
)
from mfli.store.uri import StoreURI, parse_store_uri, validate_key


def open_store(uri: str | Path | ObjectStore, **s3_options) -> ObjectStore:
    """Open the store named by ``uri``.

    Args:
        uri: ``file:///abs/dir``, a directory path, ``s3://bucket/prefix``, or an already open store
            (returned as is).
        **s3_options: for ``s3://`` only, forwarded to :class:`mfli.store.s3.S3Store`:
            ``endpoint_url``, ``region_name``, ``credentials`` (:class:`S3Credentials`), ``config``
            (:class:`S3Config`), ``client``. Unset ones come from the environment.

    Returns:
        a :class:`LocalStore` or :class:`S3Store`.
    """
    if isinstance(uri, ObjectStore):
        return uri
    parsed = parse_store_uri(uri)
    if parsed.scheme == "file":
        if s3_options:
            raise TypeError(f"open_store({str(parsed)!r}): S3 options {sorted(s3_options)} given for a local store")
        from mfli.store.local import LocalStore

        return LocalStore(parsed.path)
    from mfli.store.s3 import S3Store

    return S3Store(parsed.bucket, parsed.prefix, **s3_options)


def __getattr__(name: str):
    # The backends are imported on first use so `import mfli.store` does not pull in boto3.
    import importlib

    if name in ("S3Store", "S3Config", "S3Credentials"):
        return getattr(importlib.import_module("mfli.store.s3"), name)
    if name == "LocalStore":
        return importlib.import_module("mfli.store.local").LocalStore
    raise AttributeError(f"module 'mfli.store' has no attribute {name!r}")


__all__ = [
    "CorruptDelta", "CorruptSnapshot", "InvalidKey", "LatestPointer", "LoadedSnapshot", "LocalStore",
    "ObjectInfo", "ObjectNotFound", "ObjectStore", "PreconditionFailed", "PublishConflict", "S3Config",
    "S3Credentials", "S3Store", "SnapshotError", "SnapshotNotFound", "StoreAuthError", "StoreError",
    "StoreURI", "apply_retention", "list_deltas", "list_snapshots", "load_deltas", "load_snapshot",
    "new_snapshot_id", "open_snapshot", "open_store", "parse_store_uri", "publish_delta", "publish_snapshot",
    "read_latest", "read_manifest", "rollback", "validate_key", "verify_snapshot", "window_id",
]
