"""The object-store interface shared by the local-directory and S3 backends.

Keys are relative ``/``-separated strings validated by :func:`mfli.store.uri.validate_key`.
Every write is all-or-nothing for readers (S3 PUT semantics; locally a temp file + ``os.replace``),
and ``put_bytes`` supports the two conditional writes the snapshot protocol needs:

- ``if_none_match=True``: create only if the key does not exist;
- ``if_match=etag``: replace only if the key's current etag is ``etag``.

A lost condition raises :class:`PreconditionFailed` and is never retried.

Example::

    store = open_store("s3://models/mfli")          # or "file:///srv/mfli" or ".mfli/store"
    etag = store.put_bytes("LATEST", b"{}", if_none_match=True)
    store.put_bytes("LATEST", b'{"x": 1}', if_match=etag)
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mfli.store.errors import ObjectNotFound, StoreError
from mfli.store.uri import validate_key, validate_prefix


@dataclass(frozen=True)
class ObjectInfo:
    """What ``head``/``list`` know about an object: ``size`` in bytes and the backend's ``etag``
    (unquoted; an opaque version token for ``if_match``, not a checksum to verify against).

    ``sha256`` (hex) is the content checksum the backend recorded, when ``head`` knows it (S3: the
    object's ``ChecksumSHA256``); None when unknown. An ETag is not an MD5 for multipart uploads or
    SSE-KMS objects, so content comparisons use this field, never the etag.
    """

    key: str
    size: int
    etag: str
    last_modified: datetime | None = None
    sha256: str | None = None


def normalise_etag(etag: str) -> str:
    """Strip the quotes S3 puts around etags, so etags compare equal whichever API returned them."""
    etag = etag.strip()
    etag = etag.removeprefix("W/")
    return etag.strip('"')


class ObjectStore(abc.ABC):
    """A flat key -> bytes store. Subclasses implement the ``_``-prefixed methods on validated keys."""

    #: the store's URI without credentials, e.g. ``s3://bucket/prefix`` or ``file:///srv/mfli``
    uri: str

    # -- writes ---------------------------------------------------------------------------------------
    def put_bytes(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Write ``data`` at ``key`` atomically and return its new etag.

        Args:
            if_match: only replace the object if its current etag equals this (else PreconditionFailed).
            if_none_match: only create the object if it does not exist yet (else PreconditionFailed).
        """
        validate_key(key)
        if if_match is not None and if_none_match:
            raise ValueError("put_bytes: pass at most one of if_match / if_none_match")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"put_bytes({key!r}): data must be bytes, got {type(data).__name__}")
        return self._put_bytes(
            key, bytes(data), if_match=normalise_etag(if_match) if if_match else None, if_none_match=if_none_match
        )

    def put_file(self, key: str, path: str | Path) -> str:
        """Upload a local file (multipart above the backend's threshold) atomically; returns the etag."""
        validate_key(key)
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"put_file({key!r}): local file {path} does not exist or is not a file")
        return self._put_file(key, path)

    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""
        self._delete(validate_key(key))

    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete several keys (batched where the backend can); returns how many were asked for."""
        keys = [validate_key(k) for k in keys]
        self._delete_many(keys)
        return len(keys)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix`` (must end with ``/``); returns the count."""
        if not prefix.endswith("/"):
            raise ValueError(f"delete_prefix({prefix!r}): prefix must end with '/' to avoid deleting siblings")
        return self.delete_many(o.key for o in self.list(prefix))

    # -- reads ----------------------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        """Read a whole object; raises :class:`ObjectNotFound` if missing."""
        return self._get_bytes(validate_key(key))

    def get_bytes_etag(self, key: str) -> tuple[bytes, str]:
        """Read a whole object together with the etag of exactly those bytes (one request)."""
        return self._get_bytes_etag(validate_key(key))

    def get_file(self, key: str, path: str | Path) -> Path:
        """Download ``key`` to ``path`` (written to a temp file, then renamed); returns ``path``."""
        validate_key(key)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._get_file(key, path)
        return path

    def head(self, key: str) -> ObjectInfo:
        """Size and etag of ``key``; raises :class:`ObjectNotFound` if missing."""
        return self._head(validate_key(key))

    def content_sha256(self, key: str) -> str | None:
        """Hex SHA-256 of the stored bytes as the backend records it, without downloading them (S3: the
        ``ChecksumSHA256`` field), or None when the object was written without one. Raises
        :class:`ObjectNotFound` when the key is missing."""
        return self.head(key).sha256

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """All objects whose key starts with ``prefix`` (plain string prefix, as S3), sorted by key."""
        return sorted(self._list(validate_prefix(prefix)), key=lambda o: o.key)

    def list_dirs(self, prefix: str = "") -> list[str]:
        """The immediate 'sub-directories' under ``prefix`` (``""`` or ending in ``/``), as names.

        ``list_dirs("snapshots/")`` -> ``["20240101T000000Z", ...]``, sorted; only names with objects under them.
        """
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"list_dirs({prefix!r}): prefix must be '' or end with '/'")
        return sorted(set(self._list_dirs(validate_prefix(prefix))))

    # -- misc -----------------------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """Remove any secret this store holds from ``text`` (used before logging or writing manifests)."""
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    # -- backend hooks ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def _put_bytes(self, key: str, data: bytes, *, if_match: str | None, if_none_match: bool) -> str: ...

    @abc.abstractmethod
    def _put_file(self, key: str, path: Path) -> str: ...

    @abc.abstractmethod
    def _get_bytes(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def _get_bytes_etag(self, key: str) -> tuple[bytes, str]: ...

    @abc.abstractmethod
    def _get_file(self, key: str, path: Path) -> None: ...

    @abc.abstractmethod
    def _head(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    def _list(self, prefix: str) -> list[ObjectInfo]: ...

    @abc.abstractmethod
    def _list_dirs(self, prefix: str) -> list[str]: ...

    @abc.abstractmethod
    def _delete(self, key: str) -> None: ...

    def _delete_many(self, keys: list[str]) -> None:
        for k in keys:
            self._delete(k)
