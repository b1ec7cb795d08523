# Two commands do all set-up on a fresh machine:
#   make test   creates .venv, builds the pcmekit wheel, installs it into .venv, runs the test suite
#   make demo   the same set-up, then runs `pcmekit demo` (train, evaluate, report in $(DEMO_OUT))
# PCMEKIT_CUDA=AUTO|ON|OFF selects the CUDA back end (tests here run the CPU path, so OFF).
# VENV=path uses another virtual environment (created if missing).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PCMEKIT_CUDA ?= OFF
PYTEST_ARGS ?=
DEMO_OUT ?= results/demo
WHEEL_DIR ?= dist
# make sanitize: its own build folder, and the tests it runs: the CPU kernels' and the emulated
# CUDA back end's (EMU_TESTS below), as two pytest processes side by side (about the same length
# each; one pytest uses one core, and CI has two)
SANITIZE_DIR ?= build/sanitize
SANITIZE_CPU_TESTS ?= tests/test_bce.py tests/test_pairwise.py tests/test_match_prob.py tests/test_topk.py \
  tests/test_optim_fused.py
# the emulated BCE tests go with the CPU tests, which evens out the two processes (under ASan
# here: the emulated tests alone 244 s against the CPU tests' 67 s; BCE moved, 213 / 159 s; BCE
# and top-k moved, 167 / 275 s)
SANITIZE_BESIDE_CPU := tests/test_cuda_emu_bce.py
CXX ?= g++

.PHONY: all env wheel build test audit typecheck sanitize demo bench openclip-example cuda-build cuda-emu cuda-emu-build cuda-resources clean

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

# Which manylinux policy the wheel meets (auditwheel show) and its repaired, manylinux-tagged copy
# in $(WHEEL_DIR)/repaired. Release wheels come from cibuildwheel's manylinux_2_28 images
# ([tool.cibuildwheel] in pyproject.toml); this checks that the build links nothing a manylinux
# wheel may not (the tag here follows this machine's glibc).
audit: wheel
	$(VENV)/bin/auditwheel show $(WHEEL_DIR)/pcmekit-*.whl
	rm -rf $(WHEEL_DIR)/repaired
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/auditwheel repair -w $(WHEEL_DIR)/repaired $(WHEEL_DIR)/pcmekit-*.whl
	ls $(WHEEL_DIR)/repaired/pcmekit-*-manylinux_*.whl

typecheck: env
	$(PY) -m mypy

# One AddressSanitizer + UndefinedBehaviorSanitizer build serves every sanitized test: the
# emulated extension (PCMEKIT_CUDA_EMU=ON, see cuda-emu below) holds the CPU back end unchanged
# plus the CUDA back end compiled against tests/cuemu, so the CPU kernel tests and the emulated
# CUDA tests run against the same instrumented library (one build instead of two: the sanitized
# compile is the longest step of CI). -g1 (line tables only) keeps file:line in the reports at a
# fraction of -g's compile time. Installed into $(SANITIZE_DIR)/site and imported from there.
# Python is not instrumented, so libasan must be preloaded, and libstdc++ with it: ASan looks up
# the real __cxa_throw when it starts, and without libstdc++ loaded by then the first C++
# exception (every ValueError the core raises) aborts. Python's own allocations leak by design,
# hence no leak check. Any ASan or UBSan report aborts the run.
SANITIZE_CMAKE_ARGS := -Ccmake.build-type=RelWithDebInfo -Ccmake.define.PCMEKIT_SANITIZE=ON \
  "-Ccmake.define.CMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG"
SANITIZE_PYTEST = LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libstdc++.so)" \
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  PYTHONPATH=$(SANITIZE_DIR)/site PCMEKIT_TEST_INSTALLED_IN=$(SANITIZE_DIR)/site PCMEKIT_REQUIRE_CUEMU=1 \
  PCMEKIT_CUEMU_SANITIZE=1 $(PY) -m pytest -q -p no:cacheprovider
sanitize: env
	$(call emu_build,$(SANITIZE_DIR),$(SANITIZE_CMAKE_ARGS))
	@echo "sanitize: CPU kernel tests (log: $(SANITIZE_DIR)/cpu-tests.log) beside the emulated CUDA tests"
	@$(SANITIZE_PYTEST) $(SANITIZE_CPU_TESTS) $(filter $(SANITIZE_BESIDE_CPU),$(EMU_TESTS)) \
	  > $(SANITIZE_DIR)/cpu-tests.log 2>&1 & cpu=$$!; \
	$(SANITIZE_PYTEST) $(filter-out $(SANITIZE_BESIDE_CPU),$(EMU_TESTS)); emu=$$?; \
	wait $$cpu; cpu_rc=$$?; echo "== sanitize, CPU kernel tests and $(SANITIZE_BESIDE_CPU):"; \
	cat $(SANITIZE_DIR)/cpu-tests.log; \
	echo "sanitize: emulated CUDA tests rc=$$emu, CPU kernel tests rc=$$cpu_rc"; \
	test $$emu -eq 0 && test $$cpu_rc -eq 0

demo: build
	$(VENV)/bin/pcmekit demo --out $(DEMO_OUT)

# examples/open_clip_pcmepp.py on a tiny random open_clip model, in an environment of its own
# (scripts/requirements-openclip.txt says why) with the wheel `make wheel` built;
# PCMEKIT_REQUIRE_OPENCLIP=1 turns the test's skip into a failure.
OPENCLIP_VENV ?= build/openclip-venv
$(OPENCLIP_VENV)/.deps-stamp: scripts/requirements-openclip.txt
	$(PYTHON) -m venv $(OPENCLIP_VENV)
	$(OPENCLIP_VENV)/bin/python -m pip install --quiet -r scripts/requirements-openclip.txt
	touch $@

openclip-example: wheel $(OPENCLIP_VENV)/.deps-stamp
	$(OPENCLIP_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps $(WHEEL_DIR)/pcmekit-*.whl
	PCMEKIT_TEST_INSTALLED_IN=$(OPENCLIP_VENV) PCMEKIT_REQUIRE_OPENCLIP=1 \
	  $(OPENCLIP_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_open_clip_example.py

bench: build
	$(VENV)/bin/pcmekit bench all --out results/bench

# Compile (not run) the CUDA back end for sm_90 in its own build folder; checks it imports.
cuda-build: env
	rm -f build/cuda-wheel/pcmekit-*.whl
	PCMEKIT_CUDA=ON PCMEKIT_CUDA_ARCHS=90 $(PY) -m pip wheel --quiet --no-build-isolation --no-deps \
	  -Cbuild-dir=build/cuda -w build/cuda-wheel .

# The CUDA back end on the CPU (tests/cuemu, docs/design.md "CUDA emulator"):
#   cuda-emu-build   csrc/cuda/*.cu compiled as C++ against the emulator, installed into
#                    $(EMU_DIR)/site (its build_info() says cuda_emulated)
#   cuda-emu         that build's CUDA tests against the CPU back end and the float64 reference,
#                    the emulator's own self-test, and the ptxas resource check of every kernel
#                    (the same tests under ASan+UBSan are part of make sanitize, which CI runs
#                    instead of this target)
EMU_DIR ?= build/cuda-emu
EMU_TESTS ?= tests/test_cuda_emu.py tests/test_cuda_emu_tc.py tests/test_cuda_emu_topk.py tests/test_cuda_emu_bce.py \
  tests/test_cuda_emu_match_prob_tc.py tests/test_cuemu_selftest.py
NVCC ?= $(shell command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)

# emu_build DIR EXTRA-CMAKE-ARGS: the emulated extension, installed into DIR/site
define emu_build
	PCMEKIT_CUDA=OFF $(PY) -m pip wheel --quiet --no-build-isolation --no-deps \
	  -Cbuild-dir=$(1)/build -Ccmake.define.PCMEKIT_CUDA_EMU=ON $(2) -w $(1)/wheel .
	rm -rf $(1)/site
	$(PY) -m pip install --quiet --no-deps --target $(1)/site $(1)/wheel/pcmekit-*.whl
	rm -f $(1)/wheel/pcmekit-*.whl
endef

cuda-emu-build: env
	$(call emu_build,$(EMU_DIR),)

cuda-resources: env
	$(PY) scripts/cuda_resources.py --nvcc $(NVCC)

cuda-emu: cuda-emu-build
	PYTHONPATH=$(EMU_DIR)/site PCMEKIT_TEST_INSTALLED_IN=$(EMU_DIR)/site PCMEKIT_REQUIRE_CUEMU=1 \
	  $(PY) -m pytest -q -p no:cacheprovider $(EMU_TESTS)
	@if [ -x "$(NVCC)" ] || command -v "$(NVCC)" >/dev/null 2>&1; then $(MAKE) cuda-resources; \
	else echo "cuda-emu: no nvcc, so the ptxas resource check (make cuda-resources) is skipped"; fi

clean:
	rm -rf build results $(WHEEL_DIR)
