#!/usr/bin/env bash
# Embedded Airflow: AIRFLOW_HOME under $MFLI_HOME, SQLite metadata DB migrated, DAGs from dags/.
# Idempotent: `airflow db migrate` is a no-op on an up-to-date database. Source it (it exports).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$MFLI_HOME/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-WARNING}"
mkdir -p "$AIRFLOW_HOME"
"$ROOT/.venv/bin/airflow" db migrate > "$AIRFLOW_HOME/db_migrate.log" 2>&1 || {
  cat "$AIRFLOW_HOME/db_migrate.log" >&2
  exit 1
}
