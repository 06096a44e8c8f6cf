# The two commands a newcomer needs: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export DBAAS_DATA_DIR ?= $(CURDIR)/var

.PHONY: run test setup lint services stop clean

run: setup
	$(PY) manage.py up

# Tests use their own data directory, pooler port, Redis db and host name, so they
# can run beside `make run`; they share its control-plane cluster (test database).
TEST_ENV := DBAAS_SERVICES_DIR=$(DBAAS_DATA_DIR) DBAAS_DATA_DIR=$(DBAAS_DATA_DIR)/test \
	DBAAS_REDIS_DB=15 DBAAS_PGBOUNCER_PORT=6532 DBAAS_HOST_NAME=testhost \
	DBAAS_RECONCILE_INTERVAL=2 DBAAS_DB_NAME=test_dbaas

test: setup lint services
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

setup:
	@./scripts/setup.sh

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

services:
	$(PY) -m dbaas.localservices start

stop:
	$(PY) -m dbaas.localservices stop

clean: stop
	rm -rf $(DBAAS_DATA_DIR)
