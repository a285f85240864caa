"""The embedded object store: a local directory (``file:///abs/dir`` or a plain path).

Each key is a file under the root. Writes go to a temp file on the same filesystem, are fsynced and
then ``os.replace``-d into place, so a reader sees the old object or the new one, never half of one.
The etag is the object's MD5 (what S3 reports for a single-part upload), which makes ``if_match`` a
compare-and-swap on content. Conditional writes take a per-key ``flock``, so they are exclusive
between threads and processes on the same host (not across NFS clients).

Internal files live under ``<root>/.mfli-store/`` (temp files, lock files); keys may not start there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from mfli.store.base import ObjectInfo, ObjectStore
from mfli.store.errors import InvalidKey, ObjectNotFound, PreconditionFailed, StoreError
from mfli.store.uri import validate_key

_INTERNAL = ".mfli-store"
_CHUNK = 1 << 20
_LOCK_STRIPES = 64


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; best effort (not every filesystem allows opening a directory).
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LocalStore(ObjectStore):
    """Object store on a local directory.

    Args:
        root: the store directory; created on first write.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"local store root {self.root} exists and is not a directory")
        self.uri = self.root.as_uri()
        # etag cache keyed by path; invalidated by (size, mtime_ns, inode) because os.replace changes the inode
        self._etags: dict[str, tuple[tuple[int, int, int], str]] = {}
        self._etag_lock = threading.Lock()

    # -- paths ----------------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        if key == _INTERNAL or key.startswith(_INTERNAL + "/"):
            raise InvalidKey(f"object key {key!r} is inside the local store's reserved {_INTERNAL}/ folder")
        return self.root.joinpath(*key.split("/"))

    def _internal(self, sub: str) -> Path:
        d = self.root / _INTERNAL / sub
        d.mkdir(parents=True, exist_ok=True)
        return d

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        # A fixed set of lock stripes keeps the lock folder bounded however many keys are written.
        name = f"{int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % _LOCK_STRIPES:02d}.lock"
        with open(self._internal("locks") / name, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # a separate open file per call, so threads exclude each other too
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _etag_of(self, path: Path, *, fresh: bool = False) -> str | None:
        """MD5 of the file (None if missing); cached by (size, mtime, inode) unless ``fresh``."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if not path.is_file():
            return None
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        with self._etag_lock:
            hit = self._etags.get(str(path))
        if hit and hit[0] == sig and not fresh:
            return hit[1]
        etag = _md5_file(path)
        with self._etag_lock:
            self._etags[str(path)] = (sig, etag)
        return etag

    # -- writes ---------------------------------------------------------------------------------------
    def _stage(self, writer) -> tuple[Path, str]:
        """Write a temp file with ``writer(fileobj)`` and fsync it; returns (temp path, md5)."""
        fd, tmp = tempfile.mkstemp(dir=self._internal("tmp"), prefix="put-")
        h = hashlib.md5(usedforsecurity=False)
        try:
            with os.fdopen(fd, "wb") as f:
                writer(f, h)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return Path(tmp), h.hexdigest()

    def _commit(self, key: str, tmp: Path, etag: str, if_match: str | None, if_none_match: bool) -> str:
        dest = self._path(key)
        try:
            with self._locked(key):
                if if_match is not None or if_none_match:
                    current = self._etag_of(dest, fresh=True)  # compare-and-swap: never trust a cache
                    if if_none_match and current is not None:
                        raise PreconditionFailed(f"{self.uri}: {key} already exists (if_none_match)")
                    if if_match is not None and current != if_match:
                        state = "does not exist" if current is None else f"has etag {current}"
                        raise PreconditionFailed(f"{self.uri}: {key} {state}, expected etag {if_match} (if_match)")
                try:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                except (FileExistsError, NotADirectoryError):
                    raise StoreError(f"{self.uri}: cannot write {key}: a parent of it is an object") from None
                if dest.is_dir():
                    raise StoreError(f"{self.uri}: cannot write {key}: a folder of objects has that name")
                os.replace(tmp, dest)
                _fsync_dir(dest.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return etag

    def _put_bytes(self, key: str, data: bytes, *, if_match: str | None, if_none_match: bool) -> str:
        self._path(key)  # refuse reserved keys before writing anything

        def write(f, h):
            f.write(data)
            h.update(data)

        tmp, etag = self._stage(write)
        return self._commit(key, tmp, etag, if_match, if_none_match)

    def _put_file(self, key: str, path: Path) -> str:
        self._path(key)

        def write(f, h):
            with open(path, "rb") as src:
                while chunk := src.read(_CHUNK):
                    f.write(chunk)
                    h.update(chunk)

        tmp, etag = self._stage(write)
        return self._commit(key, tmp, etag, None, False)

    def _delete(self, key: str) -> None:
        dest = self._path(key)
        with self._locked(key), contextlib.suppress(FileNotFoundError):
            dest.unlink()
        # Empty folders would show up as phantom 'directories' in list_dirs; prune them up to the root.
        parent = dest.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    # -- reads ----------------------------------------------------------------------------------------
    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"{self.uri}: no object {key}")
        return path

    def _get_bytes(self, key: str) -> bytes:
        try:
            return self._existing(key).read_bytes()
        except FileNotFoundError:  # deleted between the check and the read
            raise ObjectNotFound(f"{self.uri}: no object {key}") from None

    def _get_bytes_etag(self, key: str) -> tuple[bytes, str]:
        data = self._get_bytes(key)
        return data, hashlib.md5(data, usedforsecurity=False).hexdigest()

    def _get_file(self, key: str, path: Path) -> None:
        src = self._existing(key)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, path)
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.uri}: no object {key}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _head(self, key: str) -> ObjectInfo:
        path = self._existing(key)
        etag = self._etag_of(path)
        if etag is None:
            raise ObjectNotFound(f"{self.uri}: no object {key}")
        st = path.stat()
        return ObjectInfo(key, st.st_size, etag, datetime.fromtimestamp(st.st_mtime, UTC))

    def content_sha256(self, key: str) -> str | None:
        """The file's SHA-256, hashed from disk (a local file has no recorded checksum to ask for)."""
        path = self._existing(validate_key(key))
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(f"{self.uri}: no object {key}") from None
        return h.hexdigest()

    def _iter_keys(self, prefix: str) -> Iterator[tuple[str, Path]]:
        # Walk only the deepest folder the prefix names; the rest of the prefix filters names.
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*head.split("/")) if head else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            if Path(dirpath) == self.root and _INTERNAL in dirnames:
                dirnames.remove(_INTERNAL)
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    yield key, Path(dirpath) / name

    def _list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        for key, path in self._iter_keys(prefix):
            try:
                st = path.stat()
                etag = self._etag_of(path)
            except FileNotFoundError:
                continue
            if etag is not None:
                out.append(ObjectInfo(key, st.st_size, etag, datetime.fromtimestamp(st.st_mtime, UTC)))
        return out

    def _list_dirs(self, prefix: str) -> list[str]:
        return [k[len(prefix):].split("/", 1)[0] for k, _ in self._iter_keys(prefix) if "/" in k[len(prefix):]]
