"""Failure policy of the DAGs: no retries on data errors, notifications, deadlines, catch-up, retention."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import pytest

DAGS = str(Path(__file__).resolve().parents[2] / "dags")
if DAGS not in sys.path:  # Airflow puts the DAG folder on sys.path; the DAGs import `common` from it
    sys.path.insert(0, DAGS)


def test_data_errors_fail_without_retry_other_errors_keep_retries():
    from airflow.sdk.exceptions import AirflowFailException
    from common import data_errors_fail_fast

    from mfli.data.errors import DataError
    from mfli.validation.runner import ValidationFailed

    for exc in (DataError("items.parquet", "bad column"), ValidationFailed.__new__(ValidationFailed)):
        with pytest.raises(AirflowFailException, match="data error, not retried"), data_errors_fail_fast():
            raise exc
    with pytest.raises(ConnectionError), data_errors_fail_fast():  # infrastructure: retried as before
        raise ConnectionError("S3 endpoint went away")


def test_every_task_notifies_on_failure(dagbag):
    from common import on_failure

    for dag_id in ("mfli_daily_retrain", "mfli_hourly_delta"):
        for task in dagbag.get_dag(dag_id).tasks:
            callbacks = task.on_failure_callback
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            assert on_failure in callbacks, (dag_id, task.task_id)


def test_schedules_timeouts_and_deadline(dagbag):
    daily, hourly = dagbag.get_dag("mfli_daily_retrain"), dagbag.get_dag("mfli_hourly_delta")
    assert hourly.catchup is True and hourly.max_active_runs == 1
    assert hourly.dagrun_timeout == timedelta(hours=2)
    assert daily.dagrun_timeout == timedelta(hours=12)
    assert daily.on_failure_callback is not None  # a timed-out run is notified like a failed task
    assert not daily.deadline  # soft deadline is opt-in (see test below)
    # runs/ retention runs after publish whether it published or skipped (nothing new to publish)
    prune = daily.get_task("prune_runs")
    assert "publish" in prune.upstream_task_ids and prune.trigger_rule == "none_failed"
    assert [o.name for o in daily.get_task("publish").outlets] == ["mfli_snapshot"]


@pytest.mark.timeout(120)
def test_uris_from_variables_and_s3_from_the_connection():
    """Run in a child process: Airflow reads AIRFLOW_VAR_* / AIRFLOW_CONN_* from its environment."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(DAGS).parent), DAGS]),
           "AIRFLOW_VAR_MFLI_STORE_URI": "s3://var-bucket/prod",
           "AIRFLOW_CONN_MFLI_S3": "aws://AKIDEXAMPLE1:secret-from-conn@/?endpoint_url=http%3A%2F%2F127.0.0.1%3A9"
                                   "&region_name=eu-west-1"}
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MFLI_S3_ENDPOINT_URL", "AWS_REGION"):
        env.pop(k, None)
    code = ("import os, json; from common import with_uri_defaults, s3_env_from_connection; "
            "p = with_uri_defaults({'dataset_uri': '', 'store_uri': ''}); "
            "q = with_uri_defaults({'dataset_uri': '/data/x', 'store_uri': 's3://param/wins'}); "
            "s3_env_from_connection(); "
            "print(json.dumps([p, q, {k: os.environ.get(k) for k in "
            "('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'MFLI_S3_ENDPOINT_URL', 'AWS_REGION')}]))")
    import json

    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=110,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    p, q, s3 = json.loads(out.stdout.strip().splitlines()[-1])
    assert p == {"dataset_uri": "", "store_uri": "s3://var-bucket/prod"}  # dataset: env/embedded fallback later
    assert q == {"dataset_uri": "/data/x", "store_uri": "s3://param/wins"}
    assert s3 == {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE1", "AWS_SECRET_ACCESS_KEY": "secret-from-conn",
                  "MFLI_S3_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": "eu-west-1"}


@pytest.mark.timeout(120)
def test_soft_deadline_is_set_from_the_environment():
    import os
    import subprocess

    code = ("import runpy, sys; g = runpy.run_path(sys.argv[1]); d = g['_soft_deadline'](); "
            "print(d.interval.total_seconds(), d.callback.path if hasattr(d.callback, 'path') else d.callback)")
    env = {**os.environ, "MFLI_DAILY_DEADLINE_HOURS": "6", "PYTHONPATH": os.pathsep.join([str(Path(DAGS).parent), DAGS])}
    out = subprocess.run([sys.executable, "-c", code, str(Path(DAGS) / "mfli_daily_retrain.py")], env=env,
                         capture_output=True, text=True, timeout=110, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("21600.0")
