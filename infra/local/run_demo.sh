#!/usr/bin/env bash
# The README's main command (`make run`) after set-up: the platform's main job on embedded defaults.
#   1. generate the demo synthetic catalogue (parquet; deterministic by seed)
#   2. run the daily retrain DAG end to end (`airflow dags test`, SQLite metadata, local Feast,
#      local object store): ingest -> extract -> validate -> train -> index -> evaluate -> gate -> publish
#   3. run one hourly delta DAG over the catalogue's last hour of new items
#   4. print where the snapshot went and its metrics
# Options (environment): MFLI_STORE_URI=s3://bucket/prefix (+ AWS_ENDPOINT_URL, credentials) publishes
# to S3 instead of the local directory; MFLI_DEMO_S3=seaweedfs starts a local SeaweedFS S3 server.
set -euo pipefail
source "$(dirname "$0")/setup_airflow.sh"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
DATA="$MFLI_HOME/data/synthetic"
ITEMS="${MFLI_DEMO_ITEMS:-10000}"
USERS="${MFLI_DEMO_USERS:-3000}"
EVENTS="${MFLI_DEMO_INTERACTIONS:-100000}"
DAY="${MFLI_DEMO_DAY:-2024-06-30}"          # the synthetic catalogue ends 2024-07-01T00:00Z

if [ "${MFLI_DEMO_S3:-}" = "seaweedfs" ]; then
  source "$ROOT/infra/local/seaweedfs.sh"
fi
STORE="${MFLI_STORE_URI:-file://$MFLI_HOME/store}"
export MFLI_STORE_URI="$STORE"

echo "== 1/4 synthetic catalogue: $ITEMS items, $USERS users, $EVENTS events -> $DATA"
"$BIN/mfli" data generate "$DATA" --items "$ITEMS" --users "$USERS" --interactions "$EVENTS" --seed 0
"$BIN/mfli" data stats "$DATA"

CONF=$(printf '{"dataset_uri": "%s", "store_uri": "%s"}' "$DATA" "$STORE")
echo "== 2/4 daily retrain DAG for $DAY (store: $STORE)"
"$BIN/airflow" dags test mfli_daily_retrain "$DAY" -c "$CONF" > "$MFLI_HOME/daily.log" 2>&1 || {
  tail -n 60 "$MFLI_HOME/daily.log" >&2; echo "daily DAG failed; full log: $MFLI_HOME/daily.log" >&2; exit 1; }
grep -E "published snapshot|already published|gate " "$MFLI_HOME/daily.log" | sed 's/^.*\] //' | tail -n 8 || true

echo "== 3/4 hourly delta DAG for the catalogue's last hour"
HCONF=$(printf '{"dataset_uri": "%s", "store_uri": "%s", "start": "%sT23:00:00+00:00", "end": "%sT00:00:00+00:00"}' \
  "$DATA" "$STORE" "$DAY" "$(date -u -d "$DAY + 1 day" +%F)")
"$BIN/airflow" dags test mfli_hourly_delta "${DAY}T23:00:00+00:00" -c "$HCONF" > "$MFLI_HOME/hourly.log" 2>&1 || {
  tail -n 60 "$MFLI_HOME/hourly.log" >&2; echo "hourly DAG failed; full log: $MFLI_HOME/hourly.log" >&2; exit 1; }
grep -E "published delta|skipping" "$MFLI_HOME/hourly.log" | sed 's/^.*\] //' | tail -n 3 || true

echo "== 4/4 published snapshots in $STORE"
"$BIN/mfli" snapshot list --store "$STORE" --metrics recall@100,cold_recall@100,topic_match@100
"$BIN/python" - "$STORE" <<'PY'
import json, sys
from mfli.store import open_store, read_latest
from mfli.store.snapshots import read_manifest
from mfli.store.deltas import list_deltas
store = open_store(sys.argv[1])
live = read_latest(store)
m = read_manifest(store, live.snapshot_id)
print(f"live snapshot: {live.snapshot_id} at {sys.argv[1]}/snapshots/{live.snapshot_id}/")
print(f"run report:    {sys.argv[1]}/snapshots/{live.snapshot_id}/report/report.md")
print(f"deltas:        {[d.get('window') for d in list_deltas(store, live.snapshot_id)]}")
keys = ["recall@50", "recall@100", "recall@200", "cold_recall@100", "topic_match@100", "long_tail@100",
        "coverage@100", "exact_recall@100", "pop_recall@100", "mfli_user_recall@100", "recall@100_vs_exact",
        "recall@100_vs_user", "blend_w_coengagement", "blend_w_trigger", "blend_w_trending", "blend_w_new_items",
        "codebook_utilisation",
        "max_cluster_share", "test_users", "items"]
print(f"serving mode:  {'blend' if m.get('serving', {}).get('blend') else 'user / trigger'}")
print("| metric | value |\n|---|---|")
for k in keys:
    v = m["metrics"].get(k)
    print(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
PY
