# certctl developer commands. Two commands set everything up: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv lives in its own tool venv so `uv sync` never uninstalls it from the project venv.
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
# Debian packages the tests drive as real clients and servers.
SYSTEM_PACKAGES := openssl curl nginx-light openjdk-17-jre-headless jq unzip python3-venv prometheus postgresql golang-cfssl wrk sqlite3 lego bind9
SYSTEM_COMMANDS := openssl curl nginx keytool jq unzip prometheus promtool cfssl wrk sqlite3 lego /usr/sbin/named /usr/lib/postgresql/15/bin/initdb

.PHONY: help run demo test test-fast lint bench fuzz system-deps clean

help:
	@echo "make run    - set up .venv and start certctl serve (HTTPS, SQLite in ./certctl-data)"
	@echo "make demo   - offline PKI demo: a CA, certificates and an HTTP bundle in ./certctl-demo"
	@echo "make test   - lint + the whole test suite (installs the system tools it drives)"
	@echo "make test-fast - tests/unit only, two workers (installs nothing, no lint)"
	@echo "make lint   - ruff + mypy (strict on src/)"
	@echo "make bench  - benchmarks with ratios against references measured in the same run"
	@echo "make fuzz   - coverage-guided parser fuzzing (atheris), FUZZ_SECONDS (60) per target"

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

# Bytecode for the dependencies and for src/: where none is written at import
# (PYTHONDONTWRITEBYTECODE=1, as on our build machine, or a read-only image) every process
# compiled SQLAlchemy, Alembic, Pydantic, Typer and certctl from source: 3.9 s of CPU to
# import the server here against 1.3 s, paid by every `certctl serve` and test server. A
# .pyc older than its source is ignored, so editing src/ stays safe.
$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --quiet --compile-bytecode
	$(BIN)/python -m compileall -q src >/dev/null
	@touch $@

system-deps:
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages (missing:$$missing)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "error: need root or sudo to apt-get install $(SYSTEM_PACKAGES)" >&2; exit 1; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  ($$SUDO systemctl disable --now named 2>/dev/null || true); \
	fi

# The server in the foreground: HTTPS on 127.0.0.1:8443, data in ./certctl-data (SQLite).
# exec: the server is make's own child, so the SIGTERM make passes on reaches it (not a shell
# that would die and leave it running); it exits 0 on SIGTERM or Ctrl-C, and make says nothing.
run: $(VENV)/.synced
	exec $(BIN)/certctl serve  # data in ./certctl-data unless CERTCTL_DATA_DIR or CERTCTL_CONFIG says otherwise

demo: $(VENV)/.synced
	@bash scripts/demo.sh

lint: $(VENV)/.synced
	$(BIN)/ruff check src tests bench fuzz
	$(BIN)/ruff format --check src tests bench fuzz
	$(BIN)/mypy

# Tests that run in-process, start short-lived programs or start their own servers on free
# loopback ports (e2e, services, kube) share both cores (pytest-xdist); the rest load servers
# or time them (soak, crash, faults, benchmark) and run alone, one at a time. Both halves
# always run; the target fails if either did.
# tests/reliability runs whole in one worker (tests/conftest.py's scheduler): its
# secret-hygiene scan reads a ledger the other tests of the directory fill in that process.
# The files of soak and faults named here time nothing and load nothing: in-process replicas
# (test_takeover) and PostgreSQL start/KEK-rotation refusals; tests/bench runs the
# benchmarks' --quick mode, which asserts no speed.
PARALLEL_TESTS := tests/unit tests/api tests/integration tests/helm tests/e2e tests/services \
	tests/kube tests/reliability tests/bench tests/soak/test_takeover.py \
	tests/faults/test_pg_start.py tests/faults/test_pg_kek_rotation.py
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider
# Three workers on two cores: the parallel tests wait on the servers and programs they start,
# and two workers kept 1.4 of the 2 cores busy (260-281 s); three keep 1.7 busy (219 s).

test: system-deps $(VENV)/.synced lint
	@status=0; \
	$(PYTEST) -n 3 $(PARALLEL_TESTS) || status=$$?; \
	$(PYTEST) $(addprefix --ignore=,$(PARALLEL_TESTS)) || status=$$?; \
	exit $$status

test-fast: $(VENV)/.synced
	$(PYTEST) -n 2 tests/unit

# References: cfssl, nginx, wrk (system-deps); granian in bench/.venv-granian (made by run.py).
bench: system-deps $(VENV)/.synced
	$(BIN)/python bench/run.py

# atheris (libFuzzer) over every parser of fuzz/targets.py, FUZZ_SECONDS each; corpora grow in
# fuzz/corpus/, a finding stops its target and is saved as fuzz/findings/<target>-crash-*.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := load_material load_csr parse_dn san_parse parse_duration parse_instances \
	parse_service_documents load_config
fuzz: $(VENV)/.synced
	@mkdir -p fuzz/findings; failed=""; \
	for t in $(FUZZ_TARGETS); do \
	  if $(BIN)/python fuzz/run.py $$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
	      -artifact_prefix=fuzz/findings/$$t- fuzz/corpus/$$t >fuzz/findings/$$t.log 2>&1; then \
	    echo "fuzz $$t: $$(grep -E '^Done' fuzz/findings/$$t.log)"; \
	  else \
	    echo "fuzz $$t: FINDING (see fuzz/findings/$$t.log)"; \
	    grep -A12 'Uncaught Python exception' fuzz/findings/$$t.log; failed="$$failed $$t"; \
	  fi; \
	done; \
	if [ -n "$$failed" ]; then echo "findings in:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache certctl-demo
