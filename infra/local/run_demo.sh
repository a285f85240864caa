#!/usr/bin/env bash
# The README's main command (`make run`) after set-up: the platform's main job on embedded defaults.
# Generates the demo synthetic catalogue, loads it back, splits it and prints its statistics.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
MFLI=".venv/bin/mfli"
DATA="$MFLI_HOME/data/synthetic"
ITEMS="${MFLI_DEMO_ITEMS:-20000}"
USERS="${MFLI_DEMO_USERS:-5000}"
EVENTS="${MFLI_DEMO_INTERACTIONS:-200000}"

echo "== generating synthetic catalogue ($ITEMS items, $USERS users, $EVENTS events) -> $DATA"
"$MFLI" data generate "$DATA" --items "$ITEMS" --users "$USERS" --interactions "$EVENTS" --seed 0
echo "== dataset statistics"
"$MFLI" data stats "$DATA"
echo "== time split"
"$MFLI" data split "$DATA" --kind time
