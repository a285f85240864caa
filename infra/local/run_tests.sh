#!/usr/bin/env bash
# The README's test command (`make test`) after set-up: runs the whole suite.
set -uo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
# Tests get their own Airflow/Feast/object-store homes under a temp dir (see tests/conftest.py).
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$rc"
