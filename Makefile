# Everything a person types, installing what it needs on a fresh machine.
#   make demo    the main job on embedded defaults (see README)
#   make test    lint, types and the whole test suite (what CI runs)
#   make bench   benchmarks/: each target and its verdict, merged into benchmarks/results.json
#                (BENCH_ARGS="--strict" fails on a miss, "--quick consent" runs a subset smaller)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
SERVER_DIR := tests/fhir_server
SERVER_STAMP := $(SERVER_DIR)/node_modules/.installed
PROFILES_STAMP := profiles/node_modules/.installed

.PHONY: all install node demo test lint typecheck pytest bench profiles clean

all: test

$(PY_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[service,postgres,dev]'
	touch $@

install: $(PY_STAMP) node

$(SERVER_STAMP): $(SERVER_DIR)/package-lock.json
	cd $(SERVER_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(PROFILES_STAMP): profiles/package-lock.json
	cd profiles && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node: $(SERVER_STAMP) $(PROFILES_STAMP)

# FSH -> profiles/fsh-generated/resources (offline SUSHI; see docs/profiles.md).
# PROFILES_ARGS=--strict fails on SUSHI warnings too; --verbose prints SUSHI's whole log.
profiles: $(PROFILES_STAMP)
	cd profiles && node tools/build.mjs $(PROFILES_ARGS)

# The sync service, a worker and a synthetic clinic against the local FHIR server (see README).
# DEMO_ARGS="--base-url URL" uses another R4 server instead (it receives the demo's data).
demo: install
	$(BIN)/python examples/demo_sync.py $(DEMO_ARGS)

lint: $(PY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

typecheck: lint

pytest: install
	$(BIN)/pytest

test: lint pytest

bench: install
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(SERVER_DIR)/node_modules profiles/node_modules profiles/.fhir-cache .pytest_cache .mypy_cache .ruff_cache
