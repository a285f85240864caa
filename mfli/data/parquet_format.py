"""The canonical on-disk layout, ``mfli-parquet``: what every stage after loading reads and writes.

Layout of a dataset folder::

    <dir>/_dataset.json                  {"format": "mfli-parquet", "version": 1, "name": ..., "meta": {...},
                                          "counts": {"interactions": N, "items": N, "users": N, "parts": K},
                                          "sha256": {"items.parquet": hex, "interactions/part-00000.parquet": hex, ...}}
    <dir>/items.parquet                  ITEMS_SCHEMA
    <dir>/users.parquet                  USERS_BASE_SCHEMA + feature columns
    <dir>/interactions/part-00000.parquet ...   INTERACTIONS_SCHEMA, at most ``rows_per_part`` rows each

Every data file's sha256 is recorded in ``_dataset.json`` and checked on load (:func:`verify_checksums`):
a flipped byte in a part is a :class:`DataError` naming the file, never garbage timestamps trained on.
Folders written before checksums were recorded load unverified.

Writes are atomic: everything goes into a hidden temp folder beside the target, ``_dataset.json`` is
written last, and the folder is renamed into place, so a crash never leaves a half dataset under the
target name. Big datasets are written in chunks with :class:`ParquetDatasetWriter` and summarised
without loading them (:func:`parquet_stats` streams record batches).

Example::

    from mfli.data.loaders import load_dataset
    from mfli.data.parquet_format import write_dataset, load_parquet_dataset
    write_dataset(load_dataset("../shared/datasets/ml-latest-small"), "data/ml-small")
    ds = load_parquet_dataset("data/ml-small")
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mfli.checksums import sha256_file
from mfli.data.dataset import Dataset
from mfli.data.errors import DataError
from mfli.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA, USERS_BASE_SCHEMA, conform, to_arrow

FORMAT = "mfli-parquet"
VERSION = 1
MARKER = "_dataset.json"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
INTERACTIONS_DIR = "interactions"
#: Rows per interaction part file: ~100 MB compressed, large enough for fast scans, small enough to
#: stream one at a time.
DEFAULT_ROWS_PER_PART = 5_000_000
_COMPRESSION = "zstd"


class ParquetDatasetWriter:
    """Write an mfli-parquet dataset chunk by chunk, atomically.

    Args:
        out_dir: target folder; replaced only if absent, empty, or already an mfli-parquet dataset.
        name: dataset name recorded in ``_dataset.json``.
        meta: JSON-serialisable provenance (non-JSON values are stored as strings).
        rows_per_part: interaction rows per part file.

    Use as a context manager; leaving the block without an exception commits, an exception discards::

        with ParquetDatasetWriter("data/synth", "synth") as w:
            for chunk in chunks:            # (n, 4) canonical interaction frames or arrow tables
                w.write_interactions(chunk)
            w.write_items(items)            # may also be called once per chunk
            w.write_users(users)
    """

    def __init__(
        self, out_dir: str | Path, name: str, meta: dict | None = None, *, rows_per_part: int = DEFAULT_ROWS_PER_PART
    ) -> None:
        self.out_dir = Path(out_dir)
        self.name = name
        self.meta = dict(meta or {})
        self.rows_per_part = int(rows_per_part)
        _check_replaceable(self.out_dir)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.out_dir.parent / f".{self.out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
        (self._tmp / INTERACTIONS_DIR).mkdir(parents=True)
        self._part: pq.ParquetWriter | None = None
        self._part_rows = 0
        self._n_parts = 0
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._counts = {"interactions": 0, "items": 0, "users": 0}
        self._done = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def write_interactions(self, chunk: pd.DataFrame | pa.Table) -> None:
        """Append (n, 4) interactions; parts roll over every ``rows_per_part`` rows."""
        table = _as_table(chunk, "interactions", INTERACTIONS_SCHEMA, f"{self.name}:interactions")
        start = 0
        while start < table.num_rows:
            if self._part is None:
                path = self._tmp / INTERACTIONS_DIR / f"part-{self._n_parts:05d}.parquet"
                self._part = pq.ParquetWriter(path, INTERACTIONS_SCHEMA, compression=_COMPRESSION)
                self._n_parts += 1
                self._part_rows = 0
            take = min(table.num_rows - start, self.rows_per_part - self._part_rows)
            self._part.write_table(table.slice(start, take))
            self._part_rows += take
            start += take
            if self._part_rows >= self.rows_per_part:
                self._part.close()
                self._part = None
        self._counts["interactions"] += table.num_rows

    def write_items(self, chunk: pd.DataFrame | pa.Table) -> None:
        """Append (n, 6) items."""
        table = _as_table(chunk, "items", ITEMS_SCHEMA, f"{self.name}:items")
        self._append(ITEMS_FILE, table, "items")

    def write_users(self, chunk: pd.DataFrame | pa.Table) -> None:
        """Append (n, 1 + features) users; later chunks must carry the first chunk's columns."""
        if isinstance(chunk, pd.DataFrame):
            chunk = to_arrow(conform(chunk, "users", f"{self.name}:users"), "users")
        first = self._writers.get(USERS_FILE)
        schema = first.schema if first is not None else None
        if schema is None:
            if "user_id" not in chunk.schema.names:
                raise DataError(f"{self.name}:users", "users: missing column(s) ['user_id']", column="user_id")
            # user_id first, int64, not null; feature columns as they come
            fields = [pa.field("user_id", pa.int64(), nullable=False)] + [f for f in chunk.schema if f.name != "user_id"]
            schema = pa.schema(fields)
        table = _cast(chunk, schema, f"{self.name}:users", "users")
        self._append(USERS_FILE, table, "users")

    def _append(self, file: str, table: pa.Table, key: str) -> None:
        writer = self._writers.get(file)
        if writer is None:
            writer = self._writers[file] = pq.ParquetWriter(self._tmp / file, table.schema, compression=_COMPRESSION)
        writer.write_table(table)
        self._counts[key] += table.num_rows

    def commit(self) -> Path:
        """Close files, write ``_dataset.json`` and move the folder into place. Returns ``out_dir``."""
        if self._done:
            return self.out_dir
        try:
            if self._n_parts == 0:  # always at least one (possibly empty) part
                path = self._tmp / INTERACTIONS_DIR / "part-00000.parquet"
                pq.write_table(INTERACTIONS_SCHEMA.empty_table(), path, compression=_COMPRESSION)
                self._n_parts = 1
            if self._part is not None:
                self._part.close()
                self._part = None
            if ITEMS_FILE not in self._writers:
                self.write_items(ITEMS_SCHEMA.empty_table())
            if USERS_FILE not in self._writers:
                self.write_users(USERS_BASE_SCHEMA.empty_table())
            for w in self._writers.values():
                w.close()
            marker = {
                "format": FORMAT,
                "version": VERSION,
                "name": self.name,
                "meta": self.meta,
                "counts": {**self._counts, "parts": self._n_parts},
                "sha256": file_checksums(self._tmp),
            }
            (self._tmp / MARKER).write_text(json.dumps(marker, indent=2, default=str) + "\n")
            _swap_into_place(self._tmp, self.out_dir)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.out_dir

    def abort(self) -> None:
        """Discard everything written so far."""
        for w in [self._part, *self._writers.values()]:
            if w is not None:
                try:
                    w.close()
                except (OSError, pa.ArrowException):  # already failing; the temp folder goes anyway
                    continue
        self._part = None
        self._writers.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._done = True


def write_dataset(ds: Dataset, out_dir: str | Path, *, rows_per_part: int = DEFAULT_ROWS_PER_PART) -> Path:
    """Write ``ds`` (conformed on the way) as an mfli-parquet folder, atomically. Returns ``out_dir``.

    ``meta`` records the source format as ``meta["source_format"]`` (the written dataset's format is
    ``mfli-parquet``).
    """
    meta = dict(ds.meta)
    if ds.format != FORMAT:
        meta.setdefault("source_format", ds.format)
    with ParquetDatasetWriter(out_dir, ds.name, meta, rows_per_part=rows_per_part) as w:
        w.write_interactions(ds.interactions)
        w.write_items(ds.items)
        w.write_users(ds.users)
    return Path(out_dir)


def read_marker(path: str | Path) -> dict[str, Any]:
    """Parse and check ``<path>/_dataset.json``."""
    path = Path(path)
    marker_file = path / MARKER
    if not marker_file.is_file():
        raise DataError(marker_file, "missing file (not an mfli-parquet dataset)")
    try:
        marker = json.loads(marker_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(marker_file, f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    except UnicodeDecodeError:
        raise DataError(marker_file, "not valid utf-8 text") from None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        got = marker.get("format") if isinstance(marker, dict) else marker
        raise DataError(marker_file, f"expected \"format\": \"{FORMAT}\", got {got!r}", column="format")
    if marker.get("version", VERSION) > VERSION:
        raise DataError(marker_file, f"layout version {marker['version']} is newer than this reader ({VERSION})", column="version")
    return marker


def file_checksums(folder: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the data files of an mfli-parquet folder (for ``_dataset.json``)."""
    folder = Path(folder)
    files = [folder / ITEMS_FILE, folder / USERS_FILE, *sorted((folder / INTERACTIONS_DIR).glob("part-*.parquet"))]
    return {f.relative_to(folder).as_posix(): sha256_file(f) for f in files if f.is_file()}


def verify_checksums(path: str | Path, marker: dict[str, Any]) -> None:
    """Check every data file against the sha256 recorded in ``_dataset.json``; DataError naming the file.

    Also refuses interaction parts the marker does not list (a stray or renamed part would be read).
    Folders whose marker has no ``sha256`` (written before checksums were recorded) pass unchecked.
    """
    path = Path(path)
    recorded = marker.get("sha256")
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise DataError(path / MARKER, "\"sha256\" must be an object {file: hex digest}", column="sha256")
    for rel, want in sorted(recorded.items()):
        file = path / rel
        if not file.is_file():
            raise DataError(file, "missing file")
        got = sha256_file(file)
        if got != want:
            raise DataError(file, f"corrupt file: sha256 {got[:16]}... does not match {want[:16]}... recorded in "
                                  f"{MARKER}; restore or regenerate the dataset")
    for part in sorted((path / INTERACTIONS_DIR).glob("part-*.parquet")):
        if part.relative_to(path).as_posix() not in recorded:
            raise DataError(part, f"interaction part not listed in {MARKER} (a stray file?)")


def interaction_parts(path: str | Path) -> list[Path]:
    """Sorted interaction part files of an mfli-parquet folder (at least one)."""
    folder = Path(path) / INTERACTIONS_DIR
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        raise DataError(folder, "missing interaction parts (part-*.parquet)")
    return parts


def load_parquet_dataset(path: str | Path) -> Dataset:
    """Load an mfli-parquet folder fully into memory as a canonical :class:`Dataset`."""
    path = Path(path)
    marker = read_marker(path)
    verify_checksums(path, marker)
    inter = pa.concat_tables([_read(p, INTERACTIONS_SCHEMA, "interactions") for p in interaction_parts(path)])
    items_t = _read(path / ITEMS_FILE, ITEMS_SCHEMA, "items")
    users_t = _read(path / USERS_FILE, None, "users")
    items = items_t.to_pandas()
    # arrow hands list cells back as numpy arrays; canonical cells are python lists
    items["categories"] = items_t.column("categories").to_pylist()
    name = marker.get("name") or path.resolve().name
    return Dataset(name, FORMAT, inter.to_pandas(), items, users_t.to_pandas(), dict(marker.get("meta") or {}))


def _read(file: Path, schema: pa.Schema | None, table: str) -> pa.Table:
    if not file.is_file():
        raise DataError(file, "missing file")
    try:
        t = pq.read_table(file)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(file, f"unreadable parquet file: {exc}") from None
    if schema is None:  # users: user_id is the one required column
        if "user_id" not in t.schema.names:
            raise DataError(file, f"{table}: missing column 'user_id'", column="user_id")
        return t
    return _cast(t, schema, file, table)


def _cast(t: pa.Table, schema: pa.Schema, source: str | Path, table: str) -> pa.Table:
    missing = [n for n in schema.names if n not in t.schema.names]
    if missing:
        raise DataError(source, f"{table}: missing column(s) {missing}", column=missing[0])
    t = t.select(schema.names)
    for f in schema:
        col = t.column(f.name)
        if not f.nullable and col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(source, f"{table}: null value in non-nullable column", line=row, column=f.name)
        if col.type != f.type:
            try:
                col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                if pa.types.is_timestamp(col.type) and pa.types.is_timestamp(f.type):
                    _timestamp_range_error(col, source, table, f.name)
                raise DataError(source, f"{table}: column has type {col.type}, expected {f.type}: {exc}", column=f.name) from None
    return t.cast(schema)


def _timestamp_range_error(col: pa.ChunkedArray, source: str | Path, table: str, column: str) -> None:
    """Raise a DataError at the first timestamp a datetime64[ns] cannot hold (after 2262, before 1677)."""
    unit = col.type.unit
    per_ns = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
    raw = col.cast(pa.int64()).to_numpy(zero_copy_only=False)
    lo, hi = -(2**63) // per_ns + 1, (2**63 - 1) // per_ns
    bad = np.flatnonzero((raw < lo) | (raw > hi))
    if bad.size:
        row = int(bad[0])
        value = col[row].as_py()
        raise DataError(source, f"{table}: timestamp {value} is outside the supported range 1677-09-22 .. 2262-04-11 "
                                f"({bad.size} row(s))", line=row, column=column)


def _as_table(chunk: pd.DataFrame | pa.Table, table: str, schema: pa.Schema, source: str) -> pa.Table:
    if isinstance(chunk, pd.DataFrame):
        return to_arrow(conform(chunk, table, source), table)
    return _cast(chunk, schema, source, table)


def _is_mfli_dataset(path: Path) -> bool:
    try:
        return json.loads((path / MARKER).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_replaceable(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DataError(out_dir, "exists and is a file; refusing to overwrite")
    if any(out_dir.iterdir()) and not _is_mfli_dataset(out_dir):
        raise DataError(out_dir, "exists and is not an mfli-parquet dataset; refusing to overwrite")


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``; an existing dataset there is moved aside first, then deleted."""
    _check_replaceable(out_dir)
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class _DistinctIds:
    """Count distinct int64 ids streamed in batches without holding the stream.

    Small non-negative ids (the usual dense ids) tick a boolean map (1 byte per possible id, at most
    256 MB); other ids fall back to merging sorted unique arrays.
    """

    MAP_LIMIT = 1 << 28

    def __init__(self) -> None:
        self._seen: np.ndarray | None = np.zeros(0, dtype=bool)
        self._uniques: list[np.ndarray] = []
        self._pending = 0

    def add(self, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        lo, hi = int(ids.min()), int(ids.max())
        if self._seen is not None and lo >= 0 and hi < self.MAP_LIMIT:
            if hi >= len(self._seen):
                grown = np.zeros(max(hi + 1, 2 * len(self._seen)), dtype=bool)
                grown[: len(self._seen)] = self._seen
                self._seen = grown
            self._seen[ids] = True
            return
        if self._seen is not None:  # switch modes, keeping what was seen
            self._uniques.append(np.flatnonzero(self._seen).astype(np.int64))
            self._seen = None
        u = np.unique(ids)
        self._uniques.append(u)
        self._pending += len(u)
        if self._pending > 20_000_000:
            self._uniques = [np.unique(np.concatenate(self._uniques))]
            self._pending = len(self._uniques[0])

    def count(self) -> int:
        if self._seen is not None:
            return int(np.count_nonzero(self._seen))
        return len(np.unique(np.concatenate(self._uniques))) if self._uniques else 0


def parquet_stats(path: str | Path, *, progress: bool = False, batch_rows: int = 1 << 20) -> dict[str, Any]:
    """``{format, users, items, interactions, first_ts, last_ts}`` of an mfli-parquet folder, streamed.

    Reads only ``user_id``, ``item_id`` and ``event_ts``, one record batch (``batch_rows`` rows) at a
    time, so memory holds the distinct-id maps, not the events. ``progress`` draws a tqdm bar on stderr.
    """
    from tqdm import tqdm

    path = Path(path)
    verify_checksums(path, read_marker(path))
    parts = interaction_parts(path)
    files = []
    for p in parts:
        try:
            f = pq.ParquetFile(p)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(p, f"unreadable parquet file: {exc}") from None
        missing = [c for c in ("user_id", "item_id", "event_ts") if c not in f.schema_arrow.names]
        if missing:
            raise DataError(p, f"interactions: missing column(s) {missing}", column=missing[0])
        files.append((p, f))
    users, items = _DistinctIds(), _DistinctIds()
    n, first, last = 0, None, None
    total = sum(f.metadata.num_rows for _, f in files)
    with tqdm(total=total, unit="rows", unit_scale=True, desc="stats", file=sys.stderr, disable=not progress) as bar:
        for p, f in files:
            try:
                for batch in f.iter_batches(batch_size=batch_rows, columns=["user_id", "item_id", "event_ts"]):
                    users.add(batch.column("user_id").to_numpy(zero_copy_only=False).astype(np.int64, copy=False))
                    items.add(batch.column("item_id").to_numpy(zero_copy_only=False).astype(np.int64, copy=False))
                    ts = batch.column("event_ts")
                    if ts.null_count:
                        raise DataError(p, "interactions: null value in non-nullable column", column="event_ts")
                    if len(ts):
                        mm = pc.min_max(pc.cast(ts, pa.timestamp("ns", tz="UTC")))
                        lo, hi = mm["min"].value, mm["max"].value
                        first = lo if first is None else min(first, lo)
                        last = hi if last is None else max(last, hi)
                    n += batch.num_rows
                    bar.update(batch.num_rows)
            except (pa.ArrowException, OSError) as exc:
                raise DataError(p, f"unreadable parquet file: {exc}") from None
    return {
        "format": FORMAT,
        "users": users.count(),
        "items": items.count(),
        "interactions": n,
        "first_ts": pd.Timestamp(first, tz="UTC").isoformat() if first is not None else None,
        "last_ts": pd.Timestamp(last, tz="UTC").isoformat() if last is not None else None,
    }
