# Everything a person types, installing what it needs on a fresh machine.
#   make demo    the main job on embedded defaults (see README); make demo-console keeps it running
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
AXE_DIR := tests/service/console/axe
AXE_STAMP := $(AXE_DIR)/node_modules/.installed
# The console's browser tests use Debian's Chromium and its driver, never a downloaded browser.
BROWSER_PACKAGES := chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all install node browser demo demo-console test lint typecheck pytest bench profiles clean

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

# axe-core, injected into the console's pages by its browser tests.
$(AXE_STAMP): $(AXE_DIR)/package-lock.json
	cd $(AXE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node: $(SERVER_STAMP) $(PROFILES_STAMP) $(AXE_STAMP)

# Debian's Chromium and chromedriver for tests/service/console (quick when installed; the package
# lists are refreshed only when the install fails without it).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  echo "chromium and chromedriver are installed"; \
	else \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -q $(BROWSER_PACKAGES) \
	  || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $(BROWSER_PACKAGES); }; \
	fi

# FSH -> profiles/fsh-generated/resources (offline SUSHI; see docs/profiles.md).
# PROFILES_ARGS=--strict fails on SUSHI warnings too; --verbose prints SUSHI's whole log.
profiles: $(PROFILES_STAMP)
	cd profiles && node tools/build.mjs $(PROFILES_ARGS)

# The sync service, a worker and a synthetic clinic against the local FHIR server (see README).
# DEMO_ARGS="--base-url URL" uses another R4 server instead (it receives the demo's data).
demo: install
	$(BIN)/python examples/demo_sync.py $(DEMO_ARGS)

# The same demo, then the service keeps running with the clinic console until Ctrl-C.
demo-console: install
	$(BIN)/python examples/demo_sync.py --console $(DEMO_ARGS)

lint: $(PY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

typecheck: lint

pytest: install browser
	$(BIN)/pytest

test: lint pytest

bench: install
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(SERVER_DIR)/node_modules profiles/node_modules $(AXE_DIR)/node_modules test-artifacts profiles/.fhir-cache .pytest_cache .mypy_cache .ruff_cache
