#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>

namespace pcmekit::cpu {
namespace {

Isa detect_isa() {
  Isa best = Isa::generic;
  if (isa_supported(Isa::avx2)) best = Isa::avx2;
  if (isa_supported(Isa::avx512)) best = Isa::avx512;
  if (const char* cap = std::getenv("PCMEKIT_CPU_CAPABILITY")) {
    if (std::strcmp(cap, "generic") == 0) best = Isa::generic;
    if (std::strcmp(cap, "avx2") == 0 && best == Isa::avx512) best = Isa::avx2;
  }
  return best;
}

}  // namespace

bool isa_supported(Isa isa) {
  if (isa == Isa::generic) return true;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0).
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == Isa::avx2) return avx2;
  return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

Isa cpu_isa() {
  static const Isa chosen = detect_isa();
  return chosen;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    default:
      return "generic";
  }
}

}  // namespace pcmekit::cpu
