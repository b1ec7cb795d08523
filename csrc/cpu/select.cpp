// SIMD paths of cpu/select.h. Compiled with -ffp-contract=off (see there).
#include "cpu/select.h"

#include "cpu/isa.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PCMEKIT_SELECT_X86 1
#endif

namespace pcmekit::cpu {
namespace {

template <typename T>
int64_t scan_scalar(const T* col, const T* acc, T alpha, T floor, T worst, int64_t count, T* key) {
  for (int64_t t = 0; t < count; ++t) {
    const T k = topk_key(col[t], acc[t], alpha, floor);
    if (k < worst) {
      *key = k;
      return t;
    }
  }
  return count;
}

#ifdef PCMEKIT_SELECT_X86
#define PCMEKIT_AVX2 __attribute__((target("avx2,fma")))
#define PCMEKIT_AVX512 __attribute__((target("avx512f,avx512dq,fma")))

// Two vectors per step, so that the compare of one overlaps the loads of the next. On a hit the
// lane is found from the mask and its key read back from the vector.
PCMEKIT_AVX512 int64_t scan_avx512(const float* col, const float* acc, float alpha, float floor,
                                   float worst, int64_t count, float* key) {
  const __m512 va = _mm512_set1_ps(alpha), vf = _mm512_set1_ps(floor), vw = _mm512_set1_ps(worst);
  alignas(64) float lanes[16];
  int64_t t = 0;
  for (; t + 32 <= count; t += 32) {
    const __m512 k0 = _mm512_max_ps(vf, _mm512_add_ps(_mm512_loadu_ps(col + t), _mm512_mul_ps(va, _mm512_loadu_ps(acc + t))));
    const __m512 k1 = _mm512_max_ps(vf, _mm512_add_ps(_mm512_loadu_ps(col + t + 16), _mm512_mul_ps(va, _mm512_loadu_ps(acc + t + 16))));
    const __mmask16 m0 = _mm512_cmp_ps_mask(k0, vw, _CMP_LT_OQ);
    const __mmask16 m1 = _mm512_cmp_ps_mask(k1, vw, _CMP_LT_OQ);
    if ((m0 | m1) == 0) continue;
    const bool first = m0 != 0;
    const int lane = __builtin_ctz(first ? m0 : m1);
    _mm512_store_ps(lanes, first ? k0 : k1);
    *key = lanes[lane];
    return t + (first ? 0 : 16) + lane;
  }
  for (; t < count; t += 16) {
    const __mmask16 valid = count - t >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (count - t)) - 1);
    const __m512 k = _mm512_max_ps(vf, _mm512_add_ps(_mm512_maskz_loadu_ps(valid, col + t),
                                                     _mm512_mul_ps(va, _mm512_maskz_loadu_ps(valid, acc + t))));
    const __mmask16 m = _mm512_mask_cmp_ps_mask(valid, k, vw, _CMP_LT_OQ);
    if (m == 0) continue;
    _mm512_store_ps(lanes, k);
    const int lane = __builtin_ctz(m);
    *key = lanes[lane];
    return t + lane;
  }
  return count;
}

PCMEKIT_AVX512 int64_t scan_avx512(const double* col, const double* acc, double alpha, double floor,
                                   double worst, int64_t count, double* key) {
  const __m512d va = _mm512_set1_pd(alpha), vf = _mm512_set1_pd(floor), vw = _mm512_set1_pd(worst);
  alignas(64) double lanes[8];
  for (int64_t t = 0; t < count; t += 8) {
    const __mmask8 valid = count - t >= 8 ? __mmask8(0xFF) : __mmask8((1u << (count - t)) - 1);
    const __m512d k = _mm512_max_pd(vf, _mm512_add_pd(_mm512_maskz_loadu_pd(valid, col + t),
                                                      _mm512_mul_pd(va, _mm512_maskz_loadu_pd(valid, acc + t))));
    const __mmask8 m = _mm512_mask_cmp_pd_mask(valid, k, vw, _CMP_LT_OQ);
    if (m == 0) continue;
    _mm512_store_pd(lanes, k);
    const int lane = __builtin_ctz(m);
    *key = lanes[lane];
    return t + lane;
  }
  return count;
}

PCMEKIT_AVX2 int64_t scan_avx2(const float* col, const float* acc, float alpha, float floor,
                               float worst, int64_t count, float* key) {
  const __m256 va = _mm256_set1_ps(alpha), vf = _mm256_set1_ps(floor), vw = _mm256_set1_ps(worst);
  alignas(32) float lanes[8];
  int64_t t = 0;
  for (; t + 16 <= count; t += 16) {
    const __m256 k0 = _mm256_max_ps(vf, _mm256_add_ps(_mm256_loadu_ps(col + t), _mm256_mul_ps(va, _mm256_loadu_ps(acc + t))));
    const __m256 k1 = _mm256_max_ps(vf, _mm256_add_ps(_mm256_loadu_ps(col + t + 8), _mm256_mul_ps(va, _mm256_loadu_ps(acc + t + 8))));
    const int m0 = _mm256_movemask_ps(_mm256_cmp_ps(k0, vw, _CMP_LT_OQ));
    const int m1 = _mm256_movemask_ps(_mm256_cmp_ps(k1, vw, _CMP_LT_OQ));
    if ((m0 | m1) == 0) continue;
    const bool first = m0 != 0;
    const int lane = __builtin_ctz(first ? m0 : m1);
    _mm256_store_ps(lanes, first ? k0 : k1);
    *key = lanes[lane];
    return t + (first ? 0 : 8) + lane;
  }
  const int64_t rest = scan_scalar(col + t, acc + t, alpha, floor, worst, count - t, key);
  return t + rest;
}

PCMEKIT_AVX2 int64_t scan_avx2(const double* col, const double* acc, double alpha, double floor,
                               double worst, int64_t count, double* key) {
  const __m256d va = _mm256_set1_pd(alpha), vf = _mm256_set1_pd(floor), vw = _mm256_set1_pd(worst);
  alignas(32) double lanes[4];
  int64_t t = 0;
  for (; t + 4 <= count; t += 4) {
    const __m256d k = _mm256_max_pd(vf, _mm256_add_pd(_mm256_loadu_pd(col + t), _mm256_mul_pd(va, _mm256_loadu_pd(acc + t))));
    const int m = _mm256_movemask_pd(_mm256_cmp_pd(k, vw, _CMP_LT_OQ));
    if (m == 0) continue;
    _mm256_store_pd(lanes, k);
    const int lane = __builtin_ctz(m);
    *key = lanes[lane];
    return t + lane;
  }
  return t + scan_scalar(col + t, acc + t, alpha, floor, worst, count - t, key);
}
#endif

template <typename T>
int64_t dispatch(const T* col, const T* acc, T alpha, T floor, T worst, int64_t count, T* key) {
#ifdef PCMEKIT_SELECT_X86
  static const Isa isa = cpu_isa();
  if (isa == Isa::avx512) return scan_avx512(col, acc, alpha, floor, worst, count, key);
  if (isa == Isa::avx2) return scan_avx2(col, acc, alpha, floor, worst, count, key);
#endif
  return scan_scalar(col, acc, alpha, floor, worst, count, key);
}

}  // namespace

int64_t first_key_below(const float* col, const float* acc, float alpha, float floor, float worst,
                        int64_t count, float* key) {
  return dispatch(col, acc, alpha, floor, worst, count, key);
}

int64_t first_key_below(const double* col, const double* acc, double alpha, double floor,
                        double worst, int64_t count, double* key) {
  return dispatch(col, acc, alpha, floor, worst, count, key);
}

}  // namespace pcmekit::cpu
