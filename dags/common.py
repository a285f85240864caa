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


#: First schedule of both DAGs (catchup fills every interval from here): the deployment's start,
#: ``MFLI_SCHEDULE_START`` (ISO date), default 2024-01-01.
SCHEDULE_START = pendulum.parse(os.environ.get("MFLI_SCHEDULE_START") or "2024-01-01", tz="UTC")

#: Every task retries (object stores and Feast have transient failures); the gates override to 0.
#: Each DAG adds its own retry delays and execution timeout.
DEFAULT_ARGS = {
    "owner": "mfli",
    "retries": 2,
    "retry_exponential_backoff": True,
    "on_failure_callback": on_failure,
}
