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

.PHONY: run test lint fmt typecheck pytest sim system-deps venv bench bench-quick cluster codex-deps clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

## system-deps: redis-server and nginx from Debian when missing (the suite starts its own instances).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

run: $(STAMP)
	GATEWAY_CONFIG=$(GATEWAY_CONFIG) $(PY) -m gateway --config $(GATEWAY_CONFIG) --host $(HOST) --port $(PORT)

sim: $(STAMP)
	$(PY) -m sim --host $(HOST) --port $(SIM_PORT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) scripts/check_imports.py

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

## codex-deps: the pinned Codex CLI for the real-client tests (npm; nodejs via apt-get when missing).
codex-deps:
	@bash scripts/install-codex.sh >/dev/null

pytest: $(STAMP) system-deps codex-deps
	$(PY) -m pytest -n 2 --cov=normalizer --cov-branch --cov-report=term $(PYTEST_ARGS)

test: $(STAMP) system-deps lint typecheck pytest
	$(PY) -m coverage report --include='normalizer/*' --fail-under=95

bench: $(STAMP)
	$(PY) -m bench --full

bench-quick: $(STAMP)
	$(PY) -m bench --quick

cluster: $(STAMP) system-deps
	bash deploy/local-cluster.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .cache
