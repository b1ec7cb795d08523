// SIMD paths of cpu/select.h. Compiled with -ffp-contract=off (see there).
#include "cpu/select.h"

#include <type_traits>

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
#define PCMEKIT_OP(ATTR) ATTR __attribute__((always_inline)) static inline

// One ISA's vectors for the scan: `below` is the bit mask of the lanes where k < w (ordered, so
// false for NaN).
struct Avx512Float {
  using T = float;
  using V = __m512;
  static constexpr int W = 16;
  PCMEKIT_OP(PCMEKIT_AVX512) V set1(T x) { return _mm512_set1_ps(x); }
  PCMEKIT_OP(PCMEKIT_AVX512) V load(const T* p) { return _mm512_loadu_ps(p); }
  PCMEKIT_OP(PCMEKIT_AVX512) void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  PCMEKIT_OP(PCMEKIT_AVX512) V key(V col, V acc, V alpha, V floor) {
    return _mm512_max_ps(floor, _mm512_add_ps(col, _mm512_mul_ps(alpha, acc)));
  }
  PCMEKIT_OP(PCMEKIT_AVX512) unsigned below(V k, V w) { return _mm512_cmp_ps_mask(k, w, _CMP_LT_OQ); }
};
struct Avx512Double {
  using T = double;
  using V = __m512d;
  static constexpr int W = 8;
  PCMEKIT_OP(PCMEKIT_AVX512) V set1(T x) { return _mm512_set1_pd(x); }
  PCMEKIT_OP(PCMEKIT_AVX512) V load(const T* p) { return _mm512_loadu_pd(p); }
  PCMEKIT_OP(PCMEKIT_AVX512) void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  PCMEKIT_OP(PCMEKIT_AVX512) V key(V col, V acc, V alpha, V floor) {
    return _mm512_max_pd(floor, _mm512_add_pd(col, _mm512_mul_pd(alpha, acc)));
  }
  PCMEKIT_OP(PCMEKIT_AVX512) unsigned below(V k, V w) { return _mm512_cmp_pd_mask(k, w, _CMP_LT_OQ); }
};
struct Avx2Float {
  using T = float;
  using V = __m256;
  static constexpr int W = 8;
  PCMEKIT_OP(PCMEKIT_AVX2) V set1(T x) { return _mm256_set1_ps(x); }
  PCMEKIT_OP(PCMEKIT_AVX2) V load(const T* p) { return _mm256_loadu_ps(p); }
  PCMEKIT_OP(PCMEKIT_AVX2) void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  PCMEKIT_OP(PCMEKIT_AVX2) V key(V col, V acc, V alpha, V floor) {
    return _mm256_max_ps(floor, _mm256_add_ps(col, _mm256_mul_ps(alpha, acc)));
  }
  PCMEKIT_OP(PCMEKIT_AVX2) unsigned below(V k, V w) {
    return unsigned(_mm256_movemask_ps(_mm256_cmp_ps(k, w, _CMP_LT_OQ)));
  }
};
struct Avx2Double {
  using T = double;
  using V = __m256d;
  static constexpr int W = 4;
  PCMEKIT_OP(PCMEKIT_AVX2) V set1(T x) { return _mm256_set1_pd(x); }
  PCMEKIT_OP(PCMEKIT_AVX2) V load(const T* p) { return _mm256_loadu_pd(p); }
  PCMEKIT_OP(PCMEKIT_AVX2) void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  PCMEKIT_OP(PCMEKIT_AVX2) V key(V col, V acc, V alpha, V floor) {
    return _mm256_max_pd(floor, _mm256_add_pd(col, _mm256_mul_pd(alpha, acc)));
  }
  PCMEKIT_OP(PCMEKIT_AVX2) unsigned below(V k, V w) {
    return unsigned(_mm256_movemask_pd(_mm256_cmp_pd(k, w, _CMP_LT_OQ)));
  }
};

// The scan, a vector at a time; on a hit the lane comes from the mask and its key is read back
// from the vector. The last count % W items go through the scalar loop (same bits). A macro for
// the reason of the GEMM micro-kernels: GCC inlines intrinsics only into a function with their
// target attribute.
#define PCMEKIT_DEFINE_SCAN(NAME, ATTRIBUTES)                                                   \
  template <typename Ops, typename T = typename Ops::T>                                       \
  ATTRIBUTES int64_t NAME(const T* col, const T* acc, T alpha, T floor, T worst, int64_t count, \
                          T* key) {                                                           \
    using V = typename Ops::V;                                                                \
    const V va = Ops::set1(alpha), vf = Ops::set1(floor), vw = Ops::set1(worst);              \
    int64_t t = 0;                                                                            \
    for (; t + Ops::W <= count; t += Ops::W) {                                                \
      const V k = Ops::key(Ops::load(col + t), Ops::load(acc + t), va, vf);                   \
      const unsigned hits = Ops::below(k, vw);                                                \
      if (hits == 0) continue;                                                                \
      T lanes[Ops::W];                                                                        \
      Ops::store(lanes, k);                                                                   \
      const int lane = __builtin_ctz(hits);                                                   \
      *key = lanes[lane];                                                                     \
      return t + lane;                                                                        \
    }                                                                                         \
    return t + scan_scalar(col + t, acc + t, alpha, floor, worst, count - t, key);            \
  }

PCMEKIT_DEFINE_SCAN(scan_avx512, PCMEKIT_AVX512)
PCMEKIT_DEFINE_SCAN(scan_avx2, PCMEKIT_AVX2)
#endif

template <typename T>
int64_t dispatch(const T* col, const T* acc, T alpha, T floor, T worst, int64_t count, T* key) {
#ifdef PCMEKIT_SELECT_X86
  static const Isa isa = cpu_isa();
  constexpr bool f32 = std::is_same_v<T, float>;
  if (isa == Isa::avx512)
    return scan_avx512<std::conditional_t<f32, Avx512Float, Avx512Double>>(col, acc, alpha, floor, worst, count, key);
  if (isa == Isa::avx2)
    return scan_avx2<std::conditional_t<f32, Avx2Float, Avx2Double>>(col, acc, alpha, floor, worst, count, key);
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
