# The two commands a newcomer needs: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export DBAAS_DATA_DIR ?= $(CURDIR)/var

.PHONY: run test test-fast setup setup-test lint services stop clean

run: setup
	$(PY) manage.py up

# Tests use their own data directory, pooler port, Redis db and host name (see
# tests/settings.py), so they can run beside `make run`; they share its
# control-plane cluster (test database). TEST_SLOT=1..4 gives a second session its
# own set, to run two at once.
TEST_SLOT ?= 0

test: setup-test lint services
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run
	DBAAS_TEST_SLOT=$(TEST_SLOT) $(PY) -m pytest $(PYTEST_ARGS)

# Seconds, not minutes: the tests that need no pooler, worker or tenant server.
test-fast: setup-test lint services
	DBAAS_TEST_SLOT=$(TEST_SLOT) $(PY) -m pytest -m "not platform and not browser" -q $(PYTEST_ARGS)

setup:
	@./scripts/setup.sh

setup-test:
	@./scripts/setup.sh test

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

services:
	$(PY) -m dbaas.localservices start

stop:
	$(PY) -m dbaas.localservices stop

clean: stop
	rm -rf $(DBAAS_DATA_DIR)
