"""Both DAGs end to end with ``dag.test()`` on a small synthetic catalogue: publish, gate, backfill
determinism, idempotent re-runs, hourly deltas and their skips."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

# A ceiling per test (its fixtures' DAG runs included). "thread", not the suite's "signal": Airflow's
# task execution_timeout arms SIGALRM itself and would cancel a signal-based one. Everything runs
# in-process here, so there is no child process a thread-method timeout could orphan.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900, method="thread")]

DAY1 = datetime(2024, 6, 29, tzinfo=UTC)  # window ends at the logical date (Airflow 3 cron trigger)
DAY2 = datetime(2024, 6, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def data(tmp_path_factory, airflow_db, monkeypatch_module):
    """The synthetic catalogue all runs read (written once per module) and a module MFLI_HOME."""
    from mfli.data.synthetic import SyntheticConfig, write_synthetic

    root = tmp_path_factory.mktemp("pipeline")
    out = write_synthetic(SyntheticConfig(n_items=1500, n_users=300, n_interactions=15000, seed=1),
                          root / "data", progress=False)
    monkeypatch_module.setenv("MFLI_HOME", str(root / "home"))
    return {"data": str(out), "root": root}


@pytest.fixture()
def empty(data, tmp_path):
    """The catalogue with a store nothing was ever published to (fresh per test)."""
    return {**data, "store": (tmp_path / "store").as_uri()}


@pytest.fixture(scope="module")
def published(data, dagbag, tmp_path_factory):
    """A store the daily DAG published two days into (DAY1, then DAY2 live), built here so every test
    that needs a live snapshot has one whatever ran before it. Tests using it may add runs that must
    leave the live snapshot as it is, and at most one delta window."""
    env = {**data, "store": (tmp_path_factory.mktemp("published") / "store").as_uri()}
    states, live = [], []
    for day in (DAY1, DAY2):
        states.append(_run(dagbag, "mfli_daily_retrain", day, _conf(env)).state)
        live.append(_live(env))
    return {**env, "states": states, "live": live}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _conf(env, **kw):
    conf = {"dataset_uri": env["data"], "store_uri": env["store"], "epochs": 2, "shards": 3,
            "min_recall_at_100": 0.0, "min_codebook_utilisation": 0.0, "max_cluster_share": 1.0,
            "max_regression": 1.0}
    conf.update(kw)
    return conf


def _run(dagbag, dag_id, logical_date, conf):
    dag = dagbag.get_dag(dag_id)
    retries = {t.task_id: t.retries for t in dag.tasks}
    for t in dag.tasks:  # dag.test() sleeps through retry delays; a failure here must fail at once
        t.retries = 0
    try:
        return dag.test(logical_date=logical_date, run_conf=conf)
    finally:  # the DagBag is session-wide: test_dag_integrity checks these retries, in whatever order
        for t in dag.tasks:
            t.retries = retries[t.task_id]


def _live(env):
    from mfli.store import open_store, read_latest

    p = read_latest(open_store(env["store"]))
    return p.snapshot_id if p else None


def _snapshots(env):
    from mfli.store import list_snapshots, open_store

    return [s["snapshot_id"] for s in list_snapshots(open_store(env["store"]))]


def test_hourly_delta_without_snapshot_skips_cleanly(dagbag, empty):
    dr = _run(dagbag, "mfli_hourly_delta", DAY2, _conf(empty, start="2024-06-30T22:00:00+00:00",
                                                         end="2024-06-30T23:00:00+00:00"))
    assert dr.state == "success"
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert states["publish_delta"] == "skipped"
    assert _live(empty) is None and _snapshots(empty) == []


def test_daily_publishes_and_backfill_is_deterministic(dagbag, published):
    env = published
    assert env["states"] == ["success", "success"]
    first, second = env["live"]
    assert first and first.startswith("20240629T0000")
    assert second.startswith("20240630T0000") and second != first
    assert _snapshots(env) == [first, second]
    # published in blend mode (the default), with the weight choice on record
    from tasks.evaluation import _previous_metrics

    m = _previous_metrics(env["store"])["metrics"]
    assert 0.0 <= m["blend_valid_recall@100_user"] <= m["blend_valid_recall@100"] <= 1.0
    assert m["coengagement_items"] > 0
    # the neighbour lists and fast-scan quantiser the evaluation's engine built travel in the snapshot
    # (neither is rebuilt nor refitted by the service)
    from mfli.snapshot import FASTSCAN_FILE, NEIGHBOURS_FILE
    from mfli.store import open_store
    from mfli.store.snapshots import read_manifest

    files = read_manifest(open_store(env["store"]), second)["files"]
    assert any(f.endswith(NEIGHBOURS_FILE) for f in files) and any(f.endswith(FASTSCAN_FILE) for f in files)
    # re-running day 1 computes the same id and publishes nothing new; LATEST stays on day 2
    dr = _run(dagbag, "mfli_daily_retrain", DAY1, _conf(env))
    assert dr.state == "success"
    assert _snapshots(env) == [first, second]
    assert _live(env) == second


def test_impossible_gate_fails_and_leaves_live_snapshot(dagbag, published):
    env = published
    live = _live(env)
    before = _snapshots(env)
    assert live == env["live"][-1] and len(before) == 2
    dr = _run(dagbag, "mfli_daily_retrain", DAY2, _conf(env, seed=7, min_recall_at_100=0.99))
    assert dr.state == "failed"
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert states["quality_gate"] == "failed"
    assert states["publish"] in ("upstream_failed", None)
    assert _live(env) == live and _snapshots(env) == before


def test_hourly_delta_publishes_once_per_window(dagbag, published):
    from mfli.store import list_deltas, open_store

    env = published
    assert _live(env) == env["live"][-1]
    conf = _conf(env, start="2024-06-30T18:00:00+00:00", end="2024-07-01T00:00:00+00:00")
    dr = _run(dagbag, "mfli_hourly_delta", DAY2, conf)
    assert dr.state == "success"
    store = open_store(env["store"])
    deltas = list_deltas(store, _live(env))
    assert len(deltas) == 1
    n = deltas[0]["meta"]["items"] if "meta" in deltas[0] else None
    dr = _run(dagbag, "mfli_hourly_delta", DAY2, conf)
    assert dr.state == "success"
    again = list_deltas(store, _live(env))
    assert len(again) == 1
    if n is not None:
        assert again[0]["meta"]["items"] == n


def test_sharded_index_build_equals_single_shard(published):
    """The daily run mapped encode_shard over 3 shards; rebuilding with 1 shard gives the same index."""
    import numpy as np

    from mfli.index.inverted import MultiFacetIndex
    from mfli.store import open_store, read_latest
    from tasks import pipeline as P
    from tasks.artifacts import get_dir, scratch_dir

    env = published
    live = read_latest(open_store(env["store"])).snapshot_id
    work = f"{env['store']}/runs/{live}"
    run = {"store_uri": env["store"], "work_uri": work + "/single-shard", "cutoff": None,
           "params": {"shards": 1}}
    extracted = {"items_uri": f"{work}/items.parquet", "interactions_uri": f"{work}/interactions.parquet"}
    trained = {"model_uri": f"{work}/model"}
    with scratch_dir() as tmp:
        sharded = MultiFacetIndex.load(get_dir(env["store"], f"{work}/index", tmp / "sharded"))
        from mfli.store.snapshots import read_manifest

        run["cutoff"] = read_manifest(open_store(env["store"]), live)["window"]["cutoff"]
        shards = P.plan_shards_task(run, {**extracted, "n_items": sharded.n_items})
        assert len(shards) == 1
        enc = [P.encode_shard_task(s, trained) for s in shards]
        single = P.build_index_task(run, extracted, trained, enc)
        one = MultiFacetIndex.load(get_dir(env["store"], single["index_uri"], tmp / "single"))
    assert np.array_equal(one.item_ids, sharded.item_ids)
    assert np.array_equal(one.assignments, sharded.assignments)
    np.testing.assert_array_equal(one.embeddings, sharded.embeddings)
    for a, b in zip(one.facets, sharded.facets):
        assert np.array_equal(a.cluster_ids, b.cluster_ids) and np.array_equal(a.rows, b.rows)
