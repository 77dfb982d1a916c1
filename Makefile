# FluxMQ: the two set-up commands are `make run` and `make test` (as root on Debian).
# Every target installs what it needs; `make install` is idempotent and quick when nothing changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
SPEEDUPS_SRC := $(wildcard fluxmq/_speedups/*.pyx fluxmq/_speedups/*.pxd)
ARGS ?=

.PHONY: install run test soak lint clean peers bench bench-all microbench fmt

install: $(VENV)/.stamp-deps $(VENV)/.stamp-build

# The virtual environment and the Python dependencies (runtime + dev extras).
$(VENV)/.stamp-deps: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "python3 is required"; exit 1; }
	@$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || scripts/install-peers.sh python-venv
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e '.[dev]' --no-build-isolation 2>/dev/null || \
	  { $(PIP) install -q 'Cython>=3.0' setuptools wheel && $(PIP) install -q -e '.[dev]' --no-build-isolation; }
	@touch $@

# The Cython extensions, rebuilt in place when a .pyx/.pxd or setup.py changes.
$(VENV)/.stamp-build: $(SPEEDUPS_SRC) setup.py $(VENV)/.stamp-deps
	@command -v cc >/dev/null || scripts/install-peers.sh compiler
	$(PY) setup.py -q build_ext --inplace -j 2
	@touch $@

run: install
	$(VENV)/bin/fluxmq serve $(ARGS)

# System peers the tests talk to (mosquitto clients, ...), installed from Debian when missing.
peers:
	@scripts/install-peers.sh test

test: install peers
	$(PY) -m pytest -q -n 2 $(ARGS)

soak: install peers
	$(PY) -m pytest -q -m soak $(ARGS)

microbench: install
	$(PY) -m pytest -q -m benchmark -p no:xdist tests/micro $(ARGS)

# The side-by-side comparison with Mosquitto (docs/performance.md, first table).
bench: install
	@scripts/install-peers.sh bench
	$(PY) -m bench compare $(ARGS)

# Every benchmark of docs/performance.md: the comparison, persistent QoS 1 against Mosquitto
# with persistence, durable queues against RabbitMQ and NATS JetStream, and the CoAP bridge.
bench-all: bench
	$(PY) -m bench persist
	@scripts/install-peers.sh queue-bench
	$(PIP) install -q -e '.[bench]' --no-build-isolation
	$(PY) -m bench queue --reps 3
	$(PY) -m bench.coap --count 20000 --latency-count 1000

lint: install
	$(VENV)/bin/ruff check fluxmq tests bench
	$(VENV)/bin/ruff format --check fluxmq tests bench

fmt: install
	$(VENV)/bin/ruff format fluxmq tests bench
	$(VENV)/bin/ruff check --fix fluxmq tests bench

clean:
	rm -rf build dist *.egg-info $(VENV) .pytest_cache .hypothesis .ruff_cache
	find fluxmq -name '*.so' -delete -o -name '*.c' -path '*/_speedups/*' -delete
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
