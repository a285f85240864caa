"""Serve whatever LATEST points at: a verified snapshot plus its deltas, hot-swapped on refresh.

``LiveRetriever`` owns no retrieval logic. It downloads and verifies the live snapshot and its deltas
into a local cache and hands the folders to a ``build(snapshot_dir, delta_paths) -> object`` factory
(e.g. one that loads the model and the inverted index and applies the deltas). ``refresh()`` builds the
new object off to the side and then replaces a single reference: a query that already took the old
object finishes on it, the next query gets the new one, and readers never take a lock.

Example::

    live = LiveRetriever.from_store("s3://models/mfli", build=build_retriever)
    items = live.current.retrieve(user_id=7, k=50)   # take `current` once per request
    live.start_polling(60)                           # or call live.refresh() from a scheduler
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mfli.store import ObjectStore, open_store
from mfli.store.deltas import list_deltas, load_deltas
from mfli.store.errors import CorruptSnapshot, SnapshotNotFound
from mfli.store.keys import DELTAS, MANIFEST, SNAPSHOTS
from mfli.store.snapshots import LoadedSnapshot, default_cache_dir, open_snapshot, read_latest

log = logging.getLogger(__name__)

BuildFn = Callable[[Path, list[Path]], Any]


@dataclass(frozen=True)
class LiveState:
    """One immutable serving generation: the built object and what it was built from."""

    obj: Any
    snapshot_id: str
    manifest_sha256: str
    snapshot_dir: Path
    manifest: dict[str, Any]
    deltas: tuple[tuple[str, str], ...] = ()  # (window, sha256) applied, in order
    delta_paths: tuple[Path, ...] = ()
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class LiveRetriever:
    """Keeps the object built from the live snapshot (+ deltas) of a store, and swaps it on refresh.

    Args:
        store: the store to follow (an open store or a URI).
        build: ``build(snapshot_dir, delta_paths) -> object``; delta_paths are verified parquet files in
            window order. Called again on each change, off the serving path.
        cache_dir: local cache (default :func:`mfli.store.snapshots.default_cache_dir`).
        keep_cached: snapshot folders this instance keeps in the cache (current + previous by default).
    """

    def __init__(self, store: ObjectStore | str, build: BuildFn, cache_dir: str | Path | None = None,
                 keep_cached: int = 2):
        if not callable(build):
            raise TypeError("LiveRetriever: build must be a callable build(snapshot_dir, delta_paths) -> object")
        self.store = open_store(store)
        self.build = build
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.keep_cached = max(1, keep_cached)
        self._state: LiveState | None = None
        self._refresh_lock = threading.Lock()  # only refreshers serialise; readers never lock
        self._loaded_ids: list[str] = []
        self._last_error: str | None = None
        self.refresh_failures = 0  # failed refreshes since start (a metric: the old snapshot kept serving)
        self._last_check: str | None = None
        self._stop: threading.Event | None = None
        self._poller: threading.Thread | None = None

    @classmethod
    def from_store(cls, uri: ObjectStore | str, cache_dir: str | Path | None = None, build: BuildFn | None = None,
                   **kw: Any) -> LiveRetriever:
        """Open ``uri``, load LATEST's snapshot and deltas (all verified) and build the object.

        Raises:
            SnapshotNotFound: nothing is published yet.
            CorruptSnapshot / CorruptDelta: the live data fails verification.
        """
        if build is None:
            raise TypeError("LiveRetriever.from_store: pass build=callable(snapshot_dir, delta_paths) -> object")
        live = cls(uri, build, cache_dir, **kw)
        live.refresh(raise_errors=True)
        return live

    # -- serving side ---------------------------------------------------------------------------------
    @property
    def current(self) -> Any:
        """The object built from the live snapshot; take it once per request and use that reference."""
        state = self._state
        if state is None:
            raise SnapshotNotFound(f"{self.store.uri}: nothing loaded yet")
        return state.obj

    @property
    def state(self) -> LiveState | None:
        return self._state

    def __getattr__(self, name: str) -> Any:
        # Convenience: live.retrieve(...) calls the current object's method (one reference read per call).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.current, name)

    def metadata(self) -> dict[str, Any]:
        """Snapshot id, deltas applied, when loaded, last refresh error, plus the object's own metadata()."""
        state = self._state
        if state is None:
            return {"store": self.store.uri, "snapshot_id": None, "deltas_applied": [],
                    "last_refresh_error": self._last_error}
        meta = {
            "store": self.store.uri,
            "snapshot_id": state.snapshot_id,
            "manifest_sha256": state.manifest_sha256,
            "created_at": state.manifest.get("created_at"),
            "metrics": state.manifest.get("metrics", {}),
            "deltas_applied": [w for w, _ in state.deltas],
            "n_deltas": len(state.deltas),
            "loaded_at": state.loaded_at,
            "last_checked_at": self._last_check,
            "last_refresh_error": self._last_error,
        }
        obj_meta = getattr(state.obj, "metadata", None)
        if callable(obj_meta):
            meta["retriever"] = obj_meta()
        return meta

    # -- refresh side ---------------------------------------------------------------------------------
    def refresh(self, *, raise_errors: bool = False) -> bool:
        """Check LATEST and the live snapshot's deltas; rebuild and swap if either changed.

        Returns:
            True if a new object is now served. On failure the previous object keeps serving; the error
            is logged and kept in ``metadata()["last_refresh_error"]`` (raised with ``raise_errors``).
        """
        with self._refresh_lock:
            try:
                swapped = self._refresh()
                self._last_error = None
                return swapped
            except Exception as exc:
                self._last_error = self.store.redact(f"{type(exc).__name__}: {exc}")
                self.refresh_failures += 1
                if raise_errors:
                    raise
                log.error("refresh from %s failed, still serving %s: %s", self.store.uri,
                          self._state.snapshot_id if self._state else None, self._last_error)
                return False
            finally:
                self._last_check = datetime.now(UTC).isoformat(timespec="seconds")

    def _refresh(self) -> bool:
        pointer = read_latest(self.store)
        if pointer is None:
            raise SnapshotNotFound(f"{self.store.uri}: nothing published yet (no LATEST)")
        old = self._state
        deltas = list_deltas(self.store, pointer.snapshot_id)
        sig = tuple((d["window"], d["sha256"]) for d in deltas)
        same_snapshot = old is not None and (old.snapshot_id, old.manifest_sha256) == (
            pointer.snapshot_id, pointer.manifest_sha256)
        if same_snapshot and sig == old.deltas:
            return False
        if same_snapshot:
            snap = LoadedSnapshot(old.snapshot_id, old.snapshot_dir, old.manifest, old.manifest_sha256)
        else:
            snap = open_snapshot(self.store, pointer.snapshot_id, self.cache_dir)
            if snap.manifest_sha256 != pointer.manifest_sha256:
                raise CorruptSnapshot(snap.snapshot_id, MANIFEST, "does not match LATEST",
                                      pointer.manifest_sha256, snap.manifest_sha256)
        paths = load_deltas(self.store, snap.snapshot_id, self.cache_dir, deltas)
        t0 = time.perf_counter()
        obj = self.build(snap.path, list(paths))
        self._state = LiveState(obj, snap.snapshot_id, snap.manifest_sha256, snap.path, snap.manifest, sig,
                                tuple(paths))
        log.info("serving snapshot %s + %d deltas from %s (built in %.2fs)", snap.snapshot_id, len(sig),
                 self.store.uri, time.perf_counter() - t0)
        self._forget_old(snap.snapshot_id)
        return True

    def _forget_old(self, current: str) -> None:
        """Delete cached folders of snapshots this instance served before, beyond ``keep_cached``."""
        if current in self._loaded_ids:
            self._loaded_ids.remove(current)
        self._loaded_ids.append(current)
        while len(self._loaded_ids) > self.keep_cached:
            sid = self._loaded_ids.pop(0)
            # Objects built from it stay usable: they hold their data in memory (or an mmap of unlinked files).
            shutil.rmtree(self.cache_dir / SNAPSHOTS / sid, ignore_errors=True)
            shutil.rmtree(self.cache_dir / DELTAS / sid, ignore_errors=True)

    # -- background polling -----------------------------------------------------------------------------
    def start_polling(self, interval_s: float = 60.0) -> None:
        """Call :meth:`refresh` every ``interval_s`` seconds in a daemon thread until :meth:`stop_polling`."""
        if self._poller is not None and self._poller.is_alive():
            return
        self._stop = threading.Event()
        stop = self._stop

        def loop() -> None:
            while not stop.wait(interval_s):
                self.refresh()

        self._poller = threading.Thread(target=loop, name="mfli-live-refresh", daemon=True)
        self._poller.start()

    def stop_polling(self, timeout: float | None = 5.0) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout)
        self._poller = None
