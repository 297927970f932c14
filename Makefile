# Two commands for a new user: `make run` and `make test`. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080
GATEWAY_CONFIG ?= deploy/gateway.example.toml
PYTEST_ARGS ?=
SIM_PORT ?= 9090

MIN_VENV := .venv-min
MIN_TESTS ?= tests/gateway tests/normalizer tests/pool tests/statestore tests/deploy tests/e2e/test_ctx_pool.py tests/e2e/test_passthrough.py tests/e2e/test_operability.py

.PHONY: run test test-min lint fmt typecheck pytest sim system-deps venv bench bench-quick bench-litellm-deps cluster codex-deps clean check-config

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

## system-deps: redis-server, nginx and promtool (Debian's prometheus) when missing (the
## suite starts its own redis/nginx; promtool checks the shipped alert rules).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

run: $(STAMP)
	GATEWAY_CONFIG=$(GATEWAY_CONFIG) $(PY) -m gateway --config $(GATEWAY_CONFIG) --host $(HOST) --port $(PORT)

## check-config: validate GATEWAY_CONFIG (and its *_env secrets) without starting.
check-config: $(STAMP)
	$(PY) -m gateway --config $(GATEWAY_CONFIG) --check-config

sim: $(STAMP)
	$(PY) -m sim --host $(HOST) --port $(SIM_PORT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) scripts/check_imports.py
	$(PY) scripts/check_sizes.py

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

## codex-deps: the pinned Codex CLI for the real-client tests (npm; nodejs via apt-get when missing).
codex-deps:
	@bash scripts/install-codex.sh >/dev/null

pytest: $(STAMP) system-deps codex-deps
	$(PY) -m pytest -n 2 --cov=normalizer --cov=gateway/forward --cov-branch --cov-report=term $(PYTEST_ARGS)

## test: the normalizer and the turn loop (gateway/forward) are held to a branch-coverage floor.
test: $(STAMP) system-deps lint typecheck pytest
	$(PY) -m coverage report --include='normalizer/*' --fail-under=95
	$(PY) -m coverage report --include='gateway/forward/*' --fail-under=90

## test-min: the runtime dependency floors of pyproject.toml, installed exactly, under the
## tests that exercise them (a separate venv, so the normal one keeps current versions).
test-min: system-deps
	@test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(PYTHON) deploy/floors.py pyproject.toml > $(MIN_VENV)/floors.txt
	$(MIN_VENV)/bin/python -m pip install -q -c $(MIN_VENV)/floors.txt -e '.[test]'
	$(MIN_VENV)/bin/python -m pip list --format=freeze | grep -i -E "^($$(cut -d= -f1 $(MIN_VENV)/floors.txt | sed 's/[-_]/[-_]/g' | paste -sd'|'))=="
	$(MIN_VENV)/bin/python -m pytest -n 2 -p no:cacheprovider $(MIN_TESTS)

bench: $(STAMP)
	$(PY) -m bench --full

bench-quick: $(STAMP)
	$(PY) -m bench --quick

## bench-litellm-deps: LiteLLM's proxy, the bench's peer column, in a venv of its own so the
## product's dependencies stay as they are (`make bench` measures it when the venv exists;
## BENCH_LITELLM=1 makes it install it first).
LITELLM_VENV := .venv-litellm
LITELLM_PACKAGE ?= litellm[proxy]==1.106.2
bench-litellm-deps:
	@test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(LITELLM_VENV)/bin/python -m pip install -q '$(LITELLM_PACKAGE)'

cluster: $(STAMP) system-deps
	bash deploy/local-cluster.sh

clean:
	rm -rf $(VENV) $(MIN_VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .cache
