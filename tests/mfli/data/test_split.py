"""Split invariants (partition, no leakage, cold items) on the hand-made and a synthetic dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfli.data.split import (
    Split,
    cold_item_holdout,
    leave_last_out,
    make_split,
    time_split,
    train_valid_split,
)
from mfli.data.synthetic import SyntheticConfig, generate

SYN = SyntheticConfig(n_items=1500, n_users=600, n_interactions=15_000, n_topics=6, subtopics_per_topic=3,
                      vocab_per_topic=60, shared_vocab=40, n_brands=30, seed=3)


@pytest.fixture(scope="module")
def synthetic():
    return generate(SYN)


@pytest.fixture(params=["tiny", "synthetic"])
def any_ds(request, tiny_dataset, synthetic):
    return tiny_dataset if request.param == "tiny" else synthetic


def _rows(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["user_id", "item_id", "event_ts", "weight"]
    return df[cols].sort_values(cols).reset_index(drop=True)


def _assert_partition(ds, split: Split) -> None:
    assert len(split.train) + len(split.test) == len(ds.interactions)
    pd.testing.assert_frame_equal(_rows(pd.concat([split.train, split.test])), _rows(ds.interactions))
    # no event on both sides ((user, item) pairs are unique in both datasets)
    both = split.train.merge(split.test, on=["user_id", "item_id", "event_ts"])
    assert both.empty
    assert split.cold_items.dtype == np.int64
    assert (np.diff(split.cold_items) > 0).all()
    assert not np.isin(split.cold_items, split.train["item_id"].to_numpy()).any()


@pytest.mark.parametrize("kind", ["time", "last", "user_time", "cold"])
def test_every_kind_partitions_events_without_cold_leak(any_ds, kind):
    split = make_split(any_ds, kind, seed=1)
    assert split.kind == kind
    _assert_partition(any_ds, split)
    assert len(split.test) > 0 and len(split.train) > 0
    s = split.summary()
    assert s["train_events"] + s["test_events"] == len(any_ds.interactions)
    assert s["cold_items"] == len(split.cold_items)


def test_time_split_cutoff_and_cold_items(any_ds):
    split = time_split(any_ds, test_frac=0.2)
    T = split.cutoff
    assert split.test["event_ts"].min() >= T > split.train["event_ts"].max()
    assert len(split.test) / len(any_ds.interactions) == pytest.approx(0.2, abs=0.03)
    # cold = every catalogue item without an event before T (incl. items with no events at all)
    seen = set(split.train["item_id"])
    expected = sorted(set(any_ds.items["item_id"]) - seen)
    assert split.cold_items.tolist() == expected
    assert split.summary()["cutoff"] == T.isoformat()


def test_time_split_explicit_cutoff(synthetic):
    split = time_split(synthetic, cutoff="2024-05-01")  # naive -> UTC
    T = pd.Timestamp("2024-05-01", tz="UTC")
    assert split.cutoff == T
    assert (split.train["event_ts"] < T).all() and (split.test["event_ts"] >= T).all()
    # synthetic items created after T can only be cold
    late = synthetic.items.loc[synthetic.items["created_at"] >= T, "item_id"]
    assert len(late) > 0 and np.isin(late, split.cold_items).all()
    # and some of them are engaged in the test period: cold recall has positives
    assert split.summary()["test_events_on_cold_items"] > 0


def test_leave_last_out_takes_each_users_latest(any_ds):
    n = 2
    split = leave_last_out(any_ds, n=n)
    sizes = any_ds.interactions.groupby("user_id").size()
    test_sizes = split.test.groupby("user_id").size().reindex(sizes.index, fill_value=0)
    assert (test_sizes == np.where(sizes > n, n, 0)).all()
    last_train = split.train.groupby("user_id")["event_ts"].max()
    first_test = split.test.groupby("user_id")["event_ts"].min()
    assert (first_test >= last_train.reindex(first_test.index)).all()
    expected = sorted(set(split.test["item_id"]) - set(split.train["item_id"]))
    assert split.cold_items.tolist() == expected
    assert split.cutoff is None


def test_leave_last_out_short_users_stay_in_train(tiny_dataset):
    inter = tiny_dataset.interactions
    short = inter[inter["user_id"] == 0].iloc[:1]
    ds = type(tiny_dataset)("t", "memory", pd.concat([short, inter[inter["user_id"] != 0]]),
                            tiny_dataset.items, tiny_dataset.users)
    split = leave_last_out(ds, n=1)
    assert 0 not in set(split.test["user_id"]) and 0 in set(split.train["user_id"])


def test_cold_item_holdout_hides_items(any_ds):
    split = cold_item_holdout(any_ds, frac=0.1, seed=0)
    n_items = any_ds.interactions["item_id"].nunique()
    assert len(split.cold_items) == round(0.1 * n_items)
    assert set(split.test["item_id"]) == set(split.cold_items.tolist())
    assert np.isin(any_ds.interactions["item_id"], split.cold_items).sum() == len(split.test)
    other = cold_item_holdout(any_ds, frac=0.1, seed=1)
    assert not np.array_equal(other.cold_items, split.cold_items)
    again = cold_item_holdout(any_ds, frac=0.1, seed=0)
    assert np.array_equal(again.cold_items, split.cold_items)


def test_bad_arguments(tiny_dataset):
    with pytest.raises(ValueError, match="unknown split kind"):
        make_split(tiny_dataset, "random")
    with pytest.raises(ValueError, match="test_frac"):
        time_split(tiny_dataset, test_frac=1.5)
    with pytest.raises(ValueError, match="frac"):
        cold_item_holdout(tiny_dataset, frac=0.0)
    with pytest.raises(ValueError, match="n must be"):
        leave_last_out(tiny_dataset, n=0)


def test_train_valid_split_holds_out_recent_events(synthetic):
    train = time_split(synthetic).train
    fit, valid = train_valid_split(train, valid_frac=0.1, seed=0)
    assert len(fit) + len(valid) == len(train)
    pd.testing.assert_frame_equal(_rows(pd.concat([fit, valid])), _rows(train))
    assert len(valid) / len(train) == pytest.approx(0.1, abs=0.02)
    # each user's validation events are its most recent, and every user keeps something to fit on
    last_fit = fit.groupby("user_id")["event_ts"].max()
    first_valid = valid.groupby("user_id")["event_ts"].min()
    assert (first_valid >= last_fit.reindex(first_valid.index)).all()
    assert set(fit["user_id"]) == set(train["user_id"])
    _fit2, valid2 = train_valid_split(train, valid_frac=0.1, seed=0)
    pd.testing.assert_frame_equal(valid, valid2)
    _, none = train_valid_split(train, valid_frac=0.0)
    assert none.empty


# ---------------------------------------------------------------------- per-user time split
def test_user_time_split_holds_out_each_users_latest_share(any_ds):
    from mfli.data.split import user_time_split

    split = user_time_split(any_ds, test_frac=0.2)
    _assert_partition(any_ds, split)
    assert split.kind == "user_time"
    inter = any_ds.interactions
    sizes = inter.groupby("user_id").size()
    n_test = split.test.groupby("user_id").size().reindex(sizes.index, fill_value=0)
    want = np.where(sizes >= 2, np.clip(np.round(0.2 * sizes), 1, sizes - 1), 0)
    assert (n_test.to_numpy() == want).all()
    # every test event of a user is at or after all of that user's training events
    last_train = split.train.groupby("user_id")["event_ts"].max()
    first_test = split.test.groupby("user_id")["event_ts"].min()
    assert (first_test >= last_train.reindex(first_test.index)).all()
    assert not np.isin(split.cold_items, split.train["item_id"]).any()
    assert np.isin(split.cold_items, split.test["item_id"]).all()


def test_user_time_split_by_hand():
    from mfli.data.dataset import Dataset
    from mfli.data.split import user_time_split

    t = pd.Timestamp("2024-01-01", tz="UTC")
    inter = pd.DataFrame({"user_id": [1] * 10 + [2] * 2 + [3],
                          "item_id": list(range(10)) + [3, 20] + [5],
                          "event_ts": [t + pd.Timedelta(hours=h) for h in [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 0]],
                          "weight": 1.0})
    items = pd.DataFrame({"item_id": list(range(10)) + [20], "created_at": t, "categories": [[]] * 11,
                          "title": "", "text": "", "brand": None})
    split = make_split(Dataset("hand", "test", inter, items, pd.DataFrame({"user_id": [1, 2, 3]})), "user_time",
                       test_frac=0.25)
    test = split.test.sort_values(["user_id", "item_id"])
    # user 1: round(2.5) = 2 latest events (items 0 and 1); user 2: 1 of 2 (item 20); user 3: none
    assert test["item_id"].tolist() == [0, 1, 20]
    assert split.cold_items.tolist() == [0, 1, 20]  # none of them occurs in train
