# The two commands a new user runs, as root, on a fresh Debian 12 machine:
#   make up     installs what is missing, builds the default image, starts the example fleet
#   make test   the same set-up, then lint, types and the whole test suite
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
FLEET ?= examples/fleet.toml
WARDEN_HOME ?= /var/lib/warden
# `make up` runs a copy of FLEET whose owners also accept your own SSH key (the first of
# ~/.ssh/id_ed25519.pub, id_ecdsa.pub, id_rsa.pub of the user who ran sudo, else root's); the
# tracked file is not changed. `warden fleet add-key --help` says more.
RUN_FLEET = $(WARDEN_HOME)/fleets/$(notdir $(FLEET))

.PHONY: setup up test check unit bench clean test-artefacts cluster-demo

setup:
	@scripts/setup.sh

up: setup
	$(BIN)/warden image build minimal
	$(BIN)/warden fleet add-key $(FLEET) --out $(RUN_FLEET) >/dev/null
	$(BIN)/warden up $(RUN_FLEET)

# Three warden hosts and a 3-member etcd on this machine, the example cluster fleet on them.
cluster-demo: setup
	$(BIN)/python scripts/cluster_demo.py

check: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# The slow artefacts the suite boots (the minimal and Debian images, the honeypot kernel) are
# built here, with progress, into the shared cache (keyed by their inputs: a warm rerun takes a
# second). A test fixture would pay a cold build under pytest's 300 s timeout: a kernel build
# takes ~7 minutes on 2 cores.
TEST_IMAGE_HOME ?= /tmp/warden-test-images
test-artefacts: setup
	WARDEN_HOME=$(TEST_IMAGE_HOME) $(BIN)/warden image build minimal
	WARDEN_HOME=$(TEST_IMAGE_HOME) $(BIN)/warden image build debian
	WARDEN_HOME=$(TEST_IMAGE_HOME) $(BIN)/warden kernel build honeypot

test: check test-artefacts
	WARDEN_TEST_IMAGE_HOME=$(TEST_IMAGE_HOME) $(BIN)/pytest -q $(PYTEST_ARGS)
	@scripts/check-leaks.sh

# The guest-free tests on three workers (pytest-xdist; many wait on sockets and timers, so a
# third worker still gains on two cores): 850 tests, 109 s on one process, 53-57 s on three.
# `make test` keeps one process: its guests would compete for the same two cores.
unit: setup
	$(BIN)/pytest -q -m "not guest" -n 3 --dist worksteal $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
