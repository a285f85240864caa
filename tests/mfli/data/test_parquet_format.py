"""The canonical mfli-parquet layout: round trips, chunked parts, atomic writes, streamed stats, bad files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mfli.data.dataset import Dataset
from mfli.data.errors import DataError
from mfli.data.loaders import detect_format, load_dataset
from mfli.data.parquet_format import (
    ParquetDatasetWriter,
    file_checksums,
    load_parquet_dataset,
    parquet_stats,
    write_dataset,
)
from mfli.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA


def _assert_same(a: Dataset, b: Dataset) -> None:
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)
    pd.testing.assert_frame_equal(a.users, b.users)


def test_round_trip_tiny(tiny_dataset, tmp_path):
    out = write_dataset(tiny_dataset, tmp_path / "tiny", rows_per_part=50)
    assert detect_format(out) == "mfli-parquet"
    parts = sorted(p.name for p in (out / "interactions").iterdir())
    assert parts == [f"part-{i:05d}.parquet" for i in range(7)]  # 320 events / 50 per part
    assert [pq.ParquetFile(out / "interactions" / p).metadata.num_rows for p in parts] == [50] * 6 + [20]
    marker = json.loads((out / "_dataset.json").read_text())
    assert marker["format"] == "mfli-parquet" and marker["name"] == "tiny"
    assert marker["meta"]["source_format"] == "memory"
    assert marker["counts"] == {"interactions": 320, "items": 60, "users": 40, "parts": 7}
    assert pq.read_schema(out / "items.parquet").remove_metadata().equals(ITEMS_SCHEMA)
    back = load_dataset(out)
    assert back.format == "mfli-parquet" and back.name == "tiny"
    _assert_same(back, tiny_dataset)
    assert isinstance(back.items["categories"][0], list) and back.users.columns.tolist() == ["user_id", "segment"]
    assert parquet_stats(out) == {**tiny_dataset.stats(), "format": "mfli-parquet"}


def test_round_trip_ml_small(ml_small, tmp_path):
    ds = load_dataset(ml_small)
    out = write_dataset(ds, tmp_path / "ml", rows_per_part=40_000)
    back = load_parquet_dataset(out)
    _assert_same(back, ds)
    s = parquet_stats(out)
    assert (s["users"], s["items"], s["interactions"]) == (610, 9724, 100836)
    assert s["first_ts"] == "1996-03-29T18:36:55+00:00" and s["last_ts"] == "2018-09-24T14:27:30+00:00"


def test_chunked_writer_rolls_parts(tiny_dataset, tmp_path):
    inter = tiny_dataset.interactions
    with ParquetDatasetWriter(tmp_path / "d", "chunked", {"k": 1}, rows_per_part=64) as w:
        for start in range(0, len(inter), 100):  # chunks of 100 straddle part boundaries
            w.write_interactions(pa.Table.from_pandas(inter.iloc[start : start + 100], preserve_index=False))
        w.write_items(tiny_dataset.items.iloc[:30])
        w.write_items(tiny_dataset.items.iloc[30:])
        w.write_users(tiny_dataset.users)
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in sorted((tmp_path / "d" / "interactions").iterdir())]
    assert sizes == [64, 64, 64, 64, 64]
    _assert_same(load_parquet_dataset(tmp_path / "d"), tiny_dataset)


def test_failed_write_leaves_nothing(tiny_dataset, tmp_path):
    target = tmp_path / "d"
    with pytest.raises(RuntimeError), ParquetDatasetWriter(target, "x") as w:
        w.write_interactions(tiny_dataset.interactions)
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []  # no target, no temp folder

    write_dataset(tiny_dataset, target)
    before = parquet_stats(target)
    with pytest.raises(RuntimeError), ParquetDatasetWriter(target, "x") as w:
        w.write_interactions(tiny_dataset.interactions.iloc[:5])
        raise RuntimeError("crash mid-write")
    assert parquet_stats(target) == before and [p.name for p in tmp_path.iterdir()] == ["d"]


def test_overwrite_rules(tiny_dataset, tmp_path):
    target = tmp_path / "d"
    write_dataset(tiny_dataset, target)
    half = Dataset("half", "memory", tiny_dataset.interactions.iloc[:100], tiny_dataset.items, tiny_dataset.users)
    write_dataset(half, target)  # an mfli-parquet folder is replaced
    assert parquet_stats(target)["interactions"] == 100
    assert [p.name for p in tmp_path.iterdir()] == ["d"]

    other = tmp_path / "not-a-dataset"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing to overwrite"):
        write_dataset(tiny_dataset, other)
    assert (other / "notes.txt").read_text() == "keep me" and len(list(tmp_path.iterdir())) == 2


def test_empty_dataset(tiny_dataset, tmp_path):
    empty = Dataset("empty", "memory", tiny_dataset.interactions.iloc[:0], tiny_dataset.items.iloc[:0], tiny_dataset.users.iloc[:0])
    out = write_dataset(empty, tmp_path / "e")
    assert (out / "interactions" / "part-00000.parquet").exists()
    assert parquet_stats(out) == {
        "format": "mfli-parquet", "users": 0, "items": 0, "interactions": 0, "first_ts": None, "last_ts": None
    }  # fmt: skip
    assert len(load_parquet_dataset(out).interactions) == 0


def test_stats_streaming_with_sparse_ids(tmp_path, capsys):
    # ids beyond the dense map (huge and negative) switch the distinct counter to sorted merging
    rng = np.random.default_rng(1)
    n = 5000
    users = rng.integers(0, 300, n)
    items = np.where(rng.random(n) < 0.5, rng.integers(0, 400, n), rng.integers(-(2**40), 2**40, n))
    ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s")
    inter = pd.DataFrame({"user_id": users, "item_id": items, "event_ts": ts, "weight": np.float32(1)})
    with ParquetDatasetWriter(tmp_path / "d", "sparse", rows_per_part=1500) as w:
        w.write_interactions(inter)
    s = parquet_stats(tmp_path / "d", progress=True, batch_rows=700)
    assert s["users"] == len(np.unique(users)) and s["items"] == len(np.unique(items)) and s["interactions"] == n
    assert s["first_ts"] == ts.min().isoformat() and s["last_ts"] == ts.max().isoformat()
    assert "rows" in capsys.readouterr().err  # the tqdm bar goes to stderr


def _rehash(out):
    """Record the current files' checksums, as if the folder had been written like this."""
    marker = json.loads((out / "_dataset.json").read_text())
    marker["sha256"] = file_checksums(out)
    (out / "_dataset.json").write_text(json.dumps(marker))


def test_bad_files(tiny_dataset, tmp_path):
    out = write_dataset(tiny_dataset, tmp_path / "d")
    (out / "_dataset.json").write_text('{\n  "format": "mfli-parquet",\n  "name": tiny\n}')
    with pytest.raises(DataError) as info:
        load_dataset(out)
    assert info.value.path.endswith("_dataset.json") and info.value.line == 3 and "invalid JSON" in info.value.problem

    (out / "_dataset.json").write_text('{"format": "something-else"}')
    with pytest.raises(DataError, match="expected \"format\": \"mfli-parquet\""):
        load_dataset(out)

    out = write_dataset(tiny_dataset, tmp_path / "e")
    (out / "items.parquet").unlink()
    with pytest.raises(DataError) as info:
        load_dataset(out)
    assert info.value.path.endswith("items.parquet") and info.value.problem == "missing file"

    out = write_dataset(tiny_dataset, tmp_path / "f")
    part = out / "interactions" / "part-00000.parquet"
    pq.write_table(pq.read_table(part).drop_columns(["weight"]), part)
    _rehash(out)  # a well-formed file with the wrong schema (not a corrupt one): the schema check speaks
    with pytest.raises(DataError) as info:
        load_dataset(out)
    assert info.value.path.endswith("part-00000.parquet") and info.value.column == "weight"

    t = pq.read_table(part := out / "interactions" / "part-00000.parquet")
    t = pa.table({"user_id": ["u1"] * 3, "item_id": [1, 2, 3], "event_ts": pa.array([0, 1, 2], pa.timestamp("ns", "UTC")),
                  "weight": pa.array([1.0] * 3, pa.float32())})  # fmt: skip
    pq.write_table(t, part)
    _rehash(out)
    with pytest.raises(DataError) as info:
        load_dataset(out)
    assert info.value.column == "user_id" and "expected int64" in info.value.problem

    part.write_bytes(b"not parquet at all")
    _rehash(out)
    with pytest.raises(DataError, match="unreadable parquet"):
        parquet_stats(out)


def test_interactions_schema_on_disk(tiny_dataset, tmp_path):
    out = write_dataset(tiny_dataset, tmp_path / "d")
    schema = pq.read_schema(out / "interactions" / "part-00000.parquet").remove_metadata()
    assert schema.equals(INTERACTIONS_SCHEMA)
