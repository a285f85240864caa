"""What both MFLI DAGs share: the snapshot Asset, the default task arguments and the failure policy.

- Data errors (``mfli.data.errors.DataError``, including Great Expectations' ``ValidationFailed``)
  fail the task at once with ``AirflowFailException``: the same bad input fails the same way on every
  retry, so retrying only delays the alert. Infrastructure errors (S3, network, a killed worker) keep
  their retries.
- ``on_failure_callback`` sends a notification through ``tasks.notify`` (pluggable with
  ``MFLI_NOTIFIER``, logs by default); the daily DAG's deadline alert uses the same notifier.

Not a DAG (listed in ``.airflowignore``); the DAG files import it as ``common``, from the DAG folder
that Airflow puts on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pendulum
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException

#: Emitted by the daily DAG's publish task; schedules the hourly delta DAG.
SNAPSHOT_ASSET = Asset("mfli_snapshot", uri="mfli://snapshots/LATEST")


def on_failure(context) -> None:
    """``on_failure_callback`` of every MFLI task (imports lazily: callbacks run in the worker)."""
    from tasks.notify import notify_failure

    notify_failure(context)


@contextlib.contextmanager
def data_errors_fail_fast() -> Iterator[None]:
    """Turn a data error raised inside the block into ``AirflowFailException`` (no retries)."""
    from mfli.data.errors import DataError

    try:
        yield
    except DataError as exc:
        raise AirflowFailException(f"data error, not retried: {type(exc).__name__}: {exc}") from exc


#: Airflow connection holding the S3 credentials/endpoint (aws type: login = access key id,
#: password = secret, extra {"endpoint_url", "region_name"}); absent = the worker's env / role.
S3_CONN_ID = os.environ.get("MFLI_S3_CONN_ID", "mfli_s3")
#: Airflow Variables naming the dataset and the store when the run's Params leave them empty.
URI_VARIABLES = {"dataset_uri": "mfli_dataset_uri", "store_uri": "mfli_store_uri"}


def s3_env_from_connection(context=None) -> None:
    """``pre_execute`` of every task: export the ``mfli_s3`` connection to this task process's
    environment (each task runs in its own process), where boto3 and the store read it. Without the
    connection nothing changes (environment variables or an IAM role apply)."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException, AirflowRuntimeError

    try:
        conn = Connection.get(S3_CONN_ID)
    except (AirflowNotFoundException, AirflowRuntimeError):
        return
    extra = conn.extra_dejson or {}
    env = {"AWS_ACCESS_KEY_ID": conn.login, "AWS_SECRET_ACCESS_KEY": conn.password,
           "AWS_SESSION_TOKEN": extra.get("aws_session_token"), "AWS_REGION": extra.get("region_name"),
           "MFLI_S3_ENDPOINT_URL": extra.get("endpoint_url"), "AWS_ENDPOINT_URL": extra.get("endpoint_url")}
    os.environ.update({k: str(v) for k, v in env.items() if v})


def with_uri_defaults(params: dict) -> dict:
    """The run's Params with ``dataset_uri``/``store_uri`` filled from the Airflow Variables
    ``mfli_dataset_uri``/``mfli_store_uri`` when empty (then the tasks' env fallbacks
    ``MFLI_DATASET_URI``/``MFLI_STORE_URI``, then the embedded defaults)."""
    from airflow.sdk import Variable

    out = dict(params)
    for key, var in URI_VARIABLES.items():
        if not out.get(key):
            out[key] = Variable.get(var, default="") or ""
    return out


#: First schedule of both DAGs (catchup fills every interval from here): the deployment's start,
#: ``MFLI_SCHEDULE_START`` (ISO date), default 2024-01-01.
SCHEDULE_START = pendulum.parse(os.environ.get("MFLI_SCHEDULE_START") or "2024-01-01", tz="UTC")
#: Last schedule of both DAGs (``MFLI_SCHEDULE_END``, ISO date/time; unset = none): catch-up stops
#: there. A bounded run (the platform scenario simulates days by catching up on past hours) sets it.
SCHEDULE_END = pendulum.parse(os.environ["MFLI_SCHEDULE_END"], tz="UTC") if os.environ.get("MFLI_SCHEDULE_END") else None

#: The delta DAG's cron (``MFLI_DELTA_SCHEDULE``, default hourly). A wider window (``0 */4 * * *``)
#: trades freshness for fewer runs; the platform scenario's CI run uses it to stay short.
DELTA_SCHEDULE = os.environ.get("MFLI_DELTA_SCHEDULE") or "0 * * * *"

#: Every task retries (object stores and Feast have transient failures); the gates override to 0.
#: Each DAG adds its own retry delays and execution timeout.
DEFAULT_ARGS = {
    "owner": "mfli",
    "retries": 2,
    "retry_exponential_backoff": True,
    "on_failure_callback": on_failure,
    "pre_execute": s3_env_from_connection,
}
