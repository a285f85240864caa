"""A snapshot: the trained model, its index, its metrics and the serving config it was gated with.

What is gated is what is served: the daily evaluation, the cold-start gate, ``mfli retrieve`` and the
service all build their retriever with :meth:`Snapshot.retriever`, from the :class:`ServingConfig`
stored in the snapshot. This module is the one place that knows a snapshot's folder layout::

    model/          TrainedModel.save (safetensors + its own sha256 manifest)
    index/          MultiFacetIndex.save (npz + index.json with its sha256)
    report/         optional evaluation report (markdown, plots)
    metrics.json    the evaluation's metrics
    serving.json    the ServingConfig the gates measured
    coengagement.npz  optional co-engagement table of blend mode (CoEngagement.save; no pickles)
    neighbours.npz  optional trigger-mode neighbour lists of the scan engine the gates measured
                    (mfli.serve.list_store): a service takes them instead of building its own
    fastscan.npz    optional residual quantiser of that engine's fast-scan codes
                    (mfli.serve.quantiser_store): a service encodes with it instead of fitting its own
    snapshot.json   the manifest: format, sha256 + size of every top-level file and report file, and of
                    model/manifest.json and index/index.json (whose own checksums cover the rest)

:meth:`Snapshot.save` writes it, :meth:`Snapshot.load` verifies and reads it, :meth:`Snapshot.publish`
and :meth:`Snapshot.open` move it through an object store (:mod:`mfli.store.snapshots`).

Example::

    snap = Snapshot(model, index, metrics, ServingConfig())
    snap.publish(store, "20240101T0000-abc")
    snap = Snapshot.open(store)                      # LATEST, downloaded and verified
    res = snap.retriever().retrieve_users(q, k=100)  # what the gate scored and the service serves
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mfli.checksums import sha256_file
from mfli.index.coengagement import CoEngagement
from mfli.index.delta import DeltaIndex, apply_delta, delta_from_table
from mfli.index.inverted import MultiFacetIndex
from mfli.model.trained import TrainedModel
from mfli.serve.config import ServingConfig
from mfli.serve.engine import ScanEngine
from mfli.serve.engine_retriever import EngineRetriever
from mfli.serve.list_store import StoredLists, load_lists, save_lists
from mfli.serve.quantiser_store import StoredQuantiser, load_quantiser, save_quantiser
from mfli.serve.retriever import Retriever
from mfli.store.snapshots import ANY, load_snapshot, publish_snapshot

log = logging.getLogger(__name__)

MODEL_DIR = "model"
INDEX_DIR = "index"
REPORT_DIR = "report"
METRICS_FILE = "metrics.json"
SERVING_FILE = "serving.json"
COENGAGEMENT_FILE = "coengagement.npz"
NEIGHBOURS_FILE = "neighbours.npz"
FASTSCAN_FILE = "fastscan.npz"
MANIFEST_FILE = "snapshot.json"
SNAPSHOT_FORMAT = "mfli-snapshot-folder/1"
# the sub-manifests whose checksums cover model/ and index/
_SUB_MANIFESTS = (f"{MODEL_DIR}/manifest.json", f"{INDEX_DIR}/index.json")

__all__ = [
    "COENGAGEMENT_FILE", "FASTSCAN_FILE", "INDEX_DIR", "MANIFEST_FILE", "METRICS_FILE", "MODEL_DIR", "NEIGHBOURS_FILE",
    "REPORT_DIR",
    "SERVING_FILE",
    "Snapshot", "SnapshotLoadError", "apply_delta_files", "content_key",
]


class SnapshotLoadError(ValueError):
    """A snapshot or delta folder cannot be turned into a serving object; the message names the file."""


def _entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def _manifest_files(folder: Path) -> list[str]:
    """Files ``snapshot.json`` lists: top-level files, the report, and the two sub-manifests."""
    rels = [p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST_FILE]
    report = folder / REPORT_DIR
    if report.is_dir():
        rels += [p.relative_to(folder).as_posix() for p in report.rglob("*") if p.is_file()]
    rels += [r for r in _SUB_MANIFESTS if (folder / r).is_file()]
    return sorted(rels)


@dataclass
class Snapshot:
    """One servable snapshot (CPU), consistent by construction (:meth:`check` runs on creation).

    Attributes:
        model: the :class:`TrainedModel` (towers, features, codebooks ``(L, F, M, d)``).
        index: the :class:`MultiFacetIndex` built with the model's codebooks.
        metrics: the evaluation's figures (JSON values).
        serving: the :class:`ServingConfig` the gates measured and the service uses.
        path: the folder it was loaded from or saved to (None while only in memory).
        coengagement: blend mode's :class:`~mfli.index.coengagement.CoEngagement` table (needed when
            ``serving.blend`` is set), or None.
        neighbour_lists: the scan engine's neighbour lists as stored (``neighbours.npz``), taken by the
            engine :meth:`retriever` builds when they were built for it; None: built there.
        fastscan_quantiser: the scan engine's fast-scan quantiser as stored (``fastscan.npz``), used by
            the engine :meth:`retriever` builds when it was fitted for it; None: fitted there.
    """

    model: TrainedModel
    index: MultiFacetIndex
    metrics: dict[str, Any] = field(default_factory=dict)
    serving: ServingConfig = field(default_factory=ServingConfig)
    path: Path | None = None
    coengagement: CoEngagement | None = None
    neighbour_lists: StoredLists | None = None
    fastscan_quantiser: StoredQuantiser | None = None
    # scan engines built for this snapshot, by their config (building one fits a residual quantiser)
    _engines: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.check()

    # ------------------------------------------------------------------------------ consistency
    def check(self) -> None:
        """Model and index agree on facets and codebook shape; :class:`SnapshotLoadError` otherwise."""
        where = str(self.path) if self.path is not None else "snapshot"
        if list(self.model.facets) != list(self.index.facet_names):
            raise SnapshotLoadError(f"{where}: model facets {self.model.facets} and index facets "
                                    f"{self.index.facet_names} differ")
        cb = tuple(self.model.codebooks.shape)
        idx = self.index
        if cb != (idx.L, idx.n_facets, idx.M, idx.dim):
            raise SnapshotLoadError(f"{where}: model codebooks {cb} do not match the index "
                                    f"(L={idx.L}, F={idx.n_facets}, M={idx.M}, d={idx.dim})")
        if self.serving.blend is not None and self.coengagement is None:
            raise SnapshotLoadError(f"{where}: the serving config asks for blend mode but the snapshot has no "
                                    f"co-engagement table ({COENGAGEMENT_FILE})")

    @property
    def snapshot_id(self) -> str | None:
        """The folder's name (a store cache names it after the snapshot id)."""
        return self.path.name if self.path is not None else None

    # ------------------------------------------------------------------------------ serving
    def retriever(self, index: MultiFacetIndex | DeltaIndex | None = None) -> Retriever | EngineRetriever:
        """The serving retriever: the index (or a delta view of it) searched with the stored config.

        The only way a gate or the service builds one, so both rank with the same settings:
        ``serving.engine="scan"`` gives an :class:`~mfli.serve.engine_retriever.EngineRetriever` (its
        :class:`~mfli.serve.engine.ScanEngine` is built once per snapshot and config, and shared by every
        later call and delta view), ``"reference"`` a :class:`Retriever`.
        """
        view = self.index if index is None else index
        base = view.base if isinstance(view, DeltaIndex) else view
        if base is not self.index:
            raise ValueError("Snapshot.retriever: the delta view must be built on this snapshot's index")
        cfg = self.serving
        if cfg.engine == "scan":
            key = self._engine_key()
            if key not in self._engines:
                stored = self.neighbour_lists
                try:
                    engine = ScanEngine(self.index, self.model.codebooks.numpy(), cfg.scan,
                                        facet_weights=cfg.retriever.facet_weights, lists=stored,
                                        quantiser=self.fastscan_quantiser)
                except ValueError as exc:
                    if stored is None or not str(exc).startswith(stored.source):
                        raise
                    raise SnapshotLoadError(str(exc)) from exc
                if stored is not None and engine.lists_source != stored.source:
                    self.neighbour_lists = None  # built for other settings: not kept in memory twice
                # compile (or load from numba's cache) the kernels now: a loading service is not ready
                # until this returns, so no request pays the compilation
                engine.search(np.zeros((1, self.index.n_facets, self.index.dim), np.float32), 1)
                self._engines[key] = engine
            return EngineRetriever(view, self.model.codebooks.numpy(), self.model.facets, cfg.retriever,
                                   engine=self._engines[key])
        return Retriever(view, self.model.codebooks.numpy(), self.model.facets, cfg.retriever)

    def _engine_key(self) -> tuple[str, str]:
        cfg = self.serving
        return (json.dumps(dataclasses.asdict(cfg.scan), sort_keys=True),
                json.dumps(cfg.retriever.facet_weights and list(cfg.retriever.facet_weights)))

    def save_lists(self, path: str | Path) -> bool:
        """Write the neighbour lists of the engine the serving config uses (built by :meth:`retriever`,
        e.g. for a gate), else the stored ones (:attr:`neighbour_lists`); False (nothing written) when
        there are none."""
        engine = self._engines.get(self._engine_key()) if self.serving.engine == "scan" else None
        if engine is not None and engine.has_lists and engine.lists_source != "set":
            engine.save_lists(path)
            return True
        stored = self.neighbour_lists
        scan = self.serving.scan
        if self.serving.engine == "scan" and stored is not None and engine is None and \
                stored.key.get("neighbours") == scan.neighbours and stored.key.get("compact_lists") == scan.compact_lists \
                and bool(stored.key.get("list_scores")) == scan.list_scores:
            save_lists(path, stored.lists, stored.key)
            return True
        return False

    def save_quantiser(self, path: str | Path) -> bool:
        """Write the fast-scan quantiser of the engine the serving config uses (built by :meth:`retriever`),
        else the stored one (:attr:`fastscan_quantiser`) when it was fitted for that engine's settings;
        False (nothing written) when there is none."""
        from mfli.serve.engine_fastscan import subquantizers  # numba: loaded with the engine, not the module

        if self.serving.engine != "scan" or self.serving.scan.prerank != "fastscan":
            return False
        engine = self._engines.get(self._engine_key())
        if engine is not None:
            if engine.quantiser_source is None:
                return False  # a catalogue too small for fast-scan codes
            engine.save_quantiser(path)
            return True
        stored = self.fastscan_quantiser
        scan = self.serving.scan
        want = (subquantizers(scan.fastscan_subquantizers, self.index.n_facets * self.index.dim, scan.fastscan_dims),
                scan.pq_train_size, scan.seed)
        if stored is not None and tuple(stored.key.get(f) for f in ("n_sub", "train_size", "seed")) == want:
            save_quantiser(path, stored.centroids, stored.key)
            return True
        return False

    # ------------------------------------------------------------------------------ persistence
    def save(self, folder: str | Path, report_dir: str | Path | None = None) -> Path:
        """Write the snapshot folder (layout in the module docstring); ``report_dir`` is copied to ``report/``.

        Returns:
            the folder.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save(folder / MODEL_DIR)
        self.index.save(folder / INDEX_DIR)
        if self.coengagement is not None:
            self.coengagement.save(folder / COENGAGEMENT_FILE)
        if not self.save_lists(folder / NEIGHBOURS_FILE):
            (folder / NEIGHBOURS_FILE).unlink(missing_ok=True)  # a reused folder keeps no other engine's lists
        if not self.save_quantiser(folder / FASTSCAN_FILE):
            (folder / FASTSCAN_FILE).unlink(missing_ok=True)
        if report_dir is not None:
            shutil.copytree(report_dir, folder / REPORT_DIR, dirs_exist_ok=True)
        (folder / METRICS_FILE).write_text(json.dumps(self.metrics, indent=2, sort_keys=True, default=str))
        (folder / SERVING_FILE).write_text(json.dumps(self.serving.to_dict(), indent=2, sort_keys=True))
        manifest = {"format": SNAPSHOT_FORMAT, "files": {r: _entry(folder / r) for r in _manifest_files(folder)}}
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        self.path = folder
        return folder

    @staticmethod
    def verify(folder: str | Path) -> dict[str, Any]:
        """Check ``snapshot.json`` against the folder: every listed file present with its size and sha256.

        ``model/`` and ``index/`` are further checked by their loaders (:meth:`load`). A folder written
        before snapshot manifests existed (no ``snapshot.json``) has nothing to check here.

        Returns:
            the manifest (``{}`` for such an older folder).

        Raises:
            SnapshotLoadError: naming the first missing, truncated or changed file.
        """
        folder = Path(folder)
        for sub in (MODEL_DIR, INDEX_DIR):
            if not (folder / sub).is_dir():
                raise SnapshotLoadError(f"{folder}: no {sub}/ folder (a snapshot holds model/ and index/)")
        mpath = folder / MANIFEST_FILE
        if not mpath.is_file():
            return {}
        try:
            manifest = json.loads(mpath.read_text())
            files = manifest["files"]
            if manifest.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"format {manifest.get('format')!r}, expected {SNAPSHOT_FORMAT!r}")
        except (ValueError, KeyError, TypeError) as exc:
            raise SnapshotLoadError(f"{mpath}: not a valid snapshot manifest ({exc})") from exc
        for rel, entry in sorted(files.items()):
            path = folder / rel
            if not path.is_file():
                raise SnapshotLoadError(f"{path}: missing (listed in {MANIFEST_FILE})")
            got = _entry(path)
            if got["size"] != entry["size"] or got["sha256"] != entry["sha256"]:
                raise SnapshotLoadError(f"{path}: sha256 checksum mismatch against {MANIFEST_FILE} "
                                        f"({entry['size']} bytes expected, {got['size']} found)")
        return manifest

    @classmethod
    def load(cls, folder: str | Path) -> Snapshot:
        """Verify and load a snapshot folder (CPU): :meth:`verify`, then the model's and the index's
        own checksums, then :meth:`check`.

        A folder without ``serving.json`` (written before snapshots stored it) is served with
        :class:`ServingConfig` defaults.

        Raises:
            SnapshotLoadError: a missing/corrupt file, or a model and index that disagree (names the file).
        """
        folder = Path(folder)
        cls.verify(folder)
        try:
            index = MultiFacetIndex.load(folder / INDEX_DIR)
            model = TrainedModel.load(folder / MODEL_DIR, device="cpu")
            co_path = folder / COENGAGEMENT_FILE
            coengagement = CoEngagement.load(co_path) if co_path.is_file() else None
            nb_path = folder / NEIGHBOURS_FILE
            lists = load_lists(nb_path) if nb_path.is_file() else None
            fs_path = folder / FASTSCAN_FILE
            quantiser = load_quantiser(fs_path) if fs_path.is_file() else None
        except (ValueError, OSError, KeyError) as exc:
            raise SnapshotLoadError(f"{folder}: {exc}") from exc
        metrics = _read_json(folder / METRICS_FILE, {})
        try:
            serving = ServingConfig.from_dict(_read_json(folder / SERVING_FILE, None))
        except (TypeError, ValueError) as exc:
            raise SnapshotLoadError(f"{folder / SERVING_FILE}: {exc}") from exc
        return cls(model, index, metrics, serving, folder, coengagement, lists, quantiser)

    # ------------------------------------------------------------------------------ object store
    def publish(self, store: Any, snapshot_id: str, *, report_dir: str | Path | None = None, config: Any = None,
                expected_latest: Any = ANY, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Save into a scratch folder and publish it as ``snapshot_id`` (:func:`mfli.store.publish_snapshot`),
        moving LATEST. The store manifest records the metrics and the serving config.

        Args:
            store: an open :class:`~mfli.store.ObjectStore`.
            report_dir: evaluation report folder, published as ``report/``.
            config: the run's configuration (recorded in the store manifest, secrets masked).
            expected_latest: LATEST the publish builds on (:func:`~mfli.store.publish_snapshot`).
            extra: more manifest fields.

        Returns:
            the store manifest as written.
        """
        with tempfile.TemporaryDirectory(prefix="mfli-snapshot-") as tmp:
            folder = Path(tmp) / "snapshot"
            keep = self.path
            self.save(folder, report_dir)
            self.path = keep
            return publish_snapshot(store, folder, snapshot_id, metrics=self.metrics, config=config,
                                    expected_latest=expected_latest,
                                    extra={"serving": self.serving.to_dict(), **dict(extra or {})})

    @classmethod
    def open(cls, store: Any, snapshot_id: str | None = None, cache_dir: str | Path | None = None) -> Snapshot:
        """Download a published snapshot (default LATEST's) into the cache, verified, and load it."""
        return cls.load(load_snapshot(store, snapshot_id, cache_dir))


def _read_json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise SnapshotLoadError(f"{path}: not valid JSON ({exc})") from exc


def content_key(folder: str | Path) -> str:
    """Identity of a snapshot folder's content: its path plus the sha256 of its manifests and serving config.

    Cheap (a few small files): a serving process compares it to reuse a loaded snapshot."""
    folder = Path(folder)
    h = hashlib.sha256(str(folder.resolve()).encode())
    for rel in (*_SUB_MANIFESTS, SERVING_FILE, MANIFEST_FILE):
        p = folder / rel
        h.update(p.read_bytes() if p.is_file() else b"-")
    return h.hexdigest()


def apply_delta_files(base: MultiFacetIndex, delta_paths: Sequence[str | Path]) -> MultiFacetIndex | DeltaIndex:
    """Apply delta parquet files in order (a later window's version of an item replaces an earlier one).

    Returns ``base`` itself when there are none.

    Raises:
        SnapshotLoadError: a file that is not a delta table of this index (names the file).
    """
    import pyarrow.parquet as pq

    view: MultiFacetIndex | DeltaIndex = base
    for path in delta_paths:
        try:
            ids, emb, clusters = delta_from_table(pq.read_table(path), base.facet_names, source=str(path))
            if ids.size:
                view = apply_delta(view, ids, emb, clusters)
        except Exception as exc:  # pyarrow, DataError, shape or unknown-cluster errors: name the file
            raise SnapshotLoadError(f"delta {path}: {exc}") from exc
    return view
