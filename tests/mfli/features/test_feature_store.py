"""Feast for real in a temporary repository copy: apply, point-in-time retrieval, materialisation,
online lookup, items-in-window, idempotent re-ingestion."""

from __future__ import annotations

import contextlib
import io

import pandas as pd
import pytest
from pit_data import at

from mfli.features.window import Window


def _expected_counts(events: pd.DataFrame, key: str, key_value: int, t: pd.Timestamp, days: int) -> int:
    """Events of ``key_value`` in the daily snapshot window [floor(t) - days, floor(t))."""
    mid = t.floor("D")
    e = events[events[key] == key_value]
    return int(((e["event_ts"] >= mid - pd.Timedelta(days=days)) & (e["event_ts"] < mid)).sum())


def _expected_history(events: pd.DataFrame, user: int, t: pd.Timestamp) -> list[int]:
    """Items of the user's events strictly before ``t``, oldest first (ties by item id), at most 50."""
    e = events[(events["user_id"] == user) & (events["event_ts"] < t)]
    e = e[e["event_ts"] >= t - pd.Timedelta(days=365)].sort_values(["event_ts", "item_id"])
    return e["item_id"].tolist()[-50:]


def test_apply_registers_definitions_matching_the_writer(feast_store):
    from feast.types import Array, Int64

    from mfli.features.offline import SOURCE_SCHEMAS

    repo, _ = feast_store
    store = repo.store()
    assert {e.name for e in store.list_entities()} == {"user", "item"}
    views = {v.name: v for v in store.list_feature_views()}
    assert set(views) == {"item_profile", "item_stats", "user_profile", "user_history"}
    assert {s.name for s in store.list_feature_services()} == {"training", "item_delta", "user_online"}
    assert "interactions" in {s.name for s in store.list_data_sources()}
    for name, view in views.items():  # every declared feature is a column the ingestion writes
        assert {f.name for f in view.features} <= set(SOURCE_SCHEMAS[name].names), name
        assert str(view.batch_source.path).startswith(repo.data_root)
    hist = {f.name: f.dtype for f in views["user_history"].features}["history_item_ids"]
    assert hist == Array(Int64)


def test_training_rows_see_features_as_of_their_event_time(feast_store, pit_dataset):
    """Every feature of every training row equals a brute-force recomputation from the log at its time."""
    from mfli.features.extract import training_frame

    repo, report = feast_store
    ev = pit_dataset.interactions
    tf = training_frame(repo, Window.of(report.window["start"], report.window["end"]))
    assert len(tf) == len(ev)  # no example lost or duplicated by the join
    assert tf["event_ts"].is_monotonic_increasing
    for row in tf.itertuples(index=False):
        t = row.event_ts
        for w in (1, 7, 30):
            assert getattr(row, f"item_cnt_{w}d") == _expected_counts(ev, "item_id", row.item_id, t, w)
            assert getattr(row, f"user_cnt_{w}d") == _expected_counts(ev, "user_id", row.user_id, t, w)
        hist = _expected_history(ev, row.user_id, t)
        assert row.history_item_ids == hist, (row.user_id, t)
        assert row.history_len == len(hist)
        assert row.created_ts <= t and row.title == f"Item {row.item_id}: Widget-{row.item_id}"
        assert row.user_attrs[0] == f"segment=s{row.user_id % 2}"


def test_item_and_user_feature_values_change_over_time(feast_store):
    """Item 0: 3 events on day 0, 2 on day 4, 1 on day 9, 1 on day 40; each row sees the value of its day."""
    from mfli.features.extract import training_frame

    repo, report = feast_store
    tf = training_frame(repo, Window.of(report.window["start"], report.window["end"]))
    x = tf[tf["item_id"] == 0].set_index("event_ts")
    assert x.loc[at(0, 10), ["item_cnt_1d", "item_cnt_7d", "item_cnt_30d"]].tolist() == [0, 0, 0]
    assert x.loc[at(4, 10), ["item_cnt_1d", "item_cnt_7d", "item_cnt_30d"]].tolist() == [0, 3, 3]
    assert x.loc[at(4, 11), "item_cnt_7d"] == 3  # same day: the day-4 events are not counted yet
    assert x.loc[at(9, 10), ["item_cnt_1d", "item_cnt_7d", "item_cnt_30d"]].tolist() == [0, 2, 5]
    assert x.loc[at(40, 10), ["item_cnt_7d", "item_cnt_30d"]].tolist() == [0, 0]  # all expired (ttl)
    u0 = tf[tf["user_id"] == 0].set_index(["event_ts", "item_id"]).sort_index()
    assert u0.loc[(at(0, 10), 0), "history_item_ids"] == []  # never sees its own target
    assert u0.loc[(at(1, 9), 1), "history_item_ids"] == [0]
    assert u0.loc[(at(3, 8), 2), "history_item_ids"] == [0, 1]  # two events at one instant: neither
    assert u0.loc[(at(3, 8), 3), "history_item_ids"] == [0, 1]  # sees the other
    assert u0.loc[(at(5, 7), 4), "history_item_ids"] == [0, 1, 2, 3]
    assert u0.loc[(at(3, 8), 2), "user_cnt_7d"] == 2 and u0.loc[(at(5, 7), 4), "user_cnt_7d"] == 4


def test_materialised_online_user_features(feast_store, pit_dataset):
    from mfli.features.extract import online_user_features

    repo, report = feast_store
    ev = pit_dataset.interactions
    end = pd.Timestamp(report.window["end"])
    assert set(report.materialized_to) == {"item_profile", "item_stats", "user_profile", "user_history"}
    on = online_user_features(repo, [0, 3, 999]).set_index("user_id")
    for u in (0, 3):
        assert on.loc[u, "history_item_ids"] == _expected_history(ev, u, end)
        assert on.loc[u, "user_cnt_30d"] == _expected_counts(ev, "user_id", u, end, 30)
        assert on.loc[u, "user_attrs"][0] == f"segment=s{u % 2}"
    assert on.loc[999, "history_item_ids"] == [] and on.loc[999, "user_cnt_30d"] == 0


def test_items_created_in_a_window(feast_store, pit_dataset):
    from mfli.features.extract import items_in_window

    repo, _ = feast_store
    got = items_in_window(repo, Window(at(12), at(21)))
    assert got["item_id"].tolist() == [8, 9]
    assert got["created_at"].tolist() == [at(12, 6), at(20, 6)]
    assert got.loc[0, "title_tokens"] == ["item", "8", "widget", "8"]
    assert got.loc[0, "categories"] == ["top2", "top2>leaf0"]
    assert items_in_window(repo, Window(at(12, 7), at(20, 6))).empty  # end is exclusive


def test_reingesting_the_same_window_rewrites_instead_of_appending(feast_store, pit_dataset):
    from mfli.features.extract import training_frame
    from mfli.features.ingest import ingest
    from mfli.features.offline import SOURCE_SCHEMAS, read_table

    repo, report = feast_store
    window = Window.of(report.window["start"], report.window["end"])
    before = {t: len(read_table(repo.data_root, t)) for t in SOURCE_SCHEMAS}
    with contextlib.redirect_stdout(io.StringIO()):
        again = ingest(pit_dataset, repo, window)
    after = {t: len(read_table(repo.data_root, t)) for t in SOURCE_SCHEMAS}
    assert after == before == again.rows
    assert before["interactions"] == len(pit_dataset.interactions)
    # Re-ingesting a single day rewrites only that day: still no duplicates.
    with contextlib.redirect_stdout(io.StringIO()):
        ingest(pit_dataset, repo, Window(at(4), at(5)), materialize=False)
    assert {t: len(read_table(repo.data_root, t)) for t in SOURCE_SCHEMAS} == before
    tf = training_frame(repo, window)
    assert len(tf) == len(pit_dataset.interactions)
    assert not tf.duplicated(["user_id", "item_id", "event_ts"]).any()


def test_prod_config_selects_sql_registry_s3_sources_and_redis(tmp_path, monkeypatch):
    """The production yaml names a SQL registry + Redis, and the definitions point at S3 with the endpoint.

    (Opening it needs the `redis` client, which is not a dependency of the embedded stack.)
    """
    import os

    import yaml

    from mfli.features.repo import copy_repo

    url = "postgresql+psycopg2://feast:pw@127.0.0.1:5432/feast"
    monkeypatch.setenv("MFLI_FEAST_REGISTRY", url)
    monkeypatch.setenv("MFLI_REDIS", "redis:6379")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    repo = copy_repo(tmp_path / "repo", data_root="s3://mfli-feast/offline", env="prod")
    assert repo.yaml_path.name == "feature_store.prod.yaml"
    cfg = yaml.safe_load(os.path.expandvars(repo.yaml_path.read_text()))  # what Feast itself does
    assert cfg["online_store"] == {"type": "redis", "connection_string": "redis:6379"}
    # never a registry file on S3: its HeadBucket needs a ListBucket the prefix-scoped IAM roles refuse
    assert cfg["registry"]["registry_type"] == "sql" and cfg["registry"]["path"] == url
    assert cfg["offline_store"]["type"] == "mfli.features.offline_store.PartitionedParquetOfflineStore"
    src = repo.definitions()["item_stats_source"]
    assert src.path == "s3://mfli-feast/offline/item_stats"
    assert src.s3_endpoint_override == "http://127.0.0.1:8333"
    local = copy_repo(tmp_path / "local").definitions()["item_stats_source"]
    assert local.path == str(tmp_path / "local" / "data" / "item_stats") and not local.s3_endpoint_override


def test_prod_sql_registry_round_trip(tmp_path, monkeypatch):
    """Feast's SQL registry, configured by the production yaml, stores and serves our definitions.

    SQLite stands in for PostgreSQL here (same SQLAlchemy code path); the platform test runs PostgreSQL.
    A second registry object (another process: the service) reads what the first (the publisher) wrote.
    """
    from feast import Entity, FeatureService, FeatureView
    from feast.infra.registry.sql import SqlRegistry
    from feast.repo_config import load_repo_config

    from mfli.features.repo import copy_repo

    monkeypatch.setenv("MFLI_FEAST_REGISTRY", f"sqlite:///{tmp_path / 'registry.db'}")
    monkeypatch.setenv("MFLI_REDIS", "redis:6379")
    repo = copy_repo(tmp_path / "repo", data_root="s3://mfli-feast/offline", env="prod")
    config = load_repo_config(repo.path, repo.yaml_path)
    assert config.registry.registry_type == "sql"
    defs = repo.definitions()
    writer = SqlRegistry(config.registry, config.project, repo.path)
    for obj in defs.values():
        if isinstance(obj, Entity):
            writer.apply_entity(obj, config.project)
        elif isinstance(obj, FeatureView):
            writer.apply_feature_view(obj, config.project)
        elif isinstance(obj, FeatureService):
            writer.apply_feature_service(obj, config.project)
    writer.commit()
    reader = SqlRegistry(config.registry, config.project, repo.path)
    views = {v.name for v in reader.list_feature_views(config.project, allow_cache=False)}
    assert views and views == {o.name for o in defs.values() if isinstance(o, FeatureView)}
    entities = {e.name for e in reader.list_entities(config.project, allow_cache=False)}
    assert {o.name for o in defs.values() if isinstance(o, Entity)} <= entities


def test_bad_env_is_rejected(tmp_path):
    from mfli.features.repo import FeatureRepo

    with pytest.raises(ValueError, match="MFLI_FEAST_ENV"):
        FeatureRepo(tmp_path, "data", env="staging")
