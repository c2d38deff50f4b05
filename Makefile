# The two commands a reader needs are `make run` and `make test`; both set everything up first.
# Every target is idempotent: the virtualenv is rebuilt only when requirements.txt changes, and
# Prometheus is installed only when it is missing.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
# MLflow warns about git when the repo is not a git checkout (a downloaded zip); harmless
export GIT_PYTHON_REFRESH := quiet

.PHONY: setup prometheus run train test bench down clean help

help:
	@echo "make run    set up, then run the notebook top to bottom on the local Seldon stack"
	@echo "make test   set up, then run the test suite (CI runs exactly this)"
	@echo "make train  set up, then train and register both arms"
	@echo "make bench  set up, then run the benchmarks (bench/README.md)"
	@echo "make down   stop a local stack left running"
	@echo "make clean  remove the virtualenv, tracking store, stack state and caches"

setup: $(STAMP) prometheus

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

prometheus:
	@bash scripts/install-prometheus.sh

train: setup
	$(BIN)/python -m training.arms

run: setup
	$(BIN)/python scripts/run_notebook.py
	$(BIN)/python scripts/mlflow_ui_screenshot.py

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/run.py

down:
	@test -x $(BIN)/python && $(BIN)/python -m serving.local down || true

clean: down
	rm -rf $(VENV) mlflow.db mlartifacts mlruns .stack runs .pytest_cache .hypothesis
