"""Synthetic catalogue generator: determinism, realism properties, schema and the parquet layout."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mfli.data.schema import CATEGORY_SEP, INTERACTIONS_SCHEMA, ITEMS_SCHEMA, conform
from mfli.data.synthetic import (
    USERS_SCHEMA,
    SyntheticConfig,
    brand_names,
    generate,
    vocabulary,
    write_synthetic,
)

# Small but not tiny: 3 user chunks, 4 item chunks, ~50k events, 32 leaves.
CFG = SyntheticConfig(
    n_items=4000,
    n_users=2500,
    n_interactions=50_000,
    n_topics=8,
    subtopics_per_topic=4,
    vocab_per_topic=200,
    shared_vocab=100,
    n_brands=80,
    chunk_size=1024,
    seed=7,
)


@pytest.fixture(scope="module")
def ds():
    return generate(CFG)


def _arrow(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(df, schema=schema, preserve_index=False)


def _topic_of_item(ds) -> np.ndarray:
    """(n_items,) topic index parsed from the single category path "topicZZZ>subSS"."""
    return np.array([int(c[0].split(CATEGORY_SEP)[0][len("topic"):]) for c in ds.items["categories"]])


def _event_topics(ds) -> np.ndarray:
    return _topic_of_item(ds)[ds.interactions["item_id"].to_numpy()]


# ------------------------------------------------------------------ determinism and schema


def test_same_seed_same_tables_different_seed_differs(ds):
    again = generate(CFG)
    for name, schema in (("items", ITEMS_SCHEMA), ("interactions", INTERACTIONS_SCHEMA), ("users", USERS_SCHEMA)):
        assert _arrow(getattr(ds, name), schema).equals(_arrow(getattr(again, name), schema)), name
    other = generate(replace(CFG, seed=8))
    assert not other.interactions["item_id"].equals(ds.interactions["item_id"])
    assert (other.items["text"] != ds.items["text"]).mean() > 0.99


def test_chunk_size_does_not_change_the_data(ds):
    big = generate(replace(CFG, chunk_size=1_000_000))
    assert _arrow(big.interactions, INTERACTIONS_SCHEMA).equals(_arrow(ds.interactions, INTERACTIONS_SCHEMA))
    assert _arrow(big.items, ITEMS_SCHEMA).equals(_arrow(ds.items, ITEMS_SCHEMA))


def test_schema_and_basic_ranges(ds):
    for table in ("interactions", "items", "users"):
        conform(getattr(ds, table), table, "synthetic")  # raises on any schema problem
    inter, items, users = ds.interactions, ds.items, ds.users
    assert str(inter["event_ts"].dtype) == "datetime64[ns, UTC]"
    assert inter["weight"].dtype == np.float32 and inter["user_id"].dtype == np.int64
    assert list(users.columns) == ["user_id", "region", "age_bucket"]
    assert items["item_id"].tolist() == list(range(CFG.n_items))
    assert users["user_id"].tolist() == list(range(CFG.n_users))
    assert set(np.unique(inter["weight"])) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # exact target minus dropped within-user repeats, which must be rare
    assert 0.98 * CFG.n_interactions <= len(inter) <= CFG.n_interactions
    assert not inter.duplicated(["user_id", "item_id"]).any()
    assert inter["event_ts"].min() > CFG.start_ts and inter["event_ts"].max() < CFG.end_ts
    assert (inter.groupby("user_id").size() >= 1).all() and inter["user_id"].nunique() >= 0.99 * CFG.n_users
    # events sorted by (user, time)
    key = inter["user_id"].to_numpy() * 2**40 + (inter["event_ts"] - CFG.start_ts).dt.total_seconds().to_numpy()
    assert (np.diff(key) >= 0).all()
    assert all(len(c) == 1 and c[0].count(CATEGORY_SEP) == 1 for c in items["categories"])
    assert items["brand"].isna().mean() == pytest.approx(CFG.no_brand_share, abs=0.03)
    assert items["title"].str.len().min() > 0 and items["text"].str.split().str.len().min() >= CFG.text_min_tokens


def test_config_validation():
    with pytest.raises(ValueError, match="n_items"):
        SyntheticConfig(n_items=10, n_topics=4, subtopics_per_topic=4)
    with pytest.raises(ValueError, match="n_interactions"):
        SyntheticConfig(n_users=100, n_interactions=150)
    with pytest.raises(ValueError, match="start"):
        SyntheticConfig(start="not a date")
    cfg = SyntheticConfig.from_dict(json.loads(json.dumps(CFG.to_dict())))
    assert cfg == CFG


# ------------------------------------------------------------------ realism


def test_popularity_is_power_law(ds):
    counts = np.sort(np.bincount(ds.interactions["item_id"], minlength=CFG.n_items))[::-1].astype(float)
    top10 = counts[: CFG.n_items // 10].sum() / counts.sum()
    assert top10 > 0.45
    n = len(counts)
    asc = counts[::-1]
    gini = (2 * np.arange(1, n + 1) - n - 1) @ asc / (n * asc.sum())
    assert gini > 0.58
    # skew holds inside topics too: in the biggest topic the top 10% of its items still dominate
    topic = _topic_of_item(ds)
    z = np.bincount(topic).argmax()
    inside = np.sort(np.bincount(ds.interactions["item_id"], minlength=CFG.n_items)[topic == z])[::-1]
    assert inside[: len(inside) // 10].sum() / inside.sum() > 0.45


def test_text_tokens_come_from_the_item_topic(ds):
    vocab = vocabulary(CFG)
    word_topic = {w: (i - CFG.shared_vocab) // CFG.vocab_per_topic if i >= CFG.shared_vocab else -1
                  for i, w in enumerate(vocab)}
    assert len(word_topic) == len(vocab)  # pseudo-words are unique
    topic = _topic_of_item(ds)
    own = shared = total = 0
    title_own = title_total = 0
    brands = set(brand_names(CFG))
    for z, text, title in zip(topic, ds.items["text"], ds.items["title"]):
        wt = [word_topic[w] for w in text.split()]
        own += sum(t == z for t in wt)
        shared += sum(t == -1 for t in wt)
        total += len(wt)
        tt = [word_topic[w] for w in title.split() if w not in brands]
        title_own += sum(t == z for t in tt)
        title_total += len(tt)
    assert own / total > 0.65
    assert shared / total == pytest.approx(CFG.shared_token_share, abs=0.03)
    assert title_own / title_total > 0.8


def test_brands_follow_topics(ds):
    names = {n: b for b, n in enumerate(brand_names(CFG))}
    topic = _topic_of_item(ds)
    branded = ds.items["brand"].notna().to_numpy()
    home = np.array([names[b] % CFG.n_topics for b in ds.items["brand"][branded]])
    assert (home == topic[branded]).mean() > 0.8
    # the brand leads the title
    first = ds.items["title"][branded].str.split().str[0]
    assert (first == ds.items["brand"][branded]).all()


def _user_topic_counts(ds, part: np.ndarray | None = None) -> np.ndarray:
    """(n_users, n_topics) event counts, optionally over a boolean subset of events."""
    user = ds.interactions["user_id"].to_numpy()
    topic = _event_topics(ds)
    if part is not None:
        user, topic = user[part], topic[part]
    return np.bincount(user * CFG.n_topics + topic, minlength=CFG.n_users * CFG.n_topics).reshape(-1, CFG.n_topics)


def _early_late_differ(ds, min_events: int = 20) -> float:
    """Share of users (>= min_events) whose top topic in the first quarter of their events differs from the last."""
    user = ds.interactions["user_id"].to_numpy()
    size = np.bincount(user, minlength=CFG.n_users)
    pos = ds.interactions.groupby("user_id").cumcount().to_numpy()
    q = (size // 4)[user]
    early = _user_topic_counts(ds, pos < q).argmax(1)
    late = _user_topic_counts(ds, pos >= size[user] - q).argmax(1)
    heavy = size >= min_events
    return float((early[heavy] != late[heavy]).mean())


def test_users_concentrate_on_a_few_drifting_interests(ds):
    counts = _user_topic_counts(ds)
    heavy = counts.sum(1) >= 20
    top = -np.sort(-counts[heavy], axis=1)
    assert (top[:, :3].sum(1) / top.sum(1)).mean() > 0.92  # at most 3 interests + ~10% exploration
    # without drift a user stays on its first interest (apart from exploration) ...
    still = generate(replace(CFG, drift_rate=0.0))
    c_still = _user_topic_counts(still)
    top1_still = (c_still.max(1) / c_still.sum(1)).mean()
    top1 = (counts.max(1) / counts.sum(1)).mean()
    assert top1_still > 0.85
    assert top1 < top1_still - 0.05
    # ... with drift, the dominant topic of a user's early events often differs from its late ones
    assert _early_late_differ(ds) > 0.25
    assert _early_late_differ(still) < 0.05


def test_ratings_are_higher_on_interests(ds):
    main = _user_topic_counts(ds).argmax(1)
    on_main = _event_topics(ds) == main[ds.interactions["user_id"].to_numpy()]
    w = ds.interactions["weight"].to_numpy()
    assert w[on_main].mean() > w[~on_main].mean() + 0.2
    assert 0.2 < (w >= 4).mean() < 0.8  # a usable "high rating" label


def test_events_follow_item_creation_and_fresh_items_exist(ds):
    created = ds.items["created_at"].to_numpy("datetime64[ns]")
    ev = ds.interactions
    event_ts = ev["event_ts"].to_numpy("datetime64[ns]")
    assert (event_ts > created[ev["item_id"].to_numpy()]).all()
    assert ds.items["created_at"].is_monotonic_increasing  # ids follow creation time
    fresh_from = CFG.end_ts - pd.Timedelta(hours=CFG.fresh_hours)
    fresh = ds.items["created_at"] >= fresh_from
    assert fresh.sum() == round(CFG.fresh_share * CFG.n_items)
    assert ds.items["created_at"].max() < CFG.end_ts
    # creation is spread over the whole span, not bunched
    months = ds.items["created_at"].dt.month.value_counts()
    assert len(months) == 6 and months.min() > 0.1 * CFG.n_items
    # items are engaged soon after creation: a share of events goes to items younger than 3 days
    age = event_ts - created[ev["item_id"].to_numpy()]
    assert (age < np.timedelta64(3, "D")).mean() > 0.15


# ------------------------------------------------------------------ parquet layout


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_write_synthetic_round_trip(ds, tmp_path):
    out = write_synthetic(CFG, tmp_path / "cat", progress=False)
    assert out == tmp_path / "cat"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat"]  # no temp dir left behind
    marker = json.loads((out / "_dataset.json").read_text())
    assert marker["format"] == "mfli-parquet" and marker["name"] == "synthetic"
    assert SyntheticConfig.from_dict(marker["meta"]) == CFG
    parts = sorted((out / "interactions").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    inter = pa.concat_tables([pq.read_table(p) for p in parts])
    assert inter.schema.equals(INTERACTIONS_SCHEMA)
    assert inter.equals(_arrow(ds.interactions, INTERACTIONS_SCHEMA))
    items = pq.read_table(out / "items.parquet")
    assert items.schema.equals(ITEMS_SCHEMA)
    assert pq.ParquetFile(out / "items.parquet").num_row_groups == 4
    assert items.equals(_arrow(ds.items, ITEMS_SCHEMA))
    users = pq.read_table(out / "users.parquet")
    assert users.equals(_arrow(ds.users, USERS_SCHEMA))

    # byte-identical on rewrite; an earlier synthetic catalogue is replaced in place
    before = {p.relative_to(out): _sha(p) for p in out.rglob("*.parquet")}
    write_synthetic(CFG, out, progress=False)
    assert {p.relative_to(out): _sha(p) for p in out.rglob("*.parquet")} == before


def test_write_synthetic_refuses_foreign_folder(tmp_path):
    cfg = SyntheticConfig(n_items=200, n_users=50, n_interactions=500, n_topics=4, subtopics_per_topic=2)
    target = tmp_path / "data"
    target.mkdir()
    (target / "precious.csv").write_text("keep me\n")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_synthetic(cfg, target, progress=False)
    assert (target / "precious.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    write_synthetic(cfg, target, overwrite=True, progress=False)
    assert not (target / "precious.csv").exists() and (target / "_dataset.json").exists()
