# The two commands a new user needs (see README):
#   make run   - set up and run the platform's main job on embedded defaults
#   make test  - set up and run the test suite (what CI runs), in a shuffled order whose seed it prints
#                options: LOAD=N (N busy processes meanwhile), SEED=N (replay an order), SHUFFLE=0 (file
#                order), ARGS='...' (more pytest arguments); see docs/development.md
PYTHON ?= python3.11
LOAD    ?= 0
SEED    ?=
SHUFFLE ?= 1
ARGS    ?=
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test setup lint clean platform-up platform-down platform-status platform-scenario

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,platform]'  # platform: the scenario test's Celery, PostgreSQL and Redis clients
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	bash infra/local/run_demo.sh

test: $(STAMP)
	bash infra/local/run_tests.sh --cpu-load $(LOAD) $(if $(SEED),--seed $(SEED)) \
		$(if $(filter 0,$(SHUFFLE)),--no-shuffle) $(ARGS)

# The production-shaped stack on this machine (docs/operations.md): PostgreSQL, Redis, Celery, SeaweedFS, Feast, serve.
platform-up: $(STAMP)
	bash infra/local/platform.sh up

platform-down:
	bash infra/local/platform.sh down

platform-status:
	bash infra/local/platform.sh status

# Simulated days on a fresh stack with faults, one JSON report (docs/operations.md "Scenario"):
#   make platform-scenario DAYS=3 OUT=docs/results/platform_scenario.json [SCENARIO_ARGS=--no-faults]
DAYS ?= 1
OUT  ?= .mfli/platform_scenario.json
SCENARIO_ARGS ?=
platform-scenario: $(STAMP)
	bash infra/local/platform.sh scenario --days $(DAYS) --out $(OUT) $(SCENARIO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check mfli tasks dags tests bench
	$(BIN)/ruff check --select AIR3 dags

clean:
	rm -rf .mfli build *.egg-info
