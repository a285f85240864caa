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

.PHONY: run test setup lint clean platform-up platform-down platform-status

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
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

lint: $(STAMP)
	$(BIN)/ruff check mfli tasks dags tests bench
	$(BIN)/ruff check --select AIR3 dags

clean:
	rm -rf .mfli build *.egg-info
