# Every target creates or reuses .venv; CI starts from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
TEACHERS ?= tiny
# The tested package versions (make lock). `make setup CONSTRAINTS=` resolves the open ranges of
# pyproject.toml afresh instead, e.g. to refresh the lock: make clean setup CONSTRAINTS= test lock
CONSTRAINTS ?= constraints.txt

.PHONY: setup test lint format typecheck pytest demo bench clean lock

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,sim]' $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $(STAMP)

setup: $(STAMP)

# Write constraints.txt from this venv: every package of the project's dependency closure (dev and
# sim extras included), at the version installed. Run it on a venv that passed `make test`.
lock: setup
	$(BIN)/python scripts/lock_constraints.py --extras dev sim --output constraints.txt

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
