"""Failure policy shared by the MFLI DAGs (no DAG in this file).

- Data errors (``mfli.data.errors.DataError``, including Great Expectations' ``ValidationFailed``)
  fail the task at once with ``AirflowFailException``: the same bad input fails the same way on every
  retry, so retrying only delays the alert. Infrastructure errors (S3, network, a killed worker) keep
  their retries.
- ``on_failure_callback`` sends a notification through ``tasks.notify`` (pluggable with
  ``MFLI_NOTIFIER``, logs by default); the daily DAG's deadline alert uses the same notifier.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow.sdk.exceptions import AirflowFailException


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
