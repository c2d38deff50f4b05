# The two commands a reader needs are `make run` and `make test`; both set everything up first.
# Every target is idempotent: the virtualenv is rebuilt only when requirements.lock (or pyproject.toml)
# changes, and Prometheus is installed only when it is missing.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# every package of the environment, exact versions and hashes; generated from requirements.txt by `make lock`
LOCK := requirements.lock
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
# MLflow warns about git when the repo is not a git checkout (a downloaded zip); harmless
export GIT_PYTHON_REFRESH := quiet
FAST := not stack and not notebook and not slow
# `make setup INSTALLER=pip` installs the same lock with pip alone (what happens anyway when uv cannot be had)
INSTALLER ?= uv

.PHONY: setup prometheus run train test test-fast lint bench readme lock down clean help

help:
	@echo "make run        set up, then run the notebook top to bottom on the local Seldon stack"
	@echo "make test       set up, then ruff (lint + format check) and the whole test suite (CI runs this)"
	@echo "make test-fast  the unit tests that start no stack (under a minute): the edit-test loop"
	@echo "make lint       ruff check and ruff format --check (part of make test; fix with ruff format / ruff check --fix)"
	@echo "make setup      the virtualenv (.venv) from requirements.lock, and Prometheus if missing"
	@echo "make train      set up, then train and register both arms"
	@echo "make bench      set up, then run the benchmarks (bench/README.md)"
	@echo "make down       stop a local stack left running"
	@echo "make clean      remove the virtualenv, tracking store, stack state and caches"
	@echo "maintainers:"
	@echo "make lock       regenerate requirements.lock after editing requirements.txt"
	@echo "make readme     refresh README's committed-run figures (runs/notebook-stages.json, bench/results.json)"

setup: $(STAMP) prometheus

# uv installs the lock in seconds; uv itself comes from PyPI at the lock's version and hashes. Where uv
# cannot be had, pip installs the same lock (slower), with --no-deps: the lock lists every package, and
# pip's hash mode otherwise trips over extras (jupyter-events wants jsonschema[format-nongpl]); pip check
# then proves the set complete. The project's own modules go in last, without dependencies: a
# hash-checked lock cannot hold an editable install.
$(STAMP): $(LOCK) pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: Python 3.11 or newer is needed ($(PYTHON) is $$($(PYTHON) --version 2>&1)); try make PYTHON=python3.11" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if [ "$(INSTALLER)" = uv ] \
	    && sed -n '/^uv==/,/# via/p' $(LOCK) | $(BIN)/python -m pip install --quiet --require-hashes -r /dev/stdin \
	    && $(BIN)/uv --version > /dev/null; then \
	  echo "installing $(LOCK) with $$($(BIN)/uv --version)"; \
	  $(BIN)/uv pip sync --quiet --python $(BIN)/python --require-hashes $(LOCK) \
	    && $(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .; \
	else \
	  echo "installing $(LOCK) with pip (slower; uv was not asked for or could not be had)"; \
	  $(BIN)/python -m pip install --quiet --no-deps --require-hashes -r $(LOCK) \
	    && $(BIN)/python -m pip check \
	    && $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .; \
	fi
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

prometheus:
	@bash scripts/install-prometheus.sh

lock:
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile requirements.txt --universal --generate-hashes --python-version 3.11 \
	  --custom-compile-command "make lock" --quiet -o $(LOCK)

train: setup
	$(BIN)/python -m training.arms

run: setup
	$(BIN)/python scripts/run_notebook.py  # on a failure it names the cell and how to stop the stack
	$(BIN)/python scripts/mlflow_ui_screenshot.py
	$(BIN)/python scripts/run_notebook.py --notebook bandits.ipynb  # the bandit against the A/B test

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "$(FAST)"

bench: setup
	$(BIN)/python bench/run.py

readme: setup
	$(BIN)/python -m scripts.readme

down:
	@test -x $(BIN)/python && $(BIN)/python -m serving.local down || true

clean: down
	rm -rf $(VENV) mlflow.db mlartifacts mlruns .stack runs .pytest_cache .hypothesis .ruff_cache
