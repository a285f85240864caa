# syntax=docker/dockerfile:1.7
# The MFLI Platform image: one image for every role, Airflow 3 (api-server, scheduler, dag-processor,
# triggerer, Celery worker, KubernetesExecutor task pod) and the `mfli` CLI (retrieval service).
#
#   docker build -t mfli-platform:local .
#   docker run --rm mfli-platform:local airflow version
#   docker run --rm mfli-platform:local mfli --help
#
# Layout follows the official Airflow image so the Airflow Helm chart and the compose file can use it
# unchanged: AIRFLOW_HOME=/opt/airflow, DAGs baked into /opt/airflow/dags, user "airflow" uid 50000
# gid 0, any command runnable as `docker run IMAGE <command ...>` (the chart passes `bash -c "exec
# airflow scheduler"` and the like). No HEALTHCHECK here: compose and Kubernetes define their own.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a self-contained virtualenv in /opt/venv -------------------------------------------
FROM ${PYTHON_IMAGE} AS build

# PyTorch's CPU wheel index: without it pip takes the CUDA build of torch (several GB of GPU
# libraries the CPU-only workers never use).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The same pins as pyproject.toml (tests/infra/test_compose.py checks they agree).
ARG TORCH_VERSION=2.13.0
ARG AIRFLOW_VERSION=3.3.2
ARG FEAST_VERSION=0.67.0
# Providers the deployments need, on top of what pyproject.toml installs:
#   celery (CeleryExecutor, compose), cncf-kubernetes (KubernetesExecutor, Helm), postgres (metadata
#   DB driver), amazon (S3 remote task logs), fab (the auth manager behind `airflow users create`
#   and the Helm chart's default), redis (Celery broker), statsd (the chart's metrics exporter).
ARG AIRFLOW_EXTRAS=celery,cncf-kubernetes,postgres,amazon,fab,redis,statsd

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv && pip install --upgrade pip

# Third-party stack first, in its own layer, so editing the project does not reinstall it.
# feast[redis] adds the Redis online-store client used by feature_repo/feature_store.prod.yaml.
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" \
        "apache-airflow[${AIRFLOW_EXTRAS}]==${AIRFLOW_VERSION}" \
        "feast[redis]==${FEAST_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY mfli/ mfli/
COPY tasks/ tasks/
# Same index again so the resolver keeps the CPU torch build already installed.
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" . \
 && pip check \
 && mfli --help > /dev/null

# ---- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG AIRFLOW_UID=50000

# tini: PID 1 that forwards signals (Celery warm shutdown, pod termination) and reaps zombies.
# curl: the compose healthchecks. libgomp1: OpenMP runtime for faiss/torch kernels.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini curl libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid "${AIRFLOW_UID}" --gid 0 --home-dir /home/airflow --create-home --shell /bin/bash airflow

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    MFLI_HOME=/opt/airflow/.mfli \
    FEAST_USAGE=False \
    GX_ANALYTICS_ENABLED=false \
    NUMBA_CACHE_DIR=/opt/numba-cache

# The serving kernels compiled into numba's cache, so a pod's first snapshot load does not spend about a
# minute compiling them. The cache holds code for this build machine's CPU: on another CPU the kernels are
# compiled again on first load (still before the service reports ready, never on a request).
RUN mfli precompile && chmod -R g+rwX /opt/numba-cache

# The chart's log-groomer sidecars run `bash /clean-logs` (a script of the official Airflow image):
# delete local log files older than AIRFLOW__LOG_RETENTION_DAYS, every ..._FREQUENCY_MINUTES.
COPY --chmod=0755 <<'EOF' /clean-logs
#!/usr/bin/env bash
set -euo pipefail
readonly DIRECTORY="${AIRFLOW_HOME:-/opt/airflow}/logs"
readonly RETENTION="${AIRFLOW__LOG_RETENTION_DAYS:-15}"
readonly FREQUENCY="${AIRFLOW__LOG_CLEANUP_FREQUENCY_MINUTES:-15}"
while true; do
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) removing logs older than ${RETENTION} days from ${DIRECTORY}"
  find "${DIRECTORY}" -type f -name '*.log' -mtime +"${RETENTION}" -delete 2>/dev/null || true
  find "${DIRECTORY}" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  sleep $((FREQUENCY * 60))
done
EOF

WORKDIR /opt/airflow
COPY --chown=${AIRFLOW_UID}:0 dags/ /opt/airflow/dags/
COPY --chown=${AIRFLOW_UID}:0 feature_repo/ /opt/airflow/feature_repo/
# Group-writable as in the official image, so platforms that run an arbitrary uid in group 0 work.
RUN mkdir -p /opt/airflow/logs /opt/airflow/plugins /opt/airflow/.mfli \
 && chown -R "${AIRFLOW_UID}:0" /opt/airflow \
 && chmod -R g+rwX /opt/airflow

USER ${AIRFLOW_UID}
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["airflow", "version"]
