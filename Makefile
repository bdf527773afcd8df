# Two commands run everything: `make demo` (the main job) and `make test` (the suite).
# Each sets up its own virtual environment first; the CPU build of torch is installed
# before the project so that no multi-GB CUDA build is pulled.
PYTHON ?= python3.11
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint proto bench keys clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet --retries 1 --timeout 15 "torch==$(TORCH_VERSION)" --index-url $(TORCH_INDEX_URL)
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tamiyo-bus demo

# One torch thread per test process: on a small shared machine two threads per
# process make the torch-heavy tests several times slower.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

# ruff, mypy, and the import layers of .importlinter (tools/import_graph.py prints the graph).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

proto: $(STAMP)
	$(PY) tools/genproto.py

# Every benchmark, each ending with one JSON line (see docs/benchmarks.md).
bench: $(STAMP)
	$(PY) bench/bus.py --json
	$(PY) bench/crypto.py --json
	$(PY) bench/hostile.py --json
	$(PY) bench/step.py --json
	$(PY) bench/risk.py --json
	$(PY) bench/reports.py --json
	$(PY) bench/fastpath.py --json
	$(PY) bench/overhead.py --json
	$(PY) bench/sim.py --json
	$(PY) bench/learn.py --json
	$(PY) bench/learner.py --json
	$(PY) bench/control.py --json
	$(PY) bench/soak.py --short --json
	$(PY) bench/impala.py --json
	$(PY) bench/impala_returns.py --json

# One key pair per role for docker-compose (ops/keys/README.md): private keys under
# $(KEYS_DIR)/private, public keys under $(KEYS_DIR)/trusted.
KEYS_DIR ?= ops/keys
KEY_ROLES := tamiyo tolaria kasmina simic weatherlight
keys: $(STAMP)
	@for role in $(KEY_ROLES); do \
	  $(VENV)/bin/tamiyo-bus keys generate --role $$role --out $(KEYS_DIR)/private \
	    --public-out $(KEYS_DIR)/trusted || exit 1; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
