# The verbs a newcomer types. `make test` is the whole pipeline (what CI runs); the other targets are its
# steps, each usable alone and each bringing up what it needs first (tools, servers, the build).
#
#   make setup          install the tools (.venv, .sam-venv, FerretDB, Lambda emulator, MariaDB)
#   make up-services    start FerretDB, MariaDB and moto (local/services.sh up)
#   make down           stop the local stack and the servers this checkout started
#   make lint           ruff check, ruff format --check, mypy
#   make test           everything below, then a summary (KEEP_SERVICES=1 leaves the servers running)
#   make test-unit | test-integration | test-e2e
#   make build          sam validate --lint, then sam build
#   make up | demo | bench
#
# Machine-wide caches (Go binaries) live in $(BTC_CACHE_DIR); data, logs and pid files in .local-data/.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

export BTC_CACHE_DIR ?= $(HOME)/.cache/btc
# The emulator and FerretDB binaries are found on PATH by the tests and the local stack.
export PATH := $(BTC_CACHE_DIR)/bin:$(PATH)

VENV := .venv
PYTHON := $(VENV)/bin/python
PYTEST := $(PYTHON) -m pytest
SAM := .sam-venv/bin/sam
# SAM quiet and offline: no telemetry, no instance metadata lookups, dummy credentials, a region.
SAM_ENV := SAM_CLI_TELEMETRY=0 AWS_EC2_METADATA_DISABLED=true AWS_ACCESS_KEY_ID=local \
	AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1

# NODEPS=1 (used by scripts/test.sh, which runs the prerequisites as steps of their own) skips them.
DEP_VENV := $(if $(NODEPS),,setup-venv)
DEP_SETUP := $(if $(NODEPS),,setup)
DEP_SAM := $(if $(NODEPS),,setup-sam)
DEP_SERVICES := $(if $(NODEPS),,up-services)
DEP_VALIDATE := $(if $(NODEPS),,validate)
DEP_BUILD := $(if $(NODEPS),,build)

.PHONY: help setup setup-venv setup-sam up-services down status lint test test-unit test-integration \
	test-e2e validate build up demo bench cli

help:
	@sed -n '3,12p' Makefile | sed 's/^# \{0,1\}//'

setup:
	@bash scripts/setup.sh

setup-venv:
	@bash scripts/setup.sh venv

setup-sam:
	@bash scripts/setup.sh sam

up-services:
	@bash local/services.sh up

status:
	@bash local/services.sh status

down:
	@if [[ -f local/stack.py && -x $(PYTHON) ]]; then $(PYTHON) local/stack.py down || true; fi
	@bash local/services.sh down

lint: $(DEP_VENV)
	@failed=(); \
	echo "--- ruff check"; $(VENV)/bin/ruff check . || failed+=("ruff check"); \
	echo "--- ruff format --check"; $(VENV)/bin/ruff format --check . || failed+=("ruff format"); \
	echo "--- mypy"; $(VENV)/bin/mypy || failed+=(mypy); \
	if (( $${#failed[@]} )); then echo "lint failed: $$(IFS=/; echo "$${failed[*]}")"; exit 1; fi

test:
	@MAKE="$(MAKE)" bash scripts/test.sh

test-unit: $(DEP_VENV)
	$(PYTEST) tests/unit

test-integration: $(DEP_SERVICES)
	$(PYTEST) tests/integration

test-e2e: $(DEP_SERVICES) $(DEP_BUILD)
	$(PYTEST) tests/e2e

validate: $(DEP_SAM)
	$(SAM_ENV) $(SAM) validate --lint

build: $(DEP_SAM) $(DEP_VALIDATE)
	$(SAM_ENV) $(SAM) build --cached --parallel

# The local stack needs every tool (the emulator too), not only the venv.
up: $(DEP_SETUP) $(DEP_BUILD)
	$(PYTHON) local/stack.py up

demo: up
	$(PYTHON) local/demo.py

bench: $(DEP_SERVICES) $(DEP_BUILD)
	$(PYTHON) bench/run.py

# The operator CLI on the local stack's settings, e.g. make cli ARGS="show 1001"
cli: $(DEP_VENV)
	@set -a && source local/defaults.env && set +a && PYTHONPATH=layers/shared $(PYTHON) -m bytemark_cache $(ARGS)
