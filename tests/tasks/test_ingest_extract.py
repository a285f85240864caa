"""The ingest -> extract -> validate task chain on a real (temporary) Feast repository."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mfli.validation.runner import ValidationFailed


def _run(tmp_path: Path, dataset_uri: str, **extra) -> dict:
    store = tmp_path / "store"
    run = {
        "kind": "daily",
        "dataset_uri": dataset_uri,
        "store_uri": str(store),
        "work_uri": f"{store}/runs/r1",
        "feast_dir": str(tmp_path / "feast"),
        "start": "2023-12-01T00:00:00+00:00",
        "cutoff": "2024-01-15T00:00:00+00:00",
        "end": "2024-02-01T00:00:00+00:00",
        "params": {},
    }
    run.update(extra)
    return run


def test_ingest_extract_validate_chain(tmp_path, tiny_dataset):
    from mfli.data.parquet_format import write_dataset
    from mfli.features.offline import SOURCE_SCHEMAS, read_table
    from tasks.extract import extract_new_items, extract_training
    from tasks.ingest import ingest_dataset
    from tasks.validate import validate_training

    uri = str(write_dataset(tiny_dataset, tmp_path / "tiny"))
    run = _run(tmp_path, uri)
    with contextlib.redirect_stdout(io.StringIO()):
        ingested = ingest_dataset(run)
    assert ingested["rows"]["interactions"] == 320 and ingested["rows"]["item_profile"] == 60
    assert set(ingested["validated"]) == {"interactions", "items", "users"}
    work = Path(run["work_uri"])
    assert json.loads((work / "validation" / "validation_ingest_interactions.json").read_text())["success"]

    extracted = extract_training(run, ingested)
    assert (extracted["n_interactions"], extracted["n_items"], extracted["n_users"]) == (320, 60, 40)
    training = pd.read_parquet(work / "training.parquet")
    assert len(training) == 320 and {"history_item_ids", "item_cnt_7d", "user_attrs"} <= set(training.columns)
    users = pd.read_parquet(work / "users.parquet")
    assert users.columns.tolist() == ["user_id", "segment"] and users["segment"].iloc[1] == "s1"
    checked = validate_training(run, extracted)
    assert checked["tables"] == {"interactions": 320, "items": 60, "users": 40, "training": 320}
    assert json.loads((Path(run["feast_dir"]) / "last_counts.json").read_text())["training"] == 320

    # Idempotent: the same dataset content for the same window is not ingested twice (hourly runs of
    # one day share the whole-day window); the earlier result is returned.
    before = {t: len(read_table(ingested["data_root"], t)) for t in SOURCE_SCHEMAS}
    with contextlib.redirect_stdout(io.StringIO()):
        again = ingest_dataset(run)
    assert again["rows"] == ingested["rows"] and again["reused"] is True and "reused" not in ingested
    assert {t: len(read_table(ingested["data_root"], t)) for t in SOURCE_SCHEMAS} == before

    # Hourly delta extraction: items created in the window, validated.
    delta = _run(
        tmp_path,
        uri,
        kind="delta",
        work_uri=f"{tmp_path}/store/runs/delta-1",
        start="2024-01-05T00:00:00+00:00",
        end="2024-01-07T00:00:00+00:00",
    )
    new = extract_new_items(delta)
    expected = tiny_dataset.items[
        (tiny_dataset.items["created_at"] >= "2024-01-05") & (tiny_dataset.items["created_at"] < "2024-01-07")
    ]
    assert sorted(new["item_id"]) == sorted(expected["item_id"]) and len(new) > 0
    assert new.columns.tolist() == ["item_id", "created_at", "categories", "title", "text", "brand"]
    assert (Path(delta["work_uri"]) / "validation" / "validation_new_items.json").exists()
    quiet = _run(tmp_path, uri, start="2030-01-01T00:00:00+00:00", end="2030-01-01T01:00:00+00:00")
    assert extract_new_items(quiet).empty  # an hour without new items is not an error


def test_bad_dataset_stops_ingestion_before_the_feature_store(tmp_path, tiny_dataset):
    from mfli.data.dataset import Dataset
    from mfli.data.parquet_format import write_dataset
    from tasks.ingest import ingest_dataset

    bad = tiny_dataset.interactions.copy()
    bad.loc[[1, 2], "weight"] = -3.0
    ds = Dataset("bad", "memory", bad, tiny_dataset.items, tiny_dataset.users)
    run = _run(tmp_path, str(write_dataset(ds, tmp_path / "bad")))
    with pytest.raises(ValidationFailed, match=r"expect_column_values_to_be_between\(column='weight'\)"):
        ingest_dataset(run)
    assert not (Path(run["feast_dir"]) / "data").exists()  # nothing reached the offline store
    assert not (Path(run["feast_dir"]) / "data" / "registry.db").exists()
    doc = json.loads(
        (Path(run["work_uri"]) / "validation" / "validation_ingest_interactions.json").read_text()
    )
    assert doc["success"] is False and doc["failures"][0]["unexpected_count"] == 2


def test_changed_data_is_ingested_again_and_a_quiet_delta_window_is_no_error(tmp_path, tiny_dataset):
    """A repaired dataset (new fingerprint) is re-ingested; an hourly run whose day has no events yet
    ingests items and users (the daily run still requires events)."""
    from mfli.data.dataset import Dataset
    from mfli.data.parquet_format import write_dataset
    from tasks.ingest import ingest_dataset

    uri = str(write_dataset(tiny_dataset, tmp_path / "tiny"))
    run = _run(tmp_path, uri)
    with contextlib.redirect_stdout(io.StringIO()):
        first = ingest_dataset(run)
        items = tiny_dataset.items.copy()
        items.loc[0, "title"] = "a corrected title"
        write_dataset(Dataset("tiny", "memory", tiny_dataset.interactions, items, tiny_dataset.users),
                      tmp_path / "tiny")  # replaces the folder atomically
        second = ingest_dataset(run)
    assert "reused" not in second and second["rows"] == first["rows"]
    shutil.rmtree(second["data_root"])  # a wiped offline store is ingested again despite the marker
    with contextlib.redirect_stdout(io.StringIO()):
        third = ingest_dataset(run)
    assert "reused" not in third and Path(third["data_root"], "item_profile").is_dir()

    last = tiny_dataset.interactions["event_ts"].max()
    quiet_start = (last + pd.Timedelta(days=2)).floor("D")
    window = {"start": quiet_start.isoformat(), "end": (quiet_start + pd.Timedelta(hours=1)).isoformat()}
    with pytest.raises(ValidationFailed, match="batch is not empty"):
        ingest_dataset(_run(tmp_path, uri, work_uri=f"{tmp_path}/store/runs/d", **window))
    with contextlib.redirect_stdout(io.StringIO()):
        quiet = ingest_dataset(_run(tmp_path, uri, kind="delta", work_uri=f"{tmp_path}/store/runs/q", **window))
    assert quiet["rows"].get("interactions", 0) == 0 and set(quiet["validated"]) == {"items", "users"}
