#!/usr/bin/env bash
# The README's test command (`make test`, what CI runs) after set-up: the whole suite in a shuffled
# order whose seed is printed, so an order dependency shows up and any failing order can be replayed.
#
#   infra/local/run_tests.sh [--cpu-load N] [--seed N | --no-shuffle] [pytest args...]
#
#   --cpu-load N   keep N busy processes spinning meanwhile (a CI runner another job shares), each in
#                  its own process group, killed when this script exits however it exits
#   --seed N       replay the order of an earlier run (its "randomly seed" line)
#   --no-shuffle   run in file order
# Make: `make test LOAD=1`, `make test SEED=N`, `make test SHUFFLE=0`.
set -uo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"

load=0
seed=""
shuffle=1
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-load) load="${2:?--cpu-load needs a number}"; shift 2 ;;
    --cpu-load=*) load="${1#*=}"; shift ;;
    --seed) seed="${2:?--seed needs a number}"; shift 2 ;;
    --seed=*) seed="${1#*=}"; shift ;;
    --no-shuffle) shuffle=0; shift ;;
    *) break ;;
  esac
done
case "$load" in ''|*[!0-9]*) echo "--cpu-load wants a whole number, got '$load'" >&2; exit 2 ;; esac
case "$seed" in *[!0-9]*) echo "--seed wants a whole number, got '$seed'" >&2; exit 2 ;; esac

busy=()
stop_load() {
  for pid in "${busy[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null  # the whole process group, by its id
  done
  busy=()
}
trap stop_load EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for _ in $(seq 1 "$load"); do
  # setsid: its own process group (a background job here is never a group leader, so no extra fork).
  # It spins, and stops by itself once this script is gone (even after a SIGKILL that skips the trap).
  setsid bash -c 'while kill -0 "$1" 2>/dev/null; do for _ in {1..20000}; do :; done; done' _ "$$" \
    </dev/null >/dev/null 2>&1 &
  busy+=("$!")
done
[ "$load" -gt 0 ] && echo "run_tests: $load busy process(es) for synthetic CPU load: ${busy[*]}"

order=(-p no:randomly)
if [ "$shuffle" -eq 1 ]; then
  seed="${seed:-$(( (RANDOM << 15) | RANDOM ))}"
  order=(-p randomly "--randomly-seed=$seed")
  echo "run_tests: shuffled order, randomly seed $seed (replay: infra/local/run_tests.sh --seed $seed)"
fi

# Compile the serving kernels into numba's cache first (about a minute on a fresh clone, under a second
# after): otherwise whichever test loads a snapshot first pays it, and one with a bounded wait can time out.
.venv/bin/mfli precompile || exit 1

# Tests get their own MFLI/Airflow/Feast homes and object stores under temp dirs (see tests/conftest.py).
.venv/bin/python -m pytest "${order[@]}" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
if [ "$rc" -ne 0 ] && [ "$shuffle" -eq 1 ]; then
  echo "run_tests: failed with randomly seed $seed; replay: infra/local/run_tests.sh --seed $seed" >&2
fi
exit "$rc"
