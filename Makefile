# Every target creates or reuses .venv; CI starts from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
TEACHERS ?= tiny

.PHONY: setup test lint format typecheck pytest demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,sim]'
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/ruff format --check src tests scripts benchmarks

format: setup
	$(BIN)/ruff check --fix src tests scripts benchmarks
	$(BIN)/ruff format src tests scripts benchmarks

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

demo: setup
	$(BIN)/python -m distill.demo --teachers $(TEACHERS) --output runs/demo

bench: setup
	$(BIN)/python benchmarks/run_all.py --output benchmarks/results/summary.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
