# Stockcast: `make demo` runs the whole pipeline offline, `make test` runs lint and the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup lint format test demo up train predict bench stop clean

setup: $(STAMP) node_modules/.installed

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
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

test: setup lint
	$(PY) -m pytest

demo: setup
	$(PY) -m devhost demo

up: setup
	$(PY) -m devhost up

train: setup
	$(PY) -m devhost train

bench: setup
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/score.py
	$(PY) benchmarks/predict.py

stop: setup
	$(PY) -m devhost stop

clean: stop
	rm -rf .local
