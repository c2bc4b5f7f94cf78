# jupyterhub-smart: the two commands are `make demo` and `make test`.
# Both work on a fresh machine: they create .venv, install the package with its
# test extras, and install the Node proxy locally under node_modules.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CHP    := node_modules/.bin/configurable-http-proxy
PYTEST_ARGS ?=

export PATH := $(CURDIR)/$(BIN):$(CURDIR)/node_modules/.bin:$(PATH)

.PHONY: demo test lint unit docs bench browser clean

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

## test: lint, then every test (unit, integration against real processes, end to end)
test: $(STAMP) $(CHP) lint browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## docs: build the documentation, warnings as errors
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

## bench: benchmarks against peers (not part of `make test`)
bench: $(STAMP) $(CHP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules site .pytest_cache .mypy_cache .ruff_cache
