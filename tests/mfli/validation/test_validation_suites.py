"""Great Expectations gates: twelve kinds of bad input, each caught with a message naming the
expectation and column, and nothing written downstream (``gate_and_put`` validates, then writes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfli.features.window import Window
from mfli.validation.runner import ValidationFailed, validate
from mfli.validation.suites import TRAINING_COLUMNS, RunScope

WINDOW = Window.of("2024-01-01", "2024-02-01")


@pytest.fixture()
def run(tmp_path) -> dict:
    """The slice of a DAG run dict the gate needs: a local object store and the run's work area."""
    store = tmp_path / "store"
    return {"store_uri": str(store), "work_uri": f"{store}/runs/r1"}


def _gated(
    run: dict, df: pd.DataFrame, table: str, scope: RunScope, expectation: str, column: str | None
) -> str:
    """Feed ``df`` through the gate; assert it failed on ``expectation``/``column``, wrote the result
    JSON, and did not write the artifact. Returns the error message."""
    from tasks.validate import gate_and_put

    with pytest.raises(ValidationFailed) as err:
        gate_and_put(run, df, table, "batch", scope)
    msg = str(err.value)
    assert expectation in msg, msg
    if column:
        assert f"column={column!r}" in msg or repr(column) in msg, msg
    failed = [f for f in err.value.failures if f.expectation == expectation]
    assert failed and (column is None or any(column in (f.column or "") for f in failed)), err.value.failures
    work = Path(run["work_uri"])
    assert not (work / "batch.parquet").exists()  # nothing downstream can read the batch
    doc = json.loads((work / "validation" / "validation_batch.json").read_text())
    assert doc["success"] is False and any(f["expectation"] == expectation for f in doc["failures"])
    assert doc["results"]["table"]["results"]  # the full GX results are kept
    return msg


def _training_frame(ds) -> pd.DataFrame:
    """A well-formed training frame (event columns + every training feature) built from ``ds``."""
    items = ds.items.set_index("item_id")
    tf = ds.interactions.sort_values("event_ts").reset_index(drop=True)
    it = items.loc[tf["item_id"]].reset_index(drop=True)
    for c in ("categories", "title", "text", "brand"):
        tf[c] = it[c]
    tf["title_tokens"] = [t.lower().split() for t in tf["title"]]
    tf["text_tokens"] = [t.lower().split() for t in tf["text"]]
    tf["created_ts"] = it["created_at"]
    for side in ("item", "user"):
        for w, n in (("1d", 0), ("7d", 1), ("30d", 2)):
            tf[f"{side}_cnt_{w}"] = np.int64(n)
    tf["user_mean_weight_30d"] = np.float32(3.0)
    tf["user_attrs"] = [[f"segment=s{u % 2}"] for u in tf["user_id"]]
    tf["history_item_ids"] = [[1, 2]] * len(tf)
    tf["history_len"] = np.int64(2)
    return tf[list(TRAINING_COLUMNS)]


def test_valid_tables_pass_and_write_their_result(tmp_path, tiny_dataset):
    ds = tiny_dataset
    scope = RunScope(window=WINDOW, previous_count=300)
    for table, df in (
        ("interactions", ds.interactions),
        ("items", ds.items),
        ("users", ds.users),
        ("training", _training_frame(ds)),
    ):
        rep = validate(df, table, tmp_path, scope if table in ("interactions", "training") else RunScope())
        assert rep.success and rep.rows == len(df) and rep.checks >= 5, table
        assert json.loads(Path(rep.result_path).read_text())["success"] is True
    new = ds.items.assign(title_tokens=[["a"]] * 60, text_tokens=[["b"]] * 60)
    assert validate(new, "new_items", tmp_path, RunScope(window=WINDOW)).success


def test_nulls_are_caught(run, tiny_dataset):
    bad = tiny_dataset.interactions.copy()
    bad.loc[[3, 7], "event_ts"] = pd.NaT
    msg = _gated(
        run, bad, "interactions", RunScope(window=WINDOW), "expect_column_values_to_not_be_null", "event_ts"
    )
    assert "'row': 3" in msg  # offending rows are shown
    items = tiny_dataset.items.copy()
    items.loc[5, "title"] = None
    _gated(run, items, "items", RunScope(), "expect_column_values_to_not_be_null", "title")


def test_duplicates_are_caught(run, tiny_dataset):
    inter = tiny_dataset.interactions
    bad = pd.concat([inter, inter.iloc[[10]]], ignore_index=True)
    msg = _gated(
        run,
        bad,
        "interactions",
        RunScope(window=WINDOW),
        "expect_compound_columns_to_be_unique",
        "user_id,item_id,event_ts",
    )
    assert "no duplicate events" in msg
    items = tiny_dataset.items.copy()
    items.loc[1, "item_id"] = 0
    _gated(run, items, "items", RunScope(), "expect_column_values_to_be_unique", "item_id")


def test_future_timestamps_are_caught(run, tiny_dataset):
    bad = tiny_dataset.interactions.copy()
    bad.loc[0, "event_ts"] = pd.Timestamp("2099-06-01", tz="UTC")
    wide = Window.of("2020-01-01", "2100-01-01")  # inside the window, but after "now"
    msg = _gated(
        run, bad, "interactions", RunScope(window=wide), "expect_column_values_to_be_between", "event_ts"
    )
    assert "never in the future" in msg and "2099-06-01" in msg
    late = tiny_dataset.interactions.copy()
    late.loc[0, "event_ts"] = pd.Timestamp("2024-02-03", tz="UTC")  # past, but outside the run's window
    msg = _gated(
        run, late, "interactions", RunScope(window=WINDOW), "expect_column_values_to_be_between", "event_ts"
    )
    assert "inside the run's window" in msg


def test_wrong_dtypes_are_caught(run, tiny_dataset):
    bad = tiny_dataset.interactions.copy()
    bad["user_id"] = bad["user_id"].astype("float64")
    msg = _gated(
        run, bad, "interactions", RunScope(window=WINDOW), "expect_column_values_to_be_in_set", "column"
    )
    assert "user_id:float64" in msg and "user_id:int64" in msg


def test_missing_columns_are_caught(run, tiny_dataset):
    bad = tiny_dataset.interactions.drop(columns=["weight"])
    msg = _gated(run, bad, "interactions", RunScope(window=WINDOW), "expect_table_columns_to_match_set", None)
    assert "'missing': ['weight']" in msg


def test_unknown_extra_columns_are_caught(run, tiny_dataset):
    bad = tiny_dataset.items.assign(price=9.99)
    msg = _gated(run, bad, "items", RunScope(), "expect_table_columns_to_match_set", None)
    assert "'unknown extra': ['price']" in msg


def test_empty_batch_is_caught(run, tiny_dataset):
    msg = _gated(
        run,
        tiny_dataset.interactions.iloc[:0],
        "interactions",
        RunScope(window=WINDOW),
        "expect_table_row_count_to_be_between",
        None,
    )
    assert "batch is not empty" in msg and "observed 0" in msg


def test_volume_spike_and_drop_are_caught(run, tiny_dataset):
    inter = tiny_dataset.interactions  # 320 rows
    msg = _gated(
        run,
        inter,
        "interactions",
        RunScope(window=WINDOW, previous_count=1000),
        "expect_table_row_count_to_be_between",
        None,
    )
    assert "previous run's 1000 rows" in msg and "observed 320" in msg  # drop below 0.5x
    msg = _gated(
        run,
        inter,
        "interactions",
        RunScope(window=WINDOW, previous_count=100),
        "expect_table_row_count_to_be_between",
        None,
    )
    assert "previous run's 100 rows" in msg  # spike above 2x


def test_out_of_range_weights_are_caught(run, tiny_dataset):
    bad = tiny_dataset.interactions.copy()
    bad.loc[4, "weight"] = -1.0
    bad.loc[9, "weight"] = 1e6
    msg = _gated(
        run, bad, "interactions", RunScope(window=WINDOW), "expect_column_values_to_be_between", "weight"
    )
    assert "2 of 320 values unexpected" in msg and "'weight': -1.0" in msg


def test_empty_categories_flood_is_caught(run, tiny_dataset):
    bad = tiny_dataset.items.copy()
    bad["categories"] = [[] if i % 2 else c for i, c in enumerate(bad["categories"])]  # 50% > 20% allowed
    msg = _gated(run, bad, "items", RunScope(), "expect_column_values_to_be_between", "categories")
    assert "empty categories flood" in msg and "30 of 60" in msg
    few = tiny_dataset.items.copy()
    few.at[0, "categories"] = []  # one item without categories is fine
    assert validate(few, "items", Path(run["work_uri"]) / "ok").success


def test_malformed_list_features_are_caught(run, tiny_dataset):
    items = tiny_dataset.items.copy()
    items.at[2, "categories"] = "topic2,topic2>sub0"  # a string, not a list
    msg = _gated(run, items, "items", RunScope(), "expect_column_values_to_be_between", "categories")
    assert "malformed list feature" in msg and "'row': 2" in msg
    tf = _training_frame(tiny_dataset)
    tf.at[5, "history_item_ids"] = ["17", 3]  # ids must be integers
    msg = _gated(
        run, tf, "training", RunScope(window=WINDOW), "expect_column_values_to_be_between", "history_item_ids"
    )
    assert "'row': 5" in msg
    paths = tiny_dataset.items.copy()
    paths.at[3, "categories"] = ["topic0>>sub1", " topic0"]  # empty and space-padded levels
    msg = _gated(run, paths, "items", RunScope(), "expect_column_values_to_match_regex", "categories")
    assert "topic0>>sub1" in msg


def test_timezone_naive_timestamps_are_caught(run, tiny_dataset):
    bad = tiny_dataset.interactions.copy()
    bad["event_ts"] = bad["event_ts"].dt.tz_localize(None)
    msg = _gated(
        run, bad, "interactions", RunScope(window=WINDOW), "expect_column_values_to_be_in_set", "column"
    )
    assert "event_ts:datetime64[ns]" in msg and "event_ts:datetime64[ns, UTC]" in msg
    # The wrong column's value checks are skipped: one clear failure, not a cascade of type errors.
    with pytest.raises(ValidationFailed) as err:
        validate(bad, "interactions", Path(run["work_uri"]) / "x", RunScope(window=WINDOW))
    assert len(err.value.failures) == 1


def test_training_point_in_time_violation_is_caught(run, tiny_dataset):
    tf = _training_frame(tiny_dataset)
    tf.loc[0, "created_ts"] = tf.loc[0, "event_ts"] + pd.Timedelta(hours=1)  # item from after the event
    tf.loc[1, "item_cnt_7d"] = 5  # a 7-day count above the 30-day count
    msg = _gated(
        run, tf, "training", RunScope(window=WINDOW), "expect_column_pair_values_a_to_be_greater_than_b", None
    )
    assert "point in time" in msg and "30d >= 7d" in msg
