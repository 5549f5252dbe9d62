# The two commands a new user runs, as root, on a fresh Debian 12 machine:
#   make up     installs what is missing, builds the default image, starts the example fleet
#   make test   the same set-up, then lint, types and the whole test suite
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
FLEET ?= examples/fleet.toml

.PHONY: setup up test check unit bench clean

setup:
	@scripts/setup.sh

up: setup
	$(BIN)/warden image build minimal
	$(BIN)/warden up $(FLEET)

check: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: check
	$(BIN)/pytest -q $(PYTEST_ARGS)
	@scripts/check-leaks.sh

unit: setup
	$(BIN)/pytest -q -m "not guest" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
