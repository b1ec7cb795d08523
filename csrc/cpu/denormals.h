// Flush-to-zero and denormals-are-zero for the current thread, for the duration of a scope
// (docs/design.md, "Tolerances": the match probability's denormals). PCME's match probability
// works with probabilities down to ~1e-30 and their gradients, whose float32 products fall below
// the normal range (1.2e-38); on Intel cores every such operand or result takes a microcode
// assist of ~100+ cycles (the float32 backward of a B = 512 loss step ran 7x slower for it),
// while AMD's cores handle most of them at full speed. Used by the backward only: there values
// below 1.2e-38 become 0, an absolute change below any tolerance gradients are held to; the
// forward keeps them (its log p is tested to FLT_MIN absolute, and flushing operands moved a
// 1.6e-38 result to 0). Restores the caller's mode.
#pragma once

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

namespace pcmekit::cpu {

class ScopedFlushDenormals {
 public:
#if defined(__SSE__) || defined(__x86_64__)
  ScopedFlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFtz | kDaz); }
  ~ScopedFlushDenormals() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned kFtz = 0x8000;  // MXCSR.FZ: denormal results become 0
  static constexpr unsigned kDaz = 0x0040;  // MXCSR.DAZ: denormal operands read as 0
  unsigned saved_;
#else
  ScopedFlushDenormals() = default;
#endif
  ScopedFlushDenormals(const ScopedFlushDenormals&) = delete;
  ScopedFlushDenormals& operator=(const ScopedFlushDenormals&) = delete;
};

}  // namespace pcmekit::cpu
