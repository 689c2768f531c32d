# Set-up, run, test and benchmark the platform. `make run` and `make test` are all a fresh
# Debian 12 machine with Python 3.11 and make needs (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run cluster test test-postgresql bench reliability lint clean install uninstall

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml setup.py src/openhosting/storage/_xts.c \
		scripts/install-system-packages
	./scripts/install-system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

run: setup
	$(BIN)/openhostingd $(ARGS)

# A cluster on this machine (root: network namespaces): PostgreSQL, three host agents each in
# a namespace cabled to a fabric bridge, one API daemon on loopback; Ctrl-C removes it all.
# ARGS='--driver fake' runs the agents over the fake hypervisor (docs/cluster.md).
cluster: setup
	./scripts/cluster $(ARGS)

# Three workers (pytest-xdist) on two cores: much of the suite waits on QEMU, dnsmasq, the
# disk and timers rather than computing, and two workers left a quarter of the CPU idle
# (2,184 tests: 24 min 39 s with two, 15 min 36 s with three, the same tests' seconds summing
# to 2,476 and 2,667). Tests go to whichever worker is free, guests' tests too: up to three
# TCG guests may boot at once, about twice as slow as alone, which the guests' timeouts
# allow for. `worksteal` evens the end of the run: an idle worker takes half of what another
# has queued. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 3
PYTEST_PARALLEL = -n $(TEST_WORKERS) $(if $(filter 0,$(TEST_WORKERS)),,--dist worksteal)
test: lint
	$(BIN)/pytest $(PYTEST_PARALLEL) $(ARGS)

# The API tests once more with the platform's database on a PostgreSQL the tests start
# (docs/cluster.md, 'Testing on PostgreSQL'); CI runs it after `make test`.
test-postgresql: setup
	$(BIN)/pytest $(PYTEST_PARALLEL) tests/api --store postgresql $(ARGS)

bench: setup
	$(BIN)/python -m bench $(ARGS)

# The fault campaigns (docs/reliability.md): real daemons, QEMU and files, under 10 minutes;
# not part of `make test`. ARGS='--seed N' replays a run, ARGS='crash' runs one campaign.
reliability: setup
	$(BIN)/python -m bench.reliability $(ARGS)

lint: setup
	$(BIN)/ruff check src tests bench testbed
	$(BIN)/ruff format --check src tests bench testbed
	$(BIN)/mypy

clean:
	rm -rf $(VENV)

# Install on this host as a service (docs/operating.md); DESTDIR stages it, PREFIX moves it.
PREFIX ?= /usr/local
install:
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" ./scripts/install

uninstall:
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" ./scripts/uninstall
