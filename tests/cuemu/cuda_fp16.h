// cuemu's stand-in for <cuda_fp16.h>: IEEE binary16 storage with round-to-nearest-even
// conversions, through the compiler's _Float16 (GCC >= 12, Clang >= 15 on x86-64 and AArch64).
#pragma once

#include <cstdint>
#include <cstring>

struct __half {
  std::uint16_t bits;  // the same bytes as a torch.float16 element

  __half() = default;
  explicit __half(float f) {
    const _Float16 h = static_cast<_Float16>(f);  // round to nearest even
    std::memcpy(&bits, &h, 2);
  }
  explicit operator float() const {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return static_cast<float>(h);
  }
};
static_assert(sizeof(__half) == 2, "__half must be two bytes");

inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __double2half(double d) {
  const _Float16 h = static_cast<_Float16>(d);  // one rounding, as the device does
  __half r;
  std::memcpy(&r.bits, &h, 2);
  return r;
}
inline __half __ushort_as_half(unsigned short u) {
  __half r;
  r.bits = u;
  return r;
}
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
