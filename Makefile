# Two commands do all set-up on a fresh machine:
#   make test   creates .venv, builds pcmekit, runs the test suite
#   make demo   creates .venv, builds pcmekit, runs the benchmark demo
# PCMEKIT_CUDA=AUTO|ON|OFF selects the CUDA back end (tests here run the CPU path, so OFF).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PCMEKIT_CUDA ?= OFF
PYTEST_ARGS ?=
DEMO_OUT ?= results/demo

.PHONY: all env build test typecheck demo bench cuda-build clean

all: test

env: $(VENV)/.deps-stamp

$(VENV)/.deps-stamp: scripts/requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r scripts/requirements-dev.txt
	touch $@

# Non-editable install from a cached build folder (build/): rebuilds are incremental, and the
# tests import the installed package, so a file missing from the wheel is caught.
build: env
	PCMEKIT_CUDA=$(PCMEKIT_CUDA) $(PY) -m pip install --quiet --no-build-isolation --no-deps .

test: build
	$(PY) -m pytest -q $(PYTEST_ARGS)

typecheck: env
	$(PY) -m mypy

demo: build
	$(VENV)/bin/pcmekit info
	$(VENV)/bin/pcmekit bench pairwise --quick --out $(DEMO_OUT)

bench: build
	$(VENV)/bin/pcmekit bench all --out results/bench

# Compile (not run) the CUDA back end for sm_90 in its own build folder; checks it imports.
cuda-build: env
	PCMEKIT_CUDA=ON PCMEKIT_CUDA_ARCHS=90 $(PY) -m pip wheel --quiet --no-build-isolation --no-deps \
	  -Cbuild-dir=build/cuda -w build/cuda-wheel .

clean:
	rm -rf build results
