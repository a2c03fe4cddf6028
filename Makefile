# churnsense: `make demo` and `make test` set themselves up; `make help` lists the rest.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.setup-stamp
# pip warns once per package about this machine's absent extra index folders; hide only that line.
PIP_NOISE := is ignored: it is neither a file nor a directory
DEMO_DIR ?= demo_out
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup demo test test-fast bench lint format serve clean postgres

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv: CPU torch first, then the project with dev and spark extras

# Re-runs only when the dependency list changes; torch goes first so nothing pulls CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	$(PY) -c "from importlib.metadata import version as v; assert v('torch').startswith('2.13.0'), v('torch')"
	$(PIP) install -e ".[dev,spark]" 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	$(PY) -c "import churnsense, features, training, models, serving, batch, store, monitoring, torch, mlflow, bentoml, transformers, pyspark"
	touch $(STAMP)

demo: setup ## generate data, validate, build features, train, promote, serve and batch-score it
	$(PY) -m churnsense.demo --out $(DEMO_DIR)

test: setup postgres ## run the whole test suite (unit, integration, real server, Spark, PostgreSQL)
	$(PY) -m pytest

test-fast: setup ## skip the slow tests
	$(PY) -m pytest -m "not slow"

# Full size (1M customers / ~22M events for features and batch): about half an hour on 2 cores.
# The serving benchmark needs a Bento with the real MiniLM: the one `make demo` builds under $(DEMO_DIR).
bench: setup ## run every benchmark (each prints ratios against yardsticks measured in the same run)
	$(PY) benchmarks/features.py
	$(PY) benchmarks/train_churn.py
	$(PY) benchmarks/quality.py
	$(PY) benchmarks/sentiment.py
	$(PY) benchmarks/aspects.py
	$(PY) benchmarks/batch.py
	$(MAKE) postgres
	$(PY) benchmarks/store.py
	@if [ -d $(DEMO_DIR)/bentoml/bentos/churnsense ]; then \
		BENTOML_HOME=$(abspath $(DEMO_DIR))/bentoml $(PY) benchmarks/serving.py; \
		BENTOML_HOME=$(abspath $(DEMO_DIR))/bentoml $(PY) benchmarks/store.py --serving $(DEMO_DIR)/data/spec.yaml; \
	else echo "benchmarks/serving.py and store.py --serving skipped: no Bento under $(DEMO_DIR)/bentoml (run make demo first)"; fi

# The store tests start a real PostgreSQL server from its binaries (tests/databases.py); install them if missing.
postgres: ## install the PostgreSQL server binaries (Debian package postgresql) when they are missing
	@if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
		echo "installing the Debian package postgresql (the store tests start a real server)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	fi

serve: setup ## serve the newest churnsense Bento on 127.0.0.1:3000 (after `churnsense build`)
	$(VENV)/bin/churnsense serve

lint: setup ## ruff lint and format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup ## ruff format and fix imports
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean: ## remove generated data, stores and the venv
	rm -rf $(VENV) $(DEMO_DIR) mlruns mlflow.db .pytest_cache
