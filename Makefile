# Stockcast: `make demo` runs the whole pipeline offline, `make test` runs lint and the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# checkov pins packages the main venv cannot share: the offline Bicep checks (tests/infra) get their own
INFRA_VENV := .venv-infra
INFRA_STAMP := $(INFRA_VENV)/.installed

.PHONY: setup lint format test test-fast demo up train predict status bench stop clean

setup: $(STAMP) $(INFRA_STAMP) node_modules/.installed

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(INFRA_STAMP): requirements-infra.txt
	test -x $(INFRA_VENV)/bin/python || $(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-infra.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# the suite on every core (pytest-xdist; each worker starts its own Azurite, MLflow store and ports)
WORKERS ?= auto
test: setup lint
	$(PY) -m pytest -n $(WORKERS)

# unit tests only: no local service, no pipeline, no Bicep
test-fast: setup
	$(PY) -m pytest -n $(WORKERS) -m "not integration and not e2e and not slow and not infra"

# ARGS passes options through, e.g. `make demo ARGS=--keep` or `make up ARGS="--schedule '0 */2 * * * *'"`
demo: setup
	$(PY) -m devhost demo $(ARGS)

up: setup
	$(PY) -m devhost up $(ARGS)

train: setup
	$(PY) -m devhost train

SYMBOL ?= AAPL
predict: setup
	$(PY) -m devhost predict $(SYMBOL)

status: setup
	$(PY) -m devhost status

bench: setup
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/score.py
	$(PY) benchmarks/predict.py
	$(PY) benchmarks/kafka.py

stop: setup
	$(PY) -m devhost stop

clean: stop
	rm -rf .local
