# Two commands do all set-up on a fresh machine:
#   make test   creates .venv, builds the pcmekit wheel, installs it into .venv, runs the test suite
#   make demo   the same set-up, then runs the benchmark demo
# PCMEKIT_CUDA=AUTO|ON|OFF selects the CUDA back end (tests here run the CPU path, so OFF).
# VENV=path uses another virtual environment (created if missing).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PCMEKIT_CUDA ?= OFF
PYTEST_ARGS ?=
DEMO_OUT ?= results/demo
WHEEL_DIR ?= dist

.PHONY: all env wheel build test typecheck demo bench cuda-build clean

all: test

env: $(VENV)/.deps-stamp

$(VENV)/.deps-stamp: scripts/requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r scripts/requirements-dev.txt
	touch $@

# The wheel, built from a cached build folder (build/<wheel tag>, see pyproject.toml), so
# rebuilds are incremental. PCMEKIT_CUDA=OFF (the default here) gives the CPU wheel.
wheel: env
	rm -f $(WHEEL_DIR)/pcmekit-*.whl
	PCMEKIT_CUDA=$(PCMEKIT_CUDA) $(PY) -m pip wheel --quiet --no-build-isolation --no-deps -w $(WHEEL_DIR) .

# Installs that wheel (never the source tree) into $(VENV): the tests then exercise exactly what
# users install, so a file missing from the wheel or an in-place-only step fails them.
build: wheel
	$(PY) -m pip install --quiet --force-reinstall --no-deps $(WHEEL_DIR)/pcmekit-*.whl
	$(PY) -m pip check

# pytest runs from the repository root, which is on sys.path (python -m; mp.spawn'd test workers
# import tests.* from there) while the source package is not (it lives in python/, and
# --import-mode=importlib adds nothing): conftest.py stops the run unless pcmekit was imported
# from $(VENV)'s site-packages.
test: build
	PCMEKIT_TEST_INSTALLED_IN=$(VENV) $(PY) -m pytest -q $(PYTEST_ARGS)

typecheck: env
	$(PY) -m mypy

demo: build
	$(VENV)/bin/pcmekit info
	$(VENV)/bin/pcmekit bench pairwise --quick --out $(DEMO_OUT)

bench: build
	$(VENV)/bin/pcmekit bench all --out results/bench

# Compile (not run) the CUDA back end for sm_90 in its own build folder; checks it imports.
cuda-build: env
	rm -f build/cuda-wheel/pcmekit-*.whl
	PCMEKIT_CUDA=ON PCMEKIT_CUDA_ARCHS=90 $(PY) -m pip wheel --quiet --no-build-isolation --no-deps \
	  -Cbuild-dir=build/cuda -w build/cuda-wheel .

clean:
	rm -rf build results $(WHEEL_DIR)
