#!/bin/bash
# The mutations docs/design.md ("The BCE on CUDA") says tests/test_cuda_emu_bce.py catches: each is
# applied alone to a clean tree, the emulation build rebuilt, the BCE tests run (the last line of
# pytest goes to OUT), and the file restored. Run from the repository root with no csrc changes:
#   scripts/cuda_emu_bce_mutations.sh [OUT]      (default /tmp/mutations.log; ~3 minutes a mutation)
set -u
OUT="${1:-/tmp/mutations.log}"
run() {
  name="$1"; file="$2"; from="$3"; to="$4"
  backup="$(mktemp)"; cp "$file" "$backup"
  python3 - "$file" "$from" "$to" <<'PY'
import sys
p, a, b = sys.argv[1:]
s = open(p).read()
assert s.count(a) == 1, (a, s.count(a))
open(p, "w").write(s.replace(a, b))
PY
  make cuda-emu-build > /tmp/mut_build.log 2>&1 || echo "$name: BUILD FAILED" >> "$OUT"
  PYTHONPATH=build/cuda-emu/site PCMEKIT_TEST_INSTALLED_IN=build/cuda-emu/site PCMEKIT_REQUIRE_CUEMU=1 \
    .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_cuda_emu_bce.py 2>&1 | tail -1 | sed "s/^/$name: /" >> "$OUT"
  cp "$backup" "$file"; rm -f "$backup"
}
: > "$OUT"
run "sign (q = y - sigmoid)" csrc/cuda/bce_math.h "  const C q = sigmoid - y;" "  const C q = y - sigmoid;"
run "missing barrier in the block tree" csrc/cuda/bce_math.h "      for (int k = 0; k < 3; ++k) red[k][tid] += red[k][tid + w];
    }
    __syncthreads();" "      for (int k = 0; k < 3; ++k) red[k][tid] += red[k][tid + w];
    }"
run "fused per-tile sums overwritten (= for +=)" csrc/cuda/pairwise_tc.cu "      s.bce[0][tid] += sums.loss;" "      s.bce[0][tid] = sums.loss;"
run "held sigmoid dropped (x < -87 not 0)" csrc/cuda/bce_math.h "    sigmoid = x < kBceLow ? 0.0f : (x >= 0.0f ? 1.0f / u : e / u);" "    sigmoid = x >= 0.0f ? 1.0f / u : e / u;"
make cuda-emu-build > /tmp/mut_build.log 2>&1
echo "reverted and rebuilt: $(git status --short csrc | wc -l) changed csrc files" >> "$OUT"
