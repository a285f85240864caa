"""Versioned snapshots on an object store: publish, load (verified), list, retention, rollback.

Layout (relative to the store root)::

    snapshots/<snapshot_id>/<artifact files...>    # whatever the local folder held, same relative paths
    snapshots/<snapshot_id>/manifest.json          # written after every artifact file
    LATEST                                         # {"snapshot_id", "manifest_sha256", ...}, written last

Protocol (why readers never see half a snapshot and two publishers never clobber each other):

1. read LATEST and its etag (the version this publish builds on);
2. upload every artifact file; record sha256 and size of each;
3. write ``manifest.json`` (create-only): a snapshot is *complete* once its manifest exists;
4. replace LATEST with a conditional write: ``If-None-Match: *`` when there was none, ``If-Match:
   <etag read in 1>`` otherwise. Of two concurrent publishers exactly one passes; the other gets
   :class:`PublishConflict` and deletes the objects it uploaded. Readers only follow LATEST, so they
   see the previous snapshot until step 4 succeeds.

A crash anywhere before step 4 leaves LATEST untouched; re-running the same publish resumes (files
already uploaded with the same content are skipped). Loading downloads every file, checks size and
sha256 against the manifest (and the manifest against LATEST) and refuses anything that differs with
:class:`CorruptSnapshot` naming the file. Nothing is ever unpickled: the store moves bytes only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from mfli.store.base import ObjectStore
from mfli.store.errors import (
    CorruptSnapshot,
    InvalidKey,
    ObjectNotFound,
    PreconditionFailed,
    PublishConflict,
    SnapshotError,
    SnapshotNotFound,
    StoreError,
)
from mfli.store.keys import (
    DELTAS,
    LATEST_KEY,
    MANIFEST,
    SNAPSHOTS,
    is_snapshot_id,
    snapshot_key,
    validate_snapshot_id,
)
from mfli.store.manifests import check_file, code_version, dumps, file_digest, now_iso, scrub
from mfli.store.uri import validate_key

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

MANIFEST_FORMAT = "mfli-snapshot/1"
LATEST_FORMAT = "mfli-latest/1"
_VERIFIED_MARK = ".mfli-verified"  # in a cached snapshot folder: the manifest sha256 it was verified against
_RESERVED_FIELDS = {"format", "snapshot_id", "created_at", "parent", "code_version", "config", "metrics", "files",
                    "total_bytes"}


class _Any:
    def __repr__(self) -> str:
        return "ANY"


#: ``expected_latest`` default: build on whatever LATEST is when publishing starts.
ANY: Any = _Any()

__all__ = [
    "ANY",
    "LatestPointer",
    "LoadedSnapshot",
    "apply_retention",
    "code_version",
    "default_cache_dir",
    "file_digest",
    "list_snapshots",
    "load_snapshot",
    "new_snapshot_id",
    "open_snapshot",
    "publish_snapshot",
    "read_latest",
    "read_manifest",
    "rollback",
    "validate_snapshot_id",
    "verify_snapshot",
]


# -- utilities --------------------------------------------------------------------------------------------
def new_snapshot_id(now: datetime | None = None) -> str:
    """A sortable unique id, e.g. ``20240101T120000Z-3fa9c1`` (UTC time + random suffix)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def default_cache_dir() -> Path:
    """``$MFLI_CACHE_DIR``, else ``$MFLI_HOME/cache``, else ``~/.cache/mfli``."""
    if os.environ.get("MFLI_CACHE_DIR"):
        return Path(os.environ["MFLI_CACHE_DIR"]).expanduser()
    if os.environ.get("MFLI_HOME"):
        return Path(os.environ["MFLI_HOME"]).expanduser() / "cache"
    return Path("~/.cache/mfli").expanduser()


def _run_all(fn: Callable[[T], R], items: list[T], max_workers: int) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool; the first failure cancels what has not started."""
    failed = threading.Event()

    def guarded(x: T) -> R | None:
        if failed.is_set():  # a sibling failed: do not start more transfers against a failing store
            return None
        try:
            return fn(x)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        futures = [pool.submit(guarded, x) for x in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


# -- LATEST ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatestPointer:
    """The LATEST pointer: which snapshot is live and the sha256 of its manifest.

    ``etag`` is the version of the LATEST object itself, used for the conditional write that moves it.
    """

    snapshot_id: str
    manifest_sha256: str
    updated_at: str
    previous: str | None = None
    etag: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"snapshot_id": self.snapshot_id, "manifest_sha256": self.manifest_sha256,
                "updated_at": self.updated_at, "previous": self.previous}


def read_latest(store: ObjectStore) -> LatestPointer | None:
    """The live snapshot pointer, or None when nothing was published yet."""
    try:
        data, etag = store.get_bytes_etag(LATEST_KEY)  # one request: the etag describes exactly these bytes
    except ObjectNotFound:
        return None
    try:
        doc = json.loads(data)
        return LatestPointer(doc["snapshot_id"], doc["manifest_sha256"], doc.get("updated_at", ""),
                             doc.get("previous"), etag)
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{store.uri}/{LATEST_KEY} is not a valid LATEST pointer: {exc}") from None


def _move_latest(store: ObjectStore, base: LatestPointer | None, snapshot_id: str, manifest_sha: str) -> LatestPointer:
    """Conditionally point LATEST at ``snapshot_id``; :class:`PublishConflict` if it moved since ``base``."""
    doc = {"format": LATEST_FORMAT, "snapshot_id": snapshot_id, "manifest_sha256": manifest_sha,
           "updated_at": now_iso(), "previous": base.snapshot_id if base else None}
    try:
        if base is None:
            etag = store.put_bytes(LATEST_KEY, dumps(doc), if_none_match=True)
        else:
            etag = store.put_bytes(LATEST_KEY, dumps(doc), if_match=base.etag)
    except PreconditionFailed:
        now = None
        with contextlib.suppress(StoreError):
            now = read_latest(store)
        raise PublishConflict(
            f"{store.uri}: LATEST moved while switching to {snapshot_id!r}: expected "
            f"{base.snapshot_id if base else 'no LATEST'!r}, now {now.snapshot_id if now else None!r}"
        ) from None
    return LatestPointer(snapshot_id, manifest_sha, doc["updated_at"], doc["previous"], etag)


# -- manifests ------------------------------------------------------------------------------------------
def _parse_manifest(snapshot_id: str, data: bytes) -> dict[str, Any]:
    try:
        man = json.loads(data)
        files = man["files"]
        if man.get("snapshot_id") != snapshot_id:
            raise CorruptSnapshot(snapshot_id, MANIFEST, "manifest belongs to another snapshot",
                                  snapshot_id, man.get("snapshot_id"))
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
        for rel, entry in files.items():
            validate_key(rel)
            int(entry["size"]), str(entry["sha256"])
    except CorruptSnapshot:
        raise
    except InvalidKey as exc:
        raise CorruptSnapshot(snapshot_id, MANIFEST, f"unsafe file path in manifest: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptSnapshot(snapshot_id, MANIFEST, f"not a valid manifest: {exc}") from None
    return man


def _get_manifest(store: ObjectStore, snapshot_id: str) -> tuple[dict[str, Any], str]:
    validate_snapshot_id(snapshot_id)
    try:
        data = store.get_bytes(snapshot_key(snapshot_id))
    except ObjectNotFound:
        raise SnapshotNotFound(f"{store.uri}: no snapshot {snapshot_id!r} ({SNAPSHOTS}/{snapshot_id}/{MANIFEST} "
                               "is missing)") from None
    return _parse_manifest(snapshot_id, data), hashlib.sha256(data).hexdigest()


def read_manifest(store: ObjectStore, snapshot_id: str) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a snapshot (:class:`SnapshotNotFound` if there is none)."""
    return _get_manifest(store, snapshot_id)[0]


# -- publish --------------------------------------------------------------------------------------------
def _scan(local_dir: Path) -> dict[str, Path]:
    if not local_dir.is_dir():
        raise SnapshotError(f"publish: {local_dir} is not a directory")
    files: dict[str, Path] = {}
    for path in sorted(local_dir.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(local_dir).as_posix()
        try:
            validate_key(rel)
        except InvalidKey as exc:
            raise SnapshotError(f"publish: cannot publish {path}: {exc}") from None
        if not path.is_file():
            raise SnapshotError(f"publish: {path} is not a regular file")
        files[rel] = path
    if not files:
        raise SnapshotError(f"publish: {local_dir} holds no files")
    if MANIFEST in files:
        raise SnapshotError(f"publish: {local_dir / MANIFEST} would be overwritten by the snapshot manifest; "
                            "put artifact files with that name in a sub-folder (e.g. model/, index/)")
    return files


def _check_expected(store: ObjectStore, base: LatestPointer | None, expected: Any) -> None:
    if expected is ANY:
        return
    want = expected.snapshot_id if isinstance(expected, LatestPointer) else expected
    have = base.snapshot_id if base else None
    if want != have or (isinstance(expected, LatestPointer) and base and expected.etag and expected.etag != base.etag):
        raise PublishConflict(f"{store.uri}: LATEST is {have!r}, publisher expected {want!r}; nothing was published")


def publish_snapshot(
    store: ObjectStore,
    local_dir: str | Path,
    snapshot_id: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    config: Any = None,
    expected_latest: Any = ANY,
    *,
    extra: Mapping[str, Any] | None = None,
    max_workers: int = 4,
) -> dict[str, Any]:
    """Publish every file under ``local_dir`` as snapshot ``snapshot_id`` and make it live.

    Args:
        store: target store.
        local_dir: folder of artifact files (weights, npz/parquet index arrays, reports ...), uploaded
            with their relative paths. A top-level ``manifest.json`` is reserved.
        snapshot_id: new id (default :func:`new_snapshot_id`); ids are immutable once published.
        metrics: evaluation figures shown by ``mfli snapshot list`` (JSON values).
        config: the run's config (a dataclass or JSON mapping); values under secret-looking names are masked.
        expected_latest: ``ANY`` (default: whatever is live when publishing starts), ``None`` (require
            that nothing is live yet), a snapshot id, or a :class:`LatestPointer` read earlier.
        extra: more JSON fields for the manifest (e.g. ``{"dataset": "ml-1m"}``).
        max_workers: parallel uploads.

    Returns:
        the manifest (dict) as written.

    Raises:
        PublishConflict: LATEST was not ``expected_latest``, or another publisher moved it first (the
            objects uploaded by this call are deleted again).
        SnapshotError: bad input folder, or the id already exists with different content.
        StoreError: the store failed after retries (LATEST is unchanged; re-run to resume).
    """
    local_dir = Path(local_dir)
    clash = sorted(set(extra or {}) & _RESERVED_FIELDS)
    if clash:
        raise ValueError(f"publish_snapshot: extra fields {clash} would overwrite manifest fields")
    snapshot_id = validate_snapshot_id(snapshot_id or new_snapshot_id())
    files = _scan(local_dir)
    base = read_latest(store)
    _check_expected(store, base, expected_latest)
    t0 = time.perf_counter()

    digests = {rel: file_digest(p) for rel, p in files.items()}
    entries = {rel: {"sha256": sha, "size": size} for rel, (sha, size, _) in digests.items()}

    existing = None
    with contextlib.suppress(SnapshotNotFound):
        existing = _get_manifest(store, snapshot_id)
    if existing is not None and existing[0]["files"] != entries:
        raise SnapshotError(f"{store.uri}: snapshot {snapshot_id!r} already exists with different files; "
                            "snapshot ids are immutable, publish under a new id")

    def upload(rel: str) -> bool:
        key = snapshot_key(snapshot_id, rel)
        sha, size, _ = digests[rel]
        with contextlib.suppress(ObjectNotFound):
            info = store.head(key)
            # resumed publish: this file is already there. Compared by the stored SHA-256 checksum, never
            # the etag (not an MD5 for multipart or SSE-KMS objects); unknown checksum = upload again.
            if info.size == size and (info.sha256 or store.content_sha256(key)) == sha:
                return False
        store.put_file(key, files[rel])
        return True

    uploaded = sum(_run_all(upload, sorted(files), max_workers))

    created_manifest = False
    if existing is None:
        manifest = {
            "format": MANIFEST_FORMAT,
            "snapshot_id": snapshot_id,
            "created_at": now_iso(),
            "parent": base.snapshot_id if base else None,
            "code_version": code_version(),
            "config": scrub(json.loads(dumps(config))) if config is not None else {},
            "metrics": scrub(json.loads(dumps(dict(metrics or {})))),
            "files": entries,
            "total_bytes": sum(e["size"] for e in entries.values()),
            **scrub(json.loads(dumps(dict(extra or {})))),
        }
        body = store.redact(dumps(manifest).decode()).encode()
        try:
            store.put_bytes(snapshot_key(snapshot_id), body, if_none_match=True)
            created_manifest = True
            manifest_sha = hashlib.sha256(body).hexdigest()
        except PreconditionFailed:  # a concurrent publisher of the same id wrote its manifest first
            manifest, manifest_sha = _get_manifest(store, snapshot_id)
            if manifest["files"] != entries:
                raise SnapshotError(f"{store.uri}: snapshot {snapshot_id!r} was published concurrently with "
                                    "different files") from None
    else:
        manifest, manifest_sha = existing

    if base is not None and base.snapshot_id == snapshot_id and base.manifest_sha256 == manifest_sha:
        log.info("snapshot %s is already live on %s", snapshot_id, store.uri)
        return manifest
    try:
        _move_latest(store, base, snapshot_id, manifest_sha)
    except PublishConflict:
        if created_manifest:
            _discard(store, snapshot_id)
        raise
    log.info("published snapshot %s to %s: %d files (%d uploaded), %d bytes, %.1fs", snapshot_id, store.uri,
             len(files), uploaded, manifest["total_bytes"], time.perf_counter() - t0)
    return manifest


def _discard(store: ObjectStore, snapshot_id: str) -> None:
    """Delete a snapshot that lost the LATEST race (manifest first, so it never looks complete)."""
    try:
        latest = read_latest(store)
        if latest is not None and latest.snapshot_id == snapshot_id:
            return
        store.delete(snapshot_key(snapshot_id))
        store.delete_prefix(f"{SNAPSHOTS}/{snapshot_id}/")
    except StoreError as exc:  # the conflict is the error to report; leftovers go with retention
        log.warning("could not clean up unpublished snapshot %s on %s: %s", snapshot_id, store.uri, exc)


# -- load / verify --------------------------------------------------------------------------------------
def _fetch_verified(store: ObjectStore, snapshot_id: str, rel: str, entry: Mapping[str, Any], dest: Path) -> None:
    try:
        store.get_file(snapshot_key(snapshot_id, rel), dest)
    except ObjectNotFound:
        raise CorruptSnapshot(snapshot_id, rel, "missing from the store") from None
    check_file(snapshot_id, rel, entry, dest)


def _resolve(store: ObjectStore, snapshot_id: str | None) -> tuple[str, dict[str, Any], str]:
    """(snapshot id, manifest, manifest sha256); for LATEST also checks the manifest against the pointer."""
    if snapshot_id is None:
        latest = read_latest(store)
        if latest is None:
            raise SnapshotNotFound(f"{store.uri}: nothing published yet (no {LATEST_KEY})")
        manifest, sha = _get_manifest(store, latest.snapshot_id)
        if sha != latest.manifest_sha256:
            raise CorruptSnapshot(latest.snapshot_id, MANIFEST, f"does not match {LATEST_KEY}",
                                  latest.manifest_sha256, sha)
        return latest.snapshot_id, manifest, sha
    manifest, sha = _get_manifest(store, snapshot_id)
    return snapshot_id, manifest, sha


def _cached_ok(folder: Path, manifest: Mapping[str, Any], manifest_sha: str) -> bool:
    mark = folder / _VERIFIED_MARK
    if not mark.is_file() or mark.read_text().strip() != manifest_sha:
        return False
    try:
        for rel, entry in manifest["files"].items():
            check_file(manifest["snapshot_id"], rel, entry, folder / rel)
    except (CorruptSnapshot, OSError):
        return False
    return True


@dataclass(frozen=True)
class LoadedSnapshot:
    """A verified local copy of a snapshot: ``path`` holds its files and ``manifest.json``."""

    snapshot_id: str
    path: Path
    manifest: dict[str, Any]
    manifest_sha256: str


def open_snapshot(
    store: ObjectStore,
    snapshot_id: str | None = None,
    cache_dir: str | Path | None = None,
    *,
    max_workers: int = 4,
) -> LoadedSnapshot:
    """Like :func:`load_snapshot`, returning the id, folder, manifest and manifest sha256 together."""
    snapshot_id, manifest, manifest_sha = _resolve(store, snapshot_id)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / SNAPSHOTS / snapshot_id
    loaded = LoadedSnapshot(snapshot_id, final, manifest, manifest_sha)
    if _cached_ok(final, manifest, manifest_sha):
        return loaded
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{snapshot_id}.loading-"))
    try:
        def fetch(item: tuple[str, Mapping[str, Any]]) -> None:
            rel, entry = item
            _fetch_verified(store, snapshot_id, rel, entry, staging / rel)

        _run_all(fetch, sorted(manifest["files"].items()), max_workers)
        (staging / MANIFEST).write_bytes(dumps(manifest))
        (staging / _VERIFIED_MARK).write_text(manifest_sha + "\n")
        if final.exists():  # a stale or damaged copy
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(staging, final)
        except OSError:
            if not _cached_ok(final, manifest, manifest_sha):  # lost a race with another loader: use theirs if good
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("loaded snapshot %s from %s into %s (%d files verified)", snapshot_id, store.uri, final,
             len(manifest["files"]))
    return loaded


def load_snapshot(
    store: ObjectStore,
    snapshot_id: str | None = None,
    cache_dir: str | Path | None = None,
    *,
    max_workers: int = 4,
) -> Path:
    """Download a snapshot (default: LATEST's) into ``<cache_dir>/snapshots/<id>/`` and verify it.

    Every file's size and sha256 are checked against the manifest (and the manifest against LATEST)
    before the folder appears under its final name; a verified cached copy is re-hashed, not re-downloaded.
    The folder also holds ``manifest.json``.

    Returns:
        the local snapshot folder.

    Raises:
        SnapshotNotFound: no such snapshot / nothing published.
        CorruptSnapshot: a file is missing, truncated or has the wrong sha256 (names the file).
    """
    return open_snapshot(store, snapshot_id, cache_dir, max_workers=max_workers).path


def _verify(store: ObjectStore, snapshot_id: str) -> tuple[dict[str, Any], str]:
    manifest, manifest_sha = _get_manifest(store, snapshot_id)
    with tempfile.TemporaryDirectory(prefix="mfli-verify-") as tmp:
        for i, (rel, entry) in enumerate(sorted(manifest["files"].items())):
            dest = Path(tmp) / f"{i}.bin"
            _fetch_verified(store, snapshot_id, rel, entry, dest)
            dest.unlink()
    return manifest, manifest_sha


def verify_snapshot(store: ObjectStore, snapshot_id: str) -> dict[str, Any]:
    """Download each file of a snapshot to a temp folder, one at a time, and check size and sha256.

    Returns the manifest; raises :class:`CorruptSnapshot` naming the first bad file.
    """
    return _verify(store, snapshot_id)[0]


# -- list / retention / rollback -----------------------------------------------------------------------
def list_snapshots(store: ObjectStore, *, include_incomplete: bool = False) -> list[dict[str, Any]]:
    """Snapshots oldest first: ``{snapshot_id, created_at, live, complete, metrics, n_files, total_bytes,
    code_version, parent}``. Incomplete ones (no manifest yet: being published, or abandoned) only on request."""
    latest = read_latest(store)
    live = latest.snapshot_id if latest else None
    out = []
    for sid in store.list_dirs(f"{SNAPSHOTS}/"):
        row: dict[str, Any] = {"snapshot_id": sid, "live": sid == live}
        try:
            man = read_manifest(store, sid) if is_snapshot_id(sid) else None
        except SnapshotNotFound:
            man = None
        except CorruptSnapshot as exc:
            man, row["error"] = None, str(exc)
        if man is None:
            if include_incomplete:
                out.append({**row, "complete": False, "created_at": "", "metrics": {}, "n_files": 0,
                            "total_bytes": 0, "code_version": {}, "parent": None})
            continue
        out.append({**row, "complete": True, "created_at": man.get("created_at", ""),
                    "metrics": man.get("metrics", {}), "n_files": len(man["files"]),
                    "total_bytes": man.get("total_bytes", 0), "code_version": man.get("code_version", {}),
                    "parent": man.get("parent")})
    return sorted(out, key=lambda r: (not r["complete"], r["created_at"], r["snapshot_id"]))  # incomplete last


def _delete_snapshot(store: ObjectStore, snapshot_id: str) -> None:
    store.delete(snapshot_key(snapshot_id))  # first: from here on the snapshot is not 'complete'
    store.delete_prefix(f"{SNAPSHOTS}/{snapshot_id}/")
    store.delete_prefix(f"{DELTAS}/{snapshot_id}/")


def apply_retention(
    store: ObjectStore, keep: int, *, incomplete_grace_s: float = 24 * 3600.0, dry_run: bool = False
) -> list[str]:
    """Delete all but the newest ``keep`` complete snapshots (and their deltas); the live one always stays.

    Incomplete snapshots (no manifest) and delta folders without a snapshot are deleted once their
    newest object is older than ``incomplete_grace_s``, so a publish in progress is never touched.

    Returns:
        the deleted (or, with ``dry_run``, the deletable) snapshot ids.
    """
    if keep < 1:
        raise ValueError(f"apply_retention: keep must be >= 1, got {keep}")
    snaps = list_snapshots(store, include_incomplete=True)
    live = next((s["snapshot_id"] for s in snaps if s["live"]), None)
    complete = sorted((s for s in snaps if s["complete"]), key=lambda s: (s["created_at"], s["snapshot_id"]),
                      reverse=True)
    keep_ids = {s["snapshot_id"] for s in complete[:keep]} | ({live} if live else set())
    doomed = [s["snapshot_id"] for s in complete if s["snapshot_id"] not in keep_ids]

    now = datetime.now(UTC)

    def stale(prefix: str) -> bool:
        objs = store.list(prefix)
        stamps = [o.last_modified for o in objs if o.last_modified is not None]
        return bool(objs) and bool(stamps) and (now - max(stamps)).total_seconds() > incomplete_grace_s

    known = {s["snapshot_id"] for s in snaps}
    abandoned = [s["snapshot_id"] for s in snaps
                 if not s["complete"] and s["snapshot_id"] != live and stale(f"{SNAPSHOTS}/{s['snapshot_id']}/")]
    orphan_deltas = [d for d in store.list_dirs(f"{DELTAS}/") if d not in known and stale(f"{DELTAS}/{d}/")]
    if dry_run:
        return doomed + abandoned
    for sid in doomed:
        _delete_snapshot(store, sid)
    for sid in abandoned:
        store.delete_prefix(f"{SNAPSHOTS}/{sid}/")
        store.delete_prefix(f"{DELTAS}/{sid}/")
    for d in orphan_deltas:
        store.delete_prefix(f"{DELTAS}/{d}/")
    if doomed or abandoned or orphan_deltas:
        log.info("retention on %s (keep=%d): deleted %s, abandoned %s, orphan deltas %s", store.uri, keep, doomed,
                 abandoned, orphan_deltas)
    return doomed + abandoned


def rollback(store: ObjectStore, snapshot_id: str) -> LatestPointer:
    """Verify every checksum of ``snapshot_id`` then point LATEST at it (conditional write).

    Raises:
        SnapshotNotFound, CorruptSnapshot: the target is missing or damaged (LATEST unchanged).
        PublishConflict: LATEST moved while verifying.
    """
    base = read_latest(store)
    if base is not None and base.snapshot_id == snapshot_id:
        log.info("rollback: %s is already live on %s", snapshot_id, store.uri)
        return base
    _, manifest_sha = _verify(store, snapshot_id)
    pointer = _move_latest(store, base, snapshot_id, manifest_sha)
    log.info("rollback on %s: LATEST %s -> %s", store.uri, base.snapshot_id if base else None, snapshot_id)
    return pointer
