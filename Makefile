# certctl developer commands. Two commands set everything up: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv lives in its own tool venv so `uv sync` never uninstalls it from the project venv.
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
# Debian packages the tests drive as real clients and servers.
SYSTEM_PACKAGES := openssl curl nginx-light openjdk-17-jre-headless jq unzip python3-venv prometheus postgresql golang-cfssl
SYSTEM_COMMANDS := openssl curl nginx keytool jq unzip prometheus promtool cfssl /usr/lib/postgresql/15/bin/initdb

.PHONY: help run demo test test-fast lint bench system-deps clean

help:
	@echo "make run    - set up .venv and start certctl serve (HTTPS, SQLite in ./certctl-data)"
	@echo "make demo   - offline PKI demo: a CA, certificates and an HTTP bundle in ./certctl-demo"
	@echo "make test   - lint + the whole test suite (installs the system tools it drives)"
	@echo "make lint   - ruff + mypy (strict on src/)"
	@echo "make bench  - benchmarks with ratios against references measured in the same run"

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --quiet
	@touch $@

system-deps:
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages (missing:$$missing)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "error: need root or sudo to apt-get install $(SYSTEM_PACKAGES)" >&2; exit 1; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi

# The server in the foreground: HTTPS on 127.0.0.1:8443, data in ./certctl-data (SQLite).
run: $(VENV)/.synced
	$(BIN)/certctl serve --data-dir certctl-data

demo: $(VENV)/.synced
	@bash scripts/demo.sh

lint: $(VENV)/.synced
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: system-deps $(VENV)/.synced lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: $(VENV)/.synced
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

bench: $(VENV)/.synced
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache certctl-demo
