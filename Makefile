# The two commands a newcomer needs: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export DBAAS_DATA_DIR ?= $(CURDIR)/var

.PHONY: run test test-fast setup setup-test lint services stop clean

run: setup
	$(PY) manage.py up

# Tests use their own data directory, pooler port, Redis db and host name, so they
# can run beside `make run`; they share its control-plane cluster (test database).
# TEST_SLOT=1..4 gives a second session its own set, to run two at once.
TEST_SLOT ?= 0
TEST_SUFFIX := $(if $(filter 0,$(TEST_SLOT)),,$(TEST_SLOT))
TEST_ENV := DBAAS_SERVICES_DIR=$(DBAAS_DATA_DIR) DBAAS_DATA_DIR=$(DBAAS_DATA_DIR)/test$(TEST_SUFFIX) \
	DBAAS_REDIS_DB=$(shell echo $$((15 - $(TEST_SLOT)))) \
	DBAAS_PGBOUNCER_PORT=$(shell echo $$((6532 + $(TEST_SLOT)))) \
	DBAAS_HOST_NAME=testhost$(TEST_SUFFIX) DBAAS_TEST_SLOT=$(TEST_SLOT) \
	DBAAS_RECONCILE_INTERVAL=2 DBAAS_DB_NAME=test_dbaas$(TEST_SUFFIX) \
	DBAAS_TEST_DB_NAME=test_dbaas$(TEST_SUFFIX) DBAAS_SIGNUPS_PER_IP_HOUR=100000 \
	DBAAS_POOLER_CONNECTIONS_PER_ADDRESS=200 DBAAS_LOGIN_FAILURES_PER_IP=100000 \
	DBAAS_POOLER_LOGIN_FAILURES_PER_ADDRESS=10 DBAAS_POOLER_LOGIN_GUARD_EXEMPT=127.0.0.1

test: setup-test lint services
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

# Seconds, not minutes: the tests that need no pooler, worker or tenant server.
test-fast: setup-test lint services
	$(TEST_ENV) $(PY) -m pytest -m "not platform" -q $(PYTEST_ARGS)

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
