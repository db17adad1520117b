# `make demo` runs the base-to-new benchmark on the built-in world; `make test` runs every test,
# `make test-fast` the unit tier (about a minute: no end-to-end runs, pytest -m "not slow").
# Both create .venv on first use. The scripts themselves use whatever Python is active.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1
# Sweep worker processes for the demo (one thread each); the numbers do not depend on it. Every core
# this process may use: nproc alone would answer OMP_NUM_THREADS (1 when exported, as here).
JOBS ?= $(shell env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1)

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" tests

demo: $(VENV)/.installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" JOBS=$(JOBS) bash scripts/base2new.sh

.PHONY: venv test test-fast demo
