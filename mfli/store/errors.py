"""Errors raised by the object store and the snapshot/delta protocol.

Messages name the store URI, key and file involved and never contain credentials.
"""

from __future__ import annotations


class StoreError(Exception):
    """Any object-store failure (after retries); the message is safe to log."""


class InvalidKey(StoreError, ValueError):
    """An object key or prefix that is absolute, has ``..``/empty segments, backslashes, ... ."""


class ObjectNotFound(StoreError, LookupError):
    """The key does not exist."""


class PreconditionFailed(StoreError):
    """A conditional write lost: ``if_none_match`` and the key exists, or ``if_match`` and its etag moved."""


class StoreAuthError(StoreError, PermissionError):
    """The store refused the credentials (wrong key/secret, expired token, access denied)."""


class SnapshotError(StoreError):
    """Base class of snapshot/delta protocol errors."""


class SnapshotNotFound(SnapshotError, LookupError):
    """No such snapshot (no ``manifest.json``), or no LATEST pointer yet."""


class PublishConflict(SnapshotError):
    """Another publisher moved LATEST first (or it differs from ``expected_latest``); nothing was published."""


class CorruptSnapshot(SnapshotError):
    """A snapshot (or delta) object does not match its manifest: wrong sha256, truncated, or missing.

    Attributes: ``snapshot_id``, ``file`` (path relative to the snapshot), ``expected``, ``actual``.
    """

    def __init__(self, snapshot_id: str, file: str, problem: str, expected: object = None, actual: object = None):
        self.snapshot_id, self.file, self.expected, self.actual = snapshot_id, file, expected, actual
        detail = f" (expected {expected}, got {actual})" if expected is not None else ""
        super().__init__(f"snapshot {snapshot_id!r}: {file}: {problem}{detail}")


class CorruptDelta(CorruptSnapshot):
    """A delta parquet does not match its delta manifest."""
