#!/usr/bin/env bash
# GPU verification in one go, for a lent machine with an NVIDIA GPU and no network:
#   scripts/gpu_check.sh OUTDIR [--device cpu]
# Builds pcmekit with CUDA for the local GPU (python3 must already have torch, pybind11,
# scikit-build-core, cmake and ninja), runs the test suite (CUDA cases included), runs the GPU
# benchmarks, and writes every log and result under OUTDIR. With --device cpu it runs the same
# steps on the CPU only (to check the script itself on a machine without a GPU).
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR [--device cpu|cuda]}
device=cuda
[ "${2:-}" = "--device" ] && device=${3:?--device needs a value}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
status=0
step() {  # step NAME COMMAND...: run, log to OUTDIR/NAME.log, remember failures
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@" >"$out/$name.log" 2>&1; then echo "   ok ($((SECONDS - t0)) s)"; else
    echo "   FAILED ($((SECONDS - t0)) s), see $out/$name.log"; tail -n 20 "$out/$name.log"; status=1; fi
}

{ nvidia-smi || true; $py -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())'; } >"$out/env.log" 2>&1
if [ "$device" = cuda ]; then
  archs=${PCMEKIT_CUDA_ARCHS:-$($py -c 'import torch; c = torch.cuda.get_device_capability(); print(f"{c[0]}{c[1]}")' 2>/dev/null || echo 90)}
  export PCMEKIT_CUDA=ON PCMEKIT_CUDA_ARCHS=$archs
else
  export PCMEKIT_CUDA=OFF
fi
step build env MAKEFLAGS="-j$(nproc)" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  $py -m pip install --no-build-isolation --no-deps -v -Cbuild-dir=build/gpu-check .
step info $py -m pcmekit info
if [ "$device" = cuda ]; then
  step tests $py -m pytest -q -x -p no:cacheprovider tests
  if command -v compute-sanitizer >/dev/null 2>&1; then
    step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 \
      $py -m pytest -q -x -p no:cacheprovider tests/test_pairwise.py -k cuda
  fi
else
  step tests $py -m pytest -q -x -p no:cacheprovider tests
fi
step bench $py -m pcmekit bench all --device "$device" --out "$out/bench"
cp "$out/info.log" "$out/build_info.json" 2>/dev/null
echo "results in $out (status $status)"
exit $status
