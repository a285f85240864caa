"""Format detection and dispatch of load_dataset / dataset_stats."""

from __future__ import annotations

import time

import pytest

from mfli.data.errors import DataError
from mfli.data.loaders import FORMATS, dataset_stats, detect_format, load_dataset
from mfli.data.parquet_format import write_dataset


@pytest.mark.parametrize(
    "files, fmt",
    [
        (["u.data", "u.item", "u.user"], "movielens-100k"),
        (["ratings.dat", "movies.dat", "users.dat"], "movielens-1m"),
        (["ratings.csv", "movies.csv", "links.csv"], "movielens-latest"),
        (["Books.inter.json", "Books.item.json"], "amazon-lcrec"),
        (["_dataset.json", "items.parquet", "ratings.csv"], "mfli-parquet"),  # our marker wins
    ],
)
def test_detect_by_files_present(tmp_path, files, fmt):
    for f in files:
        (tmp_path / f).write_text("")
    assert detect_format(tmp_path) == fmt and fmt in FORMATS


def test_unrecognised_folder_lists_what_was_looked_for(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError) as info:
        detect_format(tmp_path)
    msg = str(info.value)
    assert msg.startswith(str(tmp_path)) and "unrecognised dataset folder" in msg
    for marker in ["_dataset.json", "u.data", "ratings.dat", "ratings.csv", "*.inter.json"]:
        assert marker in msg
    assert "readme.txt" in msg


def test_missing_folder_and_file_path(tmp_path):
    with pytest.raises(DataError, match="no such dataset folder"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "f.csv").write_text("x")
    with pytest.raises(DataError, match="expected a dataset folder"):
        load_dataset(tmp_path / "f.csv")


def test_load_ml_small_is_fast_and_exact(ml_small):
    t0 = time.perf_counter()
    ds = load_dataset(ml_small)
    elapsed = time.perf_counter() - t0
    assert ds.format == "movielens-latest" and ds.name == "ml-latest-small"
    assert ds.stats() == {
        "format": "movielens-latest", "users": 610, "items": 9724, "interactions": 100836,
        "first_ts": "1996-03-29T18:36:55+00:00", "last_ts": "2018-09-24T14:27:30+00:00",
    }  # fmt: skip
    assert elapsed < 6.0  # ~1 s on a laptop core; generous for a loaded CI machine


def test_load_amazon_scientific(amazon_sci):
    ds = load_dataset(amazon_sci)
    s = ds.stats()
    assert ds.format == "amazon-lcrec"
    assert (s["users"], s["items"], s["interactions"]) == (8317, 4344, 58492)
    assert len(ds.users) == 8317 and len(ds.items) == 4344


def test_dataset_stats_streams_parquet(tiny_dataset, tmp_path):
    out = write_dataset(tiny_dataset, tmp_path / "tiny", rows_per_part=100)
    s = dataset_stats(out)
    assert s == {**tiny_dataset.stats(), "format": "mfli-parquet"}
    assert (s["users"], s["items"], s["interactions"]) == (40, len(set(tiny_dataset.interactions["item_id"])), 320)
