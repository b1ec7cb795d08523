#!/usr/bin/env bash
# GPU verification in one go, for a lent machine with an NVIDIA GPU and no network:
#   scripts/gpu_check.sh OUTDIR [--device cuda|cpu] [--bundle]
#
# 1. builds a pcmekit wheel with CUDA for sm_90 (PCMEKIT_CUDA_ARCHS overrides) and installs it into
#    OUTDIR's work folder (python3's own environment is left alone; the tests import that copy)
# 2. runs the whole test suite, CUDA cases included (pytest-xdist spreads it over the cores when
#    installed); with --device cuda it fails if no GPU is usable or if any CUDA test was skipped
# 3. compute-sanitizer memcheck (every CUDA test of the kernel files) and racecheck (the
#    float64-oracle tests), each only when compute-sanitizer works on this machine
# 4. the benchmark suites: `pcmekit bench all --device cuda --quick`, then the full-size suites
#    while the time budget lasts, under matmul precision highest and high (CUDA)
# and writes logs, JUnit XML, benchmark CSV/JSON/PNG and summary.md (test counts per outcome and
# the benchmark tables) to OUTDIR. --bundle leaves only summary.md and gpu_check.tar.gz (all the
# rest) in OUTDIR, for tools that fetch few files. The steps after the build share a time budget
# (GPU_CHECK_BUDGET_S, default 360 s), so with the build (one to two minutes for sm_90 on 16 cores)
# the whole run stays under about 8 minutes on an H200 machine: a step that would overrun is cut
# short or skipped, and summary.md says so.
#
# --device cpu builds without CUDA and runs the same steps on the CPU, with the CUDA-only steps
# skipped: a check of the script itself on a machine without a GPU.
#
# Needs python3 (PYTHON overrides) with torch, pybind11, scikit-build-core, cmake, ninja, pytest
# (and numpy, matplotlib); nvcc on PATH for --device cuda. test_optim.py skips without the adamp
# package: wheels in GPU_CHECK_WHEELS (default .whl/) are installed next to pcmekit first.
set -uo pipefail
usage="usage: scripts/gpu_check.sh OUTDIR [--device cuda|cpu] [--bundle]"
out=${1:?$usage}
shift
device=cuda
bundle=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=${2:?--device needs cuda or cpu}; shift 2 ;;
    --bundle) bundle=1; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
[ "$device" = cuda ] || [ "$device" = cpu ] || { echo "$usage" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
repo=$(pwd)
py=${PYTHON:-python3}
work=$out/work
rm -rf "$work" && mkdir -p "$work"
export PYTHONPATH=$work/site PCMEKIT_TEST_INSTALLED_IN=$work/site PYTHONUNBUFFERED=1
export PATH="$PATH:/usr/local/cuda/bin"
budget=${GPU_CHECK_BUDGET_S:-360}
status=0
summary=()
t_start=$SECONDS

note() { summary+=("$*"); echo "   $*"; }
step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to OUTDIR/NAME.log
  local name=$1 limit=$2 optional=${optional:-0}
  shift 2
  echo "== $name: $*"
  local t0=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1 || rc=$?
  local took=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then
    note "$name: ok ($took s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    if [ "$optional" = 1 ]; then
      note "$name: stopped at its time limit, $limit s (partial output in $name.log)"
    else
      note "$name: TIMED OUT after $limit s (see $name.log)"
      status=1
    fi
  else
    note "$name: FAILED, exit $rc ($took s, see $name.log)"
    tail -n 25 "$out/$name.log"
    status=1
  fi
  return $rc
}
left() {  # seconds of the budget left for the steps after the build
  echo $((budget - (SECONDS - t_build_done)))
}
budgeted() {  # budgeted NAME CAP_S COMMAND...: step with min(CAP_S, budget left), or skip
  # (optional=1 before the call: running out of time is not a failure)
  local name=$1 cap=$2 remaining
  shift 2
  remaining=$(left)
  if [ "$remaining" -lt 30 ]; then
    note "$name: skipped, the time budget ($budget s) is spent"
    return 0
  fi
  step "$name" $((cap < remaining ? cap : remaining)) "$@"
}

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown) $(git status --porcelain 2>/dev/null | grep -q . && echo '(with local changes)')"
  if command -v nvidia-smi >/dev/null; then nvidia-smi 2>&1; else echo "nvidia-smi: not available"; fi
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  "$py" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
  nproc
} >"$out/env.log" 2>&1

if [ "$device" = cuda ]; then
  export PCMEKIT_CUDA=ON PCMEKIT_CUDA_ARCHS=${PCMEKIT_CUDA_ARCHS:-90}
else
  export PCMEKIT_CUDA=OFF
fi
jobs=$(nproc)
step build 900 env CMAKE_BUILD_PARALLEL_LEVEL="$jobs" "$py" -m pip wheel --no-build-isolation --no-deps -v \
  -Cbuild-dir="$repo/build/gpu-check-$device" -w "$work/wheel" "$repo" || { echo "build failed"; exit 1; }
step install 120 "$py" -m pip install --no-deps --no-index --target "$work/site" "$work"/wheel/pcmekit-*.whl \
  || exit 1
wheels=${GPU_CHECK_WHEELS:-.whl}
if ls "$wheels"/*.whl >/dev/null 2>&1; then
  step extra-wheels 120 "$py" -m pip install --no-deps --no-index --target "$work/site" "$wheels"/*.whl
fi
t_build_done=$SECONDS
step info 60 "$py" -m pcmekit info
cp "$out/info.log" "$out/build_info.json"
if [ "$device" = cuda ] && ! "$py" -c 'import pcmekit, sys; sys.exit(not pcmekit.cuda_available())'; then
  note "pcmekit sees no usable GPU (see info.log); the CUDA steps cannot run"
  status=1
fi

# The test suite. CUDA tests are the device-parametrised ones and those marked cuda; conftest.py
# tags each test with its device in the JUnit XML, and the summary counts outcomes per device.
xdist=()
if "$py" -c 'import xdist' 2>/dev/null && [ "$jobs" -ge 4 ]; then
  xdist=(-n "$((jobs < 8 ? jobs : 8))")
  export OMP_NUM_THREADS=$((jobs / ${xdist[1]}))
fi
budgeted tests 300 "$py" -m pytest -q -p no:cacheprovider -rs "${xdist[@]}" --junitxml="$out/tests.xml" tests
unset OMP_NUM_THREADS
"$py" - "$out/tests.xml" "$device" >"$out/tests_summary.txt" <<'PY'
import sys
import xml.etree.ElementTree as ET

path, device = sys.argv[1], sys.argv[2]
try:
    cases = ET.parse(path).getroot().iter("testcase")
except (OSError, ET.ParseError) as err:
    print(f"no test report ({err})")
    sys.exit(0)
counts = {}
for case in cases:
    # conftest.py records each test's device as a JUnit property
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    kind = props.get("device", "cpu")
    outcome = "passed"
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            outcome = tag
    counts.setdefault(kind, {}).setdefault(outcome, 0)
    counts[kind][outcome] += 1
for kind in ("cpu", "cuda"):
    print(f"{kind} tests: " + ", ".join(f"{n} {o}" for o, n in sorted(counts.get(kind, {}).items())))
if device == "cuda" and counts.get("cuda", {}).get("skipped"):
    print("CUDA tests were skipped on a GPU run")
    sys.exit(1)
PY
[ $? -eq 0 ] || status=1
while read -r line; do note "$line"; done <"$out/tests_summary.txt"

# compute-sanitizer, where it works (gVisor machines refuse the device). Without the caching
# allocator every tensor is its own allocation, so an out-of-bounds access cannot land silently
# in a neighbour's block.
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -n 1)
if [ "$device" != cuda ]; then
  note "compute-sanitizer: skipped (--device cpu)"
elif [ -z "$sanitizer" ]; then
  note "compute-sanitizer: not installed, skipped"
elif ! timeout 120 "$sanitizer" --tool memcheck --error-exitcode 1 "$py" -c \
    'import torch; x = torch.ones(1000, device="cuda"); torch.cuda.synchronize(); print((x * 2).sum().item())' \
    >"$out/sanitizer_probe.log" 2>&1; then
  note "compute-sanitizer: does not work on this machine (see sanitizer_probe.log), skipped"
else
  # The kernels' own test files (not the compile tests: inductor's generated kernels would
  # dominate the time). A run cut short by the budget is reported, not failed.
  kernel_tests=(tests/test_pairwise.py tests/test_match_prob.py)
  for f in tests/test_topk.py tests/test_retrieval.py; do [ -f "$f" ] && kernel_tests+=("$f"); done
  optional=1 budgeted memcheck 180 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck \
    --error-exitcode 1 "$py" -m pytest -q -p no:cacheprovider -x -k cuda "${kernel_tests[@]}"
  optional=1 budgeted racecheck 90 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool racecheck \
    --error-exitcode 1 "$py" -m pytest -q -p no:cacheprovider -x \
    -k "cuda and (float64_matches_oracle or backward_matches_oracle)" tests/test_pairwise.py tests/test_match_prob.py
fi

# Benchmarks: the quick suites first (they must run), then each suite at full size while the
# budget lasts (one step per suite, so the ones that finish have their tables).
# On CUDA every suite runs under matmul precision highest (FP32) and high (TF32 allowed), pcmekit
# and torch in the same mode, each row against the peak of its mode (bench/gpu_peak.py).
modes=highest
[ "$device" = cuda ] && modes=highest,high
budgeted bench-quick 150 "$py" -m pcmekit bench all --device "$device" --precision "$modes" --quick --repeats 5 \
  --out "$out/bench-quick"
for suite in pairwise match_prob loss topk optim; do
  optional=1 budgeted "bench-$suite" 120 "$py" -m pcmekit bench "$suite" --device "$device" --precision "$modes" \
    --repeats 10 --out "$out/bench"
done

{
  echo "# pcmekit GPU check ($device)"
  echo
  echo '```'
  cat "$out/env.log"
  echo '```'
  echo
  echo "## Steps"
  echo
  printf -- '- %s\n' "${summary[@]}"
  echo "- total: $((SECONDS - t_start)) s, status $status"
  for b in bench-quick bench-pairwise bench-match_prob bench-loss bench-topk bench-optim; do
    [ -f "$out/$b.log" ] || continue
    echo
    echo "## $b"
    echo
    echo '```'
    grep -v '^DEBUG' "$out/$b.log"
    echo '```'
  done
} >"$out/summary.md"
rm -rf "$work/site" "$work/wheel"
rmdir "$work" 2>/dev/null
if [ "$bundle" = 1 ]; then
  tarball=$(mktemp)
  tar -C "$out" --exclude=./summary.md -czf "$tarball" . \
    && find "$out" -mindepth 1 -maxdepth 1 ! -name summary.md -exec rm -rf {} + \
    && mv "$tarball" "$out/gpu_check.tar.gz" && chmod 644 "$out/gpu_check.tar.gz"
fi
echo "results in $out (status $status, $((SECONDS - t_start)) s)"
exit $status
