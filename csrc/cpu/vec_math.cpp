#include "cpu/vec_math.h"

#include <cmath>

#include "cpu/isa.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PCMEKIT_VEC_X86 1
#endif

namespace pcmekit::cpu {
namespace {

#ifdef PCMEKIT_VEC_X86
#define PCMEKIT_AVX2 __attribute__((target("avx2,fma")))
#define PCMEKIT_AVX2_INLINE PCMEKIT_AVX2 __attribute__((always_inline)) inline

// Lanes outside [kLow, kHigh] (and NaN) take the scalar path: inside it, n = round(x / ln2) is
// in [-126, 127], so 2^n is a normal float and so is the result.
constexpr float kLow = -87.0f, kHigh = 88.0f;

// exp of 8 floats, all within [kLow, kHigh]. Reduction constants: ln2 split so that n * kLn2Hi
// is exact; polynomial: the Cephes expf coefficients for e^r - 1 - r on |r| <= ln2 / 2.
PCMEKIT_AVX2_INLINE __m256 exp8_in_range(__m256 x) {
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i scale = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(scale));
}

// True when every lane is within [kLow, kHigh] (false for NaN).
PCMEKIT_AVX2_INLINE bool in_range(__m256 x) {
  const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(kLow), _CMP_GE_OQ),
                                  _mm256_cmp_ps(x, _mm256_set1_ps(kHigh), _CMP_LE_OQ));
  return _mm256_movemask_ps(ok) == 0xFF;
}

PCMEKIT_AVX2 void exp_array_avx2(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    if (in_range(v)) {
      _mm256_storeu_ps(y + i, exp8_in_range(v));
    } else {
      for (int64_t t = i; t < i + 8; ++t) y[t] = std::exp(x[t]);
    }
  }
  for (; i < n; ++i) y[i] = std::exp(x[i]);
}

// Adds the 8 floats of v, widened, to two 4-double accumulators.
PCMEKIT_AVX2_INLINE void accumulate_wide(__m256 v, __m256d& lo, __m256d& hi) {
  lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

PCMEKIT_AVX2 double sum_squares_exp_avx2(const float* mu, const float* lv, int64_t n) {
  __m256d sq_lo = _mm256_setzero_pd(), sq_hi = _mm256_setzero_pd();
  __m256d ex_lo = _mm256_setzero_pd(), ex_hi = _mm256_setzero_pd();
  double tail = 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 m = _mm256_loadu_ps(mu + i);
    // Squares of floats are exact in double.
    const __m256d m_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(m));
    const __m256d m_hi = _mm256_cvtps_pd(_mm256_extractf128_ps(m, 1));
    sq_lo = _mm256_fmadd_pd(m_lo, m_lo, sq_lo);
    sq_hi = _mm256_fmadd_pd(m_hi, m_hi, sq_hi);
    if (lv != nullptr) {
      const __m256 v = _mm256_loadu_ps(lv + i);
      if (in_range(v)) {
        accumulate_wide(exp8_in_range(v), ex_lo, ex_hi);
      } else {
        for (int64_t t = i; t < i + 8; ++t) tail += double(std::exp(lv[t]));
      }
    }
  }
  for (; i < n; ++i) {
    tail += double(mu[i]) * mu[i];
    if (lv != nullptr) tail += double(std::exp(lv[i]));
  }
  const __m256d total = _mm256_add_pd(_mm256_add_pd(sq_lo, sq_hi), _mm256_add_pd(ex_lo, ex_hi));
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, total);
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + tail;
}
#endif  // PCMEKIT_VEC_X86

bool use_avx2() {
  static const bool yes = cpu_isa() != Isa::generic;
  return yes;
}

template <typename T>
void exp_array_scalar(const T* x, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}

template <typename T>
double sum_squares_exp_scalar(const T* mu, const T* lv, int64_t n) {
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    acc += double(mu[i]) * double(mu[i]);
    if (lv != nullptr) acc += std::exp(double(lv[i]));
  }
  return acc;
}

}  // namespace

void exp_array(const float* x, float* y, int64_t n) {
#ifdef PCMEKIT_VEC_X86
  if (use_avx2()) return exp_array_avx2(x, y, n);
#endif
  exp_array_scalar(x, y, n);
}

void exp_array(const double* x, double* y, int64_t n) { exp_array_scalar(x, y, n); }

double sum_squares_exp(const float* mu, const float* lv, int64_t n) {
#ifdef PCMEKIT_VEC_X86
  if (use_avx2()) return sum_squares_exp_avx2(mu, lv, n);
#endif
  return sum_squares_exp_scalar(mu, lv, n);
}

double sum_squares_exp(const double* mu, const double* lv, int64_t n) {
  return sum_squares_exp_scalar(mu, lv, n);
}

}  // namespace pcmekit::cpu
