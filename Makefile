# The two commands of the README: `make demo` and `make test`. Both set everything up first.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
export TUNELAB_CACHE ?= $(CURDIR)/.cache
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint format typecheck check clean lock

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/tunelab run examples/quickstart.yaml

test: setup
	@bash scripts/setup-browser.sh
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -n auto --dist loadfile

test-fast: setup
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "not slow"

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/lint-imports --no-cache

format: setup
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

typecheck: setup
	$(BIN)/mypy

check: lint typecheck test

lock:  # re-resolve pyproject's ranges into constraints.txt (then run make test)
	@bash scripts/lock.sh

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
