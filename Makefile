# densepipe: `make repro` runs the embedded default, `make test` runs the test suite.
# Both create .venv when needed and install the project into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
# one id per `make repro`, so MLflow groups that invocation's runs under one parent
RUN_GROUP := repro-$(shell date -u +%Y%m%dT%H%M%S)

.PHONY: repro test smoke-paper lint format install bench mlflow-ui mlflow-server clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision first, pinned: pip takes them from the local wheel cache here
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# one local Ray head for the whole run: each Ray stage connects to it (RAY_ADDRESS) instead of
# starting its own runtime; it is stopped afterwards (only its own processes)
repro: $(STAMP)
	DENSEPIPE_RUN_GROUP=$(RUN_GROUP) $(BIN)/python -m pipeline.runtime.localray -- $(BIN)/dvc repro
	@echo "Results: reports/results.md   MLflow UI: make mlflow-ui"

# two xdist workers, one test module each at a time (tests/conftest.py starts the long ones
# first): the suite is mostly process start-up and Ray scheduling, so two overlap well on 2 cores
TEST_WORKERS ?= 2
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# profile: paper at full width on the real-data slices in ../shared/data, with trial limits
# (tests/test_paper_smoke.py; skips with a reason when the fixtures are absent)
smoke-paper: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m paper_smoke tests/test_paper_smoke.py

lint: $(STAMP)
	$(BIN)/ruff check pipeline stages tests benchmarks
	$(BIN)/ruff format --check pipeline stages tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format pipeline stages tests benchmarks
	$(BIN)/ruff check --fix pipeline stages tests benchmarks

bench: $(STAMP)
	$(BIN)/pip install -q --no-deps torchfcn
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# the runs table: open the URL the train/evaluate stages print (.../runs?workflowType=...;
# without that query MLflow 3.17 opens an experiment on its GenAI overview)
mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db)

# one MLflow writer for parallel sweeps and multi-node clusters: point every node at
# MLFLOW_TRACKING_URI=http://HOST:5000 (bound to 127.0.0.1 here; MLFLOW_HOST=0.0.0.0 exposes it,
# and with it anyone on the network can write runs: put it behind a tunnel or a proxy)
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
mlflow-server: $(STAMP)
	$(BIN)/mlflow server --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers 1 \
		--backend-store-uri sqlite:///$(abspath mlflow.db) --artifacts-destination $(abspath mlartifacts)

clean:
	rm -rf data models metrics reports/figures reports/results.md ray_results mlflow.db mlartifacts
