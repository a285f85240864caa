"""
### MFLI hourly delta

Indexes items created in the last window without retraining: ingest the window into Feast ->
extract new items (Feast) -> validate
(Great Expectations) -> encode from content and assign code paths with the live snapshot's model,
codebooks and rebalance map (item shards in parallel) -> cold-start gate -> publish a delta bound to
that snapshot. Serving picks the delta up on its next refresh.

Window: the data interval on scheduled runs; the `start`/`end` Params on manual runs (which may have no
logical date in Airflow 3); the hour before the snapshot Asset event when a new snapshot triggers it.
Idempotent per window: re-running a window replaces its delta, never duplicates items. No snapshot yet,
or no new items in the window, is a clean skip.

Run it locally: `airflow dags test mfli_hourly_delta 2024-03-31T01:00:00+00:00`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable, Param, dag, task
from common import DEFAULT_ARGS as COMMON_ARGS  # dags/common.py (the DAG folder is on sys.path)
from common import (
    DELTA_SCHEDULE,
    SCHEDULE_END,
    SCHEDULE_START,
    SNAPSHOT_ASSET,
    data_errors_fail_fast,
    with_uri_defaults,
)

from tasks.params import DeltaParams

DEFAULT_ARGS = {
    **COMMON_ARGS,
    "retry_delay": timedelta(seconds=20),
    "max_retry_delay": timedelta(minutes=5),
    "execution_timeout": timedelta(minutes=30),
}

_D = DeltaParams()  # one default per param: the typed Params the tasks parse
PARAMS = {
    "dataset_uri": Param(_D.dataset_uri, type="string", description="Dataset folder the new items come from; empty = the embedded demo catalogue."),
    "store_uri": Param(_D.store_uri, type="string", description="Object store holding the live snapshot; empty = the embedded local store."),
    "start": Param(_D.start, type=["null", "string"], format="date-time", description="Window start for manual runs (ISO 8601)."),
    "end": Param(_D.end, type=["null", "string"], format="date-time", description="Window end for manual runs (ISO 8601)."),
    "shards": Param(_D.shards, type="integer", minimum=1, maximum=256),
    "min_self_retrieval_rate": Param(_D.min_self_retrieval_rate, type="number", minimum=0, maximum=1, description="Share of new items a query built from their own content must retrieve."),
    "max_cluster_overflow": Param(_D.max_cluster_overflow, type="number", minimum=1, description="A new item's cluster may grow to at most this times the rebalancing cap."),
}


@dag(
    dag_id="mfli_hourly_delta",
    schedule=AssetOrTimeSchedule(
        timetable=CronDataIntervalTimetable(DELTA_SCHEDULE, timezone="UTC"), assets=[SNAPSHOT_ASSET]
    ),
    start_date=SCHEDULE_START,
    end_date=SCHEDULE_END,
    # every hour is indexed: a scheduler that was down, or an hour whose data failed validation and was
    # fixed, is caught up in order (max_active_runs=1)
    catchup=True,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    tags=["mfli", "delta", "index"],
    doc_md=__doc__,
)
def mfli_hourly_delta():
    @task
    def resolve_window(**context) -> dict:
        from tasks.runs import resolve_delta_run
        from tasks.watermark import watermark_from_events

        return resolve_delta_run(
            params=with_uri_defaults(dict(context["params"])),
            data_interval_start=context.get("data_interval_start"),
            data_interval_end=context.get("data_interval_end"),
            run_id=context["run_id"],
            # a run started by a new snapshot indexes everything since that snapshot's data end
            watermark=watermark_from_events(context.get("triggering_asset_events")),
        )

    @task
    def ingest(run: dict) -> dict:
        """Bring the window's new items and events into the feature store (idempotent per day)."""
        from tasks.pipeline import ingest_task

        with data_errors_fail_fast():
            return {"rows": ingest_task(run)["rows"]}

    @task.short_circuit(ignore_downstream_trigger_rules=True)
    def extract_new_items(run: dict, ingested: dict) -> dict | None:
        """Returns None (skipping everything after it) when there is no snapshot or no new item."""
        from tasks.delta import extract_new_items_task

        with data_errors_fail_fast():
            return extract_new_items_task(run)

    @task
    def plan_shards(run: dict, new_items: dict) -> list[dict]:
        from tasks.delta import plan_delta_shards_task

        return plan_delta_shards_task(run, new_items)

    @task(retries=3)
    def encode_assign(shard: dict) -> dict:
        from tasks.delta import encode_assign_shard_task

        return encode_assign_shard_task(shard)

    @task(retries=0)
    def cold_start_gate(run: dict, new_items: dict, shards: list[dict]) -> dict:
        from tasks.delta import cold_start_gate_task

        return cold_start_gate_task(run, new_items, list(shards))

    @task
    def publish_delta(run: dict, new_items: dict, gate: dict) -> dict:
        from tasks.delta import publish_delta_task

        return publish_delta_task(run, new_items, gate)

    run = resolve_window()
    new_items = extract_new_items(run, ingest(run))
    shard_specs = plan_shards(run, new_items)
    assigned = encode_assign.expand(shard=shard_specs)
    gate = cold_start_gate(run, new_items, assigned)
    publish_delta(run, new_items, gate)


mfli_hourly_delta()
