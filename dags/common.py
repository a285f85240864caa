"""What both MFLI DAGs share: the snapshot Asset and the default task arguments.

Not a DAG (listed in ``.airflowignore``); the DAG files import it as ``common``, from the DAG folder
that Airflow puts on ``sys.path``.
"""

from __future__ import annotations

from airflow.sdk import Asset

#: Emitted by the daily DAG's publish task; schedules the hourly delta DAG.
SNAPSHOT_ASSET = Asset("mfli_snapshot", uri="mfli://snapshots/LATEST")

#: Every task retries (object stores and Feast have transient failures); the gates override to 0.
#: Each DAG adds its own retry delays and execution timeout.
DEFAULT_ARGS = {
    "owner": "mfli",
    "retries": 2,
    "retry_exponential_backoff": True,
}
