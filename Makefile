# The verbs a newcomer types; `make help` lists them (generated from the `## ` notes below).
# `make test` is the whole pipeline (what CI runs); the other targets are its steps, each usable alone and
# each bringing up what it needs first (tools, servers, the build).
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
UV := $(VENV)/bin/uv
SAM := .sam-venv/bin/sam
# `sam build` needs the runtime's Python (python3.13) on PATH; scripts/setup.sh finds it.
RUNTIME_PYTHON_DIR = $(shell source local/services/common.sh && python="$$(btc_find_python 2>/dev/null)" && dirname "$$python")
# SAM quiet and offline: no telemetry, no instance metadata lookups, dummy credentials, a region.
SAM_ENV = PATH="$(if $(RUNTIME_PYTHON_DIR),$(RUNTIME_PYTHON_DIR):)$$PATH" SAM_CLI_TELEMETRY=0 AWS_EC2_METADATA_DISABLED=true \
	AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
# The layer lock is resolved for Lambda's platform: python3.13 on Amazon Linux 2023 (glibc 2.34). Change
# with the template's architecture (x86_64 → aarch64-manylinux_2_28 for arm64).
LAMBDA_PLATFORM := x86_64-manylinux_2_28
LOCK := $(UV) pip compile --quiet --generate-hashes --no-header --python-version 3.13 $(if $(UPGRADE),--upgrade,)

# NODEPS=1 (used by scripts/test.sh, which runs the prerequisites as steps of their own) skips them.
DEP_VENV := $(if $(NODEPS),,setup-venv)
DEP_SETUP := $(if $(NODEPS),,setup)
DEP_SAM := $(if $(NODEPS),,setup-sam)
DEP_SERVICES := $(if $(NODEPS),,up-services)
DEP_VALIDATE := $(if $(NODEPS),,validate)
DEP_BUILD := $(if $(NODEPS),,build)

ENV ?= dev
FUNCTION ?= OnDemandCheckFunction
EVENT ?= events/apigw_get_tickets.json

.PHONY: help setup setup-venv setup-sam up-services down status lint format test test-unit \
	test-integration test-e2e soak validate build up demo bench bench-day cli lock clean deploy invoke

help: ## this list
	@echo "usage: make <target>   (the two commands for a fresh machine: make demo, make test)"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "} {printf "  %-18s %s\n", $$1, $$2}'

setup: ## install every tool: Python 3.13, .venv, .sam-venv, FerretDB, the Lambda emulator, MariaDB
	@bash scripts/setup.sh

setup-venv: ## install only .venv (the app, its tests and the bytemark-cache CLI) from the lock
	@bash scripts/setup.sh venv

setup-sam:
	@bash scripts/setup.sh sam

up-services: ## start FerretDB, MariaDB and moto (idempotent)
	@bash local/services.sh up

status: ## what is running
	@bash local/services.sh status

down: ## stop the local stack and the servers this checkout started
	@if [[ -f local/stack.py && -x $(PYTHON) ]]; then $(PYTHON) local/stack.py down || true; fi
	@bash local/services.sh down

lint: $(DEP_VENV) ## ruff check, ruff format --check, mypy strict
	@failed=(); \
	echo "--- ruff check"; $(VENV)/bin/ruff check . || failed+=("ruff check"); \
	echo "--- ruff format --check"; $(VENV)/bin/ruff format --check . || failed+=("ruff format"); \
	echo "--- mypy"; $(VENV)/bin/mypy || failed+=(mypy); \
	if (( $${#failed[@]} )); then echo "lint failed: $$(IFS=/; echo "$${failed[*]}")"; exit 1; fi

format: $(DEP_VENV) ## rewrite the code in the house format (ruff format, ruff check --fix)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: ## everything: install, start servers, lint, unit, sam validate/build, integration, e2e, summary
	@MAKE="$(MAKE)" bash scripts/test.sh

test-unit: $(DEP_VENV) ## unit tests (in-memory fakes, sockets disabled)
	$(PYTEST) tests/unit

test-integration: $(DEP_SERVICES) ## integration tests against the real local servers
	$(PYTEST) tests/integration

test-e2e: $(DEP_SERVICES) $(DEP_BUILD) ## end to end: the sam build artifacts through the Lambda runtime emulator
	$(PYTEST) tests/e2e

soak: $(DEP_SERVICES) ## the bounded soak with injected faults (minutes; not part of make test)
	$(PYTHON) -m pytest tests/soak -q

validate: $(DEP_SAM) ## sam validate --lint
	$(SAM_ENV) $(SAM) validate --lint

build: $(DEP_SAM) $(DEP_VALIDATE) ## sam validate, then sam build (layer from its lock)
	$(SAM_ENV) $(SAM) build --cached --parallel

# The local stack needs every tool (the emulator too), not only the venv.
up: $(DEP_SETUP) $(DEP_BUILD) ## run the built bundle locally (gateway on :3000, SQS poller, schedules)
	$(PYTHON) local/stack.py up

demo: up ## the main job: the local stack and a walk through everything it does
	$(PYTHON) local/demo.py

bench: $(DEP_SERVICES) $(DEP_BUILD) ## side-by-side benchmarks on the real local servers
	$(PYTHON) bench/run.py

bench-day: $(DEP_VENV) ## the simulated day: Bytemark calls per user-day under five policies (+ plot)
	$(PYTHON) bench/day.py

invoke: $(DEP_SERVICES) $(DEP_BUILD) ## one built function with an event: make invoke FUNCTION=… EVENT=events/…
	$(PYTHON) local/emulator.py $(FUNCTION) $(EVENT)

cli: $(DEP_VENV) ## the operator CLI on the local settings: make cli ARGS="show 1001"
	@source local/services/common.sh && btc_load_env && $(VENV)/bin/bytemark-cache $(ARGS)

lock: $(DEP_VENV) ## re-resolve the hashed lock files (UPGRADE=1 takes the newest releases)
	$(LOCK) --python-platform $(LAMBDA_PLATFORM) -o layers/shared/requirements.txt layers/shared/requirements.in
	cd requirements && ../$(LOCK) --python-platform x86_64-unknown-linux-gnu -o dev.txt dev.in
	cd requirements && ../$(LOCK) --python-platform x86_64-unknown-linux-gnu -o sam.txt sam.in
	@echo "locks written; review 'git diff --stat', then make test"

deploy: build ## sam deploy to an environment of samconfig.toml: make deploy ENV=dev|prod
	$(SAM_ENV) $(SAM) deploy --config-env $(ENV)

clean: down ## remove build output, caches and local data (not the venvs or machine-wide tools)
	rm -rf .aws-sam .local-data .mypy_cache .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -not -path './.venv/*' -not -path './.sam-venv/*' -prune -exec rm -rf {} +
