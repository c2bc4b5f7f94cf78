# jupyterhub-smart: the two commands are `make demo` and `make test`.
# Both work on a fresh machine: they create .venv, install the package with its
# test extras, and install the Node proxy locally under node_modules.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CHP    := node_modules/.bin/configurable-http-proxy
PYTEST_ARGS ?=
# The tests mostly wait on the processes they start: two workers take about 40 % off on two cores.
XDIST ?= -n 2 --dist loadfile
# The older JupyterHub line we support (what Zero to JupyterHub's hub image ships),
# overlaid on the venv with PYTHONPATH for a second pass of the hub suite.
JH_PREVIOUS     := 5.5.0
JH_PREVIOUS_DIR := $(VENV)/jupyterhub-$(JH_PREVIOUS)

export PATH := $(CURDIR)/$(BIN):$(CURDIR)/node_modules/.bin:$(PATH)
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test test-jupyterhub5 lint unit docs bench browser rsyslog clean postgresql test-postgresql

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(CHP): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $(CHP)

## demo: run the sandbox EHR and a SMART-enabled JupyterHub; open the printed URL
demo: $(STAMP) $(CHP)
	$(BIN)/jupyterhub-smart demo

## lint: ruff and mypy, part of `make test`
lint: $(STAMP)
	$(BIN)/ruff check jupyterhub_smart tests bench
	$(BIN)/ruff format --check jupyterhub_smart tests bench
	$(BIN)/mypy

## browser: Debian's chromium for the end-to-end test (installed with apt when root)
browser:
	@bash .ci/install-chromium

## rsyslog: Debian's rsyslog + rsyslog-gnutls for the ATNA syslog sink tests (apt when root)
rsyslog:
	@bash .ci/install-rsyslog

## test: lint, docs, every test (unit, integration against real processes, end to end),
## then the hub suite again on JupyterHub 5.5 and PostgreSQL; each pass in two pytest-xdist
## workers, whole test files to a worker (module fixtures start once)
test: $(STAMP) $(CHP) $(VENV)/.installed-spark lint docs browser rsyslog postgresql
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-jupyterhub5

# pyspark (~450 MB) only for the test that Spark reads a bulk export: `make test` installs it once.
$(VENV)/.installed-spark: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,spark]'
	touch $@

$(JH_PREVIOUS_DIR)/.installed: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(JH_PREVIOUS_DIR) jupyterhub==$(JH_PREVIOUS)
	touch $@

## test-jupyterhub5: the hub suite on JupyterHub 5.5 and PostgreSQL, what Zero to JupyterHub
## deployments run (part of `make test`; the first pass is JupyterHub 6 on SQLite). Tests marked
## one_pass stay in the first pass only: the authenticator's and the test harness's own checks,
## the same on any JupyterHub and database, and the SQLite restarts (docs/production.md).
test-jupyterhub5: $(STAMP) $(CHP) $(JH_PREVIOUS_DIR)/.installed postgresql
	PYTHONPATH=$(CURDIR)/$(JH_PREVIOUS_DIR) SMART_EXPECT_JUPYTERHUB=$(JH_PREVIOUS) SMART_TEST_DB=postgresql \
		$(BIN)/python -m pytest $(XDIST) -m "not one_pass" $(HUB_SUITE) $(PYTEST_ARGS)

# PostgreSQL: the tests start their own servers (tests/pg_process.py) from Debian's package.
# The hub suite: tests/hub and the audit tests that run a hub.
HUB_SUITE := tests/hub tests/audit/test_hub_events.py tests/audit/test_handlers.py tests/audit/test_trail_e2e.py

## postgresql: Debian's postgresql for the hub tests on PostgreSQL (apt-get install when missing)
postgresql:
	@bash .ci/install-postgresql

## test-postgresql: the hub suite on the current JupyterHub and PostgreSQL (not in `make test`)
test-postgresql: $(STAMP) $(CHP) postgresql
	SMART_TEST_DB=postgresql $(BIN)/python -m pytest $(HUB_SUITE) $(PYTEST_ARGS)

## docs: build the documentation, warnings as errors
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

$(VENV)/.installed-bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

## bench: benchmarks against peers (not part of `make test`)
bench: $(STAMP) $(CHP) $(VENV)/.installed-bench
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules site .pytest_cache .mypy_cache .ruff_cache
