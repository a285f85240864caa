# Embedded-mode environment shared by the README's commands (sourced, not run).
# Everything lives under .mfli/ in the checkout unless overridden.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export MFLI_HOME="${MFLI_HOME:-$ROOT/.mfli}"
export FEAST_USAGE=False
export GX_ANALYTICS_ENABLED=false
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
export AIRFLOW__API__HOST=127.0.0.1
export TQDM_MININTERVAL="${TQDM_MININTERVAL:-2}"
mkdir -p "$MFLI_HOME"
