#include "cpu/vec_math.h"

#include <algorithm>
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

#define PCMEKIT_UNROLL _Pragma("GCC unroll 8")

// These functions work on K vectors at once, each step applied to all K before the next: one
// vector's chain of dependent steps (~100 cycles for the BCE) would otherwise fill the FP
// scheduler and leave the pipes idle; K independent chains side by side keep them busy
// (measured 3-4x faster at K = 4 than one vector at a time).
constexpr int kWays = 4;

// p = p * r + c, for each of K vectors.
template <int K>
PCMEKIT_AVX2_INLINE void horner_step(__m256* p, const __m256* r, float c) {
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k) p[k] = _mm256_fmadd_ps(p[k], r[k], _mm256_set1_ps(c));
}

// exp of K x 8 floats, all within [kLow, kHigh]. Reduction constants: ln2 split so that n * kLn2Hi
// is exact; polynomial: the Cephes expf coefficients for e^r - 1 - r on |r| <= ln2 / 2.
template <int K>
PCMEKIT_AVX2_INLINE void exp8_in_range(const __m256* x, __m256* y) {
  __m256 n[K], r[K], p[K];
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k)
    n[k] = _mm256_round_ps(_mm256_mul_ps(x[k], _mm256_set1_ps(1.44269504088896341f)),
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k)
    r[k] = _mm256_fnmadd_ps(n[k], _mm256_set1_ps(0.693359375f), x[k]);
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k)
    r[k] = _mm256_fnmadd_ps(n[k], _mm256_set1_ps(-2.12194440e-4f), r[k]);
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k) p[k] = _mm256_set1_ps(1.9875691500e-4f);
  horner_step<K>(p, r, 1.3981999507e-3f);
  horner_step<K>(p, r, 8.3334519073e-3f);
  horner_step<K>(p, r, 4.1665795894e-2f);
  horner_step<K>(p, r, 1.6666665459e-1f);
  horner_step<K>(p, r, 5.0000001201e-1f);
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k) {
    const __m256 e = _mm256_fmadd_ps(p[k], _mm256_mul_ps(r[k], r[k]),
                                     _mm256_add_ps(r[k], _mm256_set1_ps(1.0f)));
    const __m256i scale = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n[k]), _mm256_set1_epi32(127)), 23);
    y[k] = _mm256_mul_ps(e, _mm256_castsi256_ps(scale));
  }
}

PCMEKIT_AVX2_INLINE __m256 exp8_in_range(__m256 x) {
  __m256 y;
  exp8_in_range<1>(&x, &y);
  return y;
}

// Loads K vectors from p; true when every lane of them is within [kLow, kHigh] (false for NaN).
template <int K>
PCMEKIT_AVX2_INLINE bool load_in_range(const float* p, __m256* v) {
  __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k) {
    v[k] = _mm256_loadu_ps(p + 8 * k);
    ok = _mm256_and_ps(ok, _mm256_and_ps(_mm256_cmp_ps(v[k], _mm256_set1_ps(kLow), _CMP_GE_OQ),
                                         _mm256_cmp_ps(v[k], _mm256_set1_ps(kHigh), _CMP_LE_OQ)));
  }
  return _mm256_movemask_ps(ok) == 0xFF;
}

PCMEKIT_AVX2 void exp_array_avx2(const float* x, float* y, int64_t n) {
  constexpr int64_t kBlock = 8 * kWays;
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    __m256 v[kWays], e[kWays];
    if (load_in_range<kWays>(x + i, v)) {
      exp8_in_range<kWays>(v, e);
      PCMEKIT_UNROLL for (int k = 0; k < kWays; ++k) _mm256_storeu_ps(y + i + 8 * k, e[k]);
    } else {
      for (int64_t t = i; t < i + kBlock; ++t) y[t] = std::exp(x[t]);
    }
  }
  for (; i + 8 <= n; i += 8) {
    __m256 v;
    if (load_in_range<1>(x + i, &v)) {
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

// Adds the products of the 8 floats of a and b, widened (so exactly), to two accumulators.
PCMEKIT_AVX2_INLINE void accumulate_products(__m256 a, __m256 b, __m256d& lo, __m256d& hi) {
  lo = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)),
                       _mm256_cvtps_pd(_mm256_castps256_ps128(b)), lo);
  hi = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)),
                       _mm256_cvtps_pd(_mm256_extractf128_ps(b, 1)), hi);
}

PCMEKIT_AVX2_INLINE double horizontal_sum(__m256d lo, __m256d hi) {
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(lo, hi));
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

PCMEKIT_AVX2 double sum_squares_exp_avx2(const float* mu, const float* lv, int64_t n) {
  // Squares of floats are exact in double.
  __m256d sq_lo = _mm256_setzero_pd(), sq_hi = _mm256_setzero_pd();
  __m256d ex_lo = _mm256_setzero_pd(), ex_hi = _mm256_setzero_pd();
  double tail = 0;
  int64_t i = 0;
  if (lv != nullptr) {
    constexpr int64_t kBlock = 8 * kWays;
    for (; i + kBlock <= n; i += kBlock) {
      PCMEKIT_UNROLL for (int k = 0; k < kWays; ++k) {
        const __m256 m = _mm256_loadu_ps(mu + i + 8 * k);
        accumulate_products(m, m, sq_lo, sq_hi);
      }
      __m256 v[kWays], e[kWays];
      if (load_in_range<kWays>(lv + i, v)) {
        exp8_in_range<kWays>(v, e);
        PCMEKIT_UNROLL for (int k = 0; k < kWays; ++k) accumulate_wide(e[k], ex_lo, ex_hi);
      } else {
        for (int64_t t = i; t < i + kBlock; ++t) tail += double(std::exp(lv[t]));
      }
    }
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 m = _mm256_loadu_ps(mu + i);
    accumulate_products(m, m, sq_lo, sq_hi);
    if (lv == nullptr) continue;
    __m256 v;
    if (load_in_range<1>(lv + i, &v)) {
      accumulate_wide(exp8_in_range(v), ex_lo, ex_hi);
    } else {
      for (int64_t t = i; t < i + 8; ++t) tail += double(std::exp(lv[t]));
    }
  }
  for (; i < n; ++i) {
    tail += double(mu[i]) * mu[i];
    if (lv != nullptr) tail += double(std::exp(lv[i]));
  }
  return horizontal_sum(_mm256_add_pd(sq_lo, sq_hi), _mm256_add_pd(ex_lo, ex_hi)) + tail;
}

// The AVX-512 forms of exp8_in_range and sum_squares_exp_avx2: the same reduction and polynomial on
// 16 lanes (so each exp has the same bits as on the AVX2 path), half the instructions per
// element. Sums are in double, a block of 64 elements at a time; only their grouping differs
// from the AVX2 path's, by rounding.
#define PCMEKIT_AVX512 __attribute__((target("avx512f,avx512dq,fma")))
#define PCMEKIT_AVX512_INLINE PCMEKIT_AVX512 __attribute__((always_inline)) inline

template <int K>
PCMEKIT_AVX512_INLINE void exp16_in_range(const __m512* x, __m512* y) {
  __m512 n[K], r[K], p[K];
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k)
    n[k] = _mm512_roundscale_ps(_mm512_mul_ps(x[k], _mm512_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k)
    r[k] = _mm512_fnmadd_ps(n[k], _mm512_set1_ps(0.693359375f), x[k]);
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k)
    r[k] = _mm512_fnmadd_ps(n[k], _mm512_set1_ps(-2.12194440e-4f), r[k]);
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k) p[k] = _mm512_set1_ps(1.9875691500e-4f);
  for (const float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f,
                        5.0000001201e-1f}) {
    PCMEKIT_UNROLL for (int k = 0; k < K; ++k) p[k] = _mm512_fmadd_ps(p[k], r[k], _mm512_set1_ps(c));
  }
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k) {
    const __m512 e = _mm512_fmadd_ps(p[k], _mm512_mul_ps(r[k], r[k]),
                                     _mm512_add_ps(r[k], _mm512_set1_ps(1.0f)));
    const __m512i scale = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvtps_epi32(n[k]), _mm512_set1_epi32(127)), 23);
    y[k] = _mm512_mul_ps(e, _mm512_castsi512_ps(scale));
  }
}

// Adds the 16 floats of v (or their squares), widened to double, to acc.
PCMEKIT_AVX512_INLINE void accumulate_wide16(__m512 v, __m512d& acc) {
  acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
  acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
}
PCMEKIT_AVX512_INLINE void accumulate_squares16(__m512 v, __m512d& acc) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
  acc = _mm512_fmadd_pd(lo, lo, acc);
  acc = _mm512_fmadd_pd(hi, hi, acc);
}

// One block of K x 16 elements of sum_squares_exp_avx512: squares into sq, exps into ex (or, when a
// log-variance is out of the polynomial's range or NaN, the C library's exp into tail).
template <int K>
PCMEKIT_AVX512_INLINE void sum_squares_exp_block(const float* mu, const float* lv, __m512d& sq,
                                                 __m512d& ex, double& tail) {
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k) accumulate_squares16(_mm512_loadu_ps(mu + 16 * k), sq);
  if (lv == nullptr) return;
  const __m512 low = _mm512_set1_ps(kLow), high = _mm512_set1_ps(kHigh);
  __m512 v[K], e[K];
  __mmask16 ok = 0xFFFF;
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k) {
    v[k] = _mm512_loadu_ps(lv + 16 * k);
    ok &= _mm512_cmp_ps_mask(v[k], low, _CMP_GE_OQ) & _mm512_cmp_ps_mask(v[k], high, _CMP_LE_OQ);
  }
  if (ok == 0xFFFF) {
    exp16_in_range<K>(v, e);
    PCMEKIT_UNROLL for (int k = 0; k < K; ++k) accumulate_wide16(e[k], ex);
  } else {
    for (int t = 0; t < 16 * K; ++t) tail += double(std::exp(lv[t]));
  }
}

// Blocks of 64, then one of 32 and one of 16 (rows of D = 32 or 48 are common: a row is one call),
// then the AVX2 code for the last few.
PCMEKIT_AVX512 double sum_squares_exp_avx512(const float* mu, const float* lv, int64_t n) {
  __m512d sq = _mm512_setzero_pd(), ex = _mm512_setzero_pd();
  double tail = 0;
  int64_t i = 0;
  auto at = [&](int64_t j) { return lv == nullptr ? nullptr : lv + j; };
  for (; i + 64 <= n; i += 64) sum_squares_exp_block<4>(mu + i, at(i), sq, ex, tail);
  if (i + 32 <= n) {
    sum_squares_exp_block<2>(mu + i, at(i), sq, ex, tail);
    i += 32;
  }
  if (i + 16 <= n) {
    sum_squares_exp_block<1>(mu + i, at(i), sq, ex, tail);
    i += 16;
  }
  if (i < n) tail += sum_squares_exp_avx2(mu + i, at(i), n - i);
  return _mm512_reduce_add_pd(sq) + _mm512_reduce_add_pd(ex) + tail;
}

PCMEKIT_AVX512 void exp_array_avx512(const float* x, float* y, int64_t n) {
  constexpr int kWays16 = 4;
  constexpr int64_t kBlock = 16 * kWays16;
  const __m512 low = _mm512_set1_ps(kLow), high = _mm512_set1_ps(kHigh);
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    __m512 v[kWays16], e[kWays16];
    __mmask16 ok = 0xFFFF;
    PCMEKIT_UNROLL for (int k = 0; k < kWays16; ++k) {
      v[k] = _mm512_loadu_ps(x + i + 16 * k);
      ok &= _mm512_cmp_ps_mask(v[k], low, _CMP_GE_OQ) & _mm512_cmp_ps_mask(v[k], high, _CMP_LE_OQ);
    }
    if (ok == 0xFFFF) {
      exp16_in_range<kWays16>(v, e);
      PCMEKIT_UNROLL for (int k = 0; k < kWays16; ++k) _mm512_storeu_ps(y + i + 16 * k, e[k]);
    } else {
      for (int64_t t = i; t < i + kBlock; ++t) y[t] = std::exp(x[t]);
    }
  }
  if (i < n) exp_array_avx2(x + i, y + i, n - i);  // the tail, 8 lanes at a time
}

// log1p(e) for K vectors with e in [0, 1], given u = 1 + e rounded and 1 / u. u is split as
// 2^k m with m in [sqrt(1/2), sqrt(2)] (k = 0 or 1), log m comes from the Cephes logf polynomial
// in f = m - 1 (exact), and the rounding of u is put back to first order:
// log1p(e) = log u + c / u with c = e - (u - 1), also exact.
template <int K>
PCMEKIT_AVX2_INLINE void log1p8_unit(const __m256* e, const __m256* u, const __m256* inv_u,
                                     __m256* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 k2[K], f[K], z[K], p[K];
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k) {
    const __m256 big = _mm256_cmp_ps(u[k], _mm256_set1_ps(1.41421356f), _CMP_GT_OQ);
    const __m256 m = _mm256_blendv_ps(u[k], _mm256_mul_ps(u[k], _mm256_set1_ps(0.5f)), big);
    k2[k] = _mm256_and_ps(big, one);
    f[k] = _mm256_sub_ps(m, one);
  }
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k) {
    z[k] = _mm256_mul_ps(f[k], f[k]);
    p[k] = _mm256_set1_ps(7.0376836292e-2f);
  }
  horner_step<K>(p, f, -1.1514610310e-1f);
  horner_step<K>(p, f, 1.1676998740e-1f);
  horner_step<K>(p, f, -1.2420140846e-1f);
  horner_step<K>(p, f, 1.4249322787e-1f);
  horner_step<K>(p, f, -1.6668057665e-1f);
  horner_step<K>(p, f, 2.0000714765e-1f);
  horner_step<K>(p, f, -2.4999993993e-1f);
  horner_step<K>(p, f, 3.3333331174e-1f);
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k) {
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p[k], f[k]), z[k]);
    y = _mm256_fmadd_ps(k2[k], _mm256_set1_ps(-2.12194440e-4f), y);
    y = _mm256_fnmadd_ps(_mm256_set1_ps(0.5f), z[k], y);
    __m256 r = _mm256_add_ps(f[k], y);
    r = _mm256_fmadd_ps(k2[k], _mm256_set1_ps(0.693359375f), r);
    const __m256 c = _mm256_sub_ps(e[k], _mm256_sub_ps(u[k], one));
    out[k] = _mm256_fmadd_ps(c, inv_u[k], r);
  }
}

template <typename T>
BceRowSums bce_row_scalar(const T* d, const T* target, int64_t diag, T neg_scale, T shift,
                          T grad_scale, T* grad, int64_t n);

// The BCE of K x 8 elements starting at column j (see bce_row); false, having done nothing, when
// a logit is NaN.
template <int K>
PCMEKIT_AVX2_INLINE bool bce_block(const float* d, const float* target, int64_t diag, int64_t j,
                                   __m256 neg_scale, __m256 shift, __m256 grad_scale, float* grad,
                                   __m256d (&sums)[6]) {
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  __m256 dv[K], x[K], e[K], u[K], inv_u[K], l[K];
  __m256 nan = zero, block_term = zero, block_q = zero, block_qd = zero;
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k) {
    dv[k] = _mm256_loadu_ps(d + j + 8 * k);
    x[k] = _mm256_add_ps(_mm256_mul_ps(dv[k], neg_scale), shift);  // two roundings, as torch
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(x[k], x[k], _CMP_UNORD_Q));
  }
  if (_mm256_movemask_ps(nan) != 0) return false;
  // exp(-|x|), held at exp(kLow) ~ 1.6e-38 rather than going subnormal.
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k)
    e[k] = _mm256_max_ps(_mm256_or_ps(x[k], _mm256_set1_ps(-0.0f)), _mm256_set1_ps(kLow));
  exp8_in_range<K>(e, e);
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k) {
    u[k] = _mm256_add_ps(one, e[k]);
    inv_u[k] = _mm256_div_ps(one, u[k]);
  }
  log1p8_unit<K>(e, u, inv_u, l);
  PCMEKIT_UNROLL for (int k = 0; k < K; ++k) {
    const int64_t col = j + 8 * k;
    __m256 y;
    if (target != nullptr) {
      y = _mm256_loadu_ps(target + col);
    } else if (diag >= col && diag < col + 8) {
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      y = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(lane, _mm256_set1_epi32(int(diag - col)))), one);
    } else {
      y = zero;
    }
    // sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) below; 0 where e was held at exp(kLow)
    // (x < kLow): the true value is below 1.6e-38, and what the C library's exp gives there
    // (and torch) is 0 or subnormal. Held, it made every such gradient entry subnormal once
    // scaled, and the distance kernel's backward then ran ~100x slower on them.
    const __m256 positive = _mm256_cmp_ps(x[k], zero, _CMP_GE_OQ);
    const __m256 held = _mm256_cmp_ps(x[k], _mm256_set1_ps(kLow), _CMP_LT_OQ);
    const __m256 sigmoid = _mm256_andnot_ps(
        held, _mm256_blendv_ps(_mm256_mul_ps(e[k], inv_u[k]), inv_u[k], positive));
    // max(x, 0) - x y + log1p(exp(-|x|))
    const __m256 term = _mm256_add_ps(_mm256_fnmadd_ps(x[k], y, _mm256_max_ps(x[k], zero)), l[k]);
    const __m256 q = _mm256_sub_ps(sigmoid, y);
    _mm256_storeu_ps(grad + col, _mm256_mul_ps(q, grad_scale));
    // The block's K vectors are added in float, the blocks in double: widening every vector
    // cost a third of the instructions.
    if (k == 0) {
      block_term = term;
      block_q = q;
      block_qd = _mm256_mul_ps(q, dv[k]);
    } else {
      block_term = _mm256_add_ps(block_term, term);
      block_q = _mm256_add_ps(block_q, q);
      block_qd = _mm256_fmadd_ps(q, dv[k], block_qd);
    }
  }
  accumulate_wide(block_term, sums[0], sums[1]);
  accumulate_wide(block_q, sums[2], sums[3]);
  accumulate_wide(block_qd, sums[4], sums[5]);
  return true;
}

PCMEKIT_AVX2 BceRowSums bce_row_avx2(const float* d, const float* target, int64_t diag,
                                     float neg_scale, float shift, float grad_scale, float* grad,
                                     int64_t n) {
  const __m256 vscale = _mm256_set1_ps(neg_scale), vshift = _mm256_set1_ps(shift);
  const __m256 vgrad = _mm256_set1_ps(grad_scale);
  __m256d sums[6];
  for (__m256d& s : sums) s = _mm256_setzero_pd();
  BceRowSums tail;
  auto scalar = [&](int64_t j, int64_t count) {
    const BceRowSums s = bce_row_scalar<float>(d + j, target ? target + j : nullptr, diag - j,
                                               neg_scale, shift, grad_scale, grad + j, count);
    tail.loss += s.loss;
    tail.q += s.q;
    tail.qd += s.qd;
  };
  int64_t j = 0;
  for (; j + 8 * kWays <= n; j += 8 * kWays)
    if (!bce_block<kWays>(d, target, diag, j, vscale, vshift, vgrad, grad, sums)) scalar(j, 8 * kWays);
  for (; j + 8 <= n; j += 8)
    if (!bce_block<1>(d, target, diag, j, vscale, vshift, vgrad, grad, sums)) scalar(j, 8);
  if (j < n) scalar(j, n - j);
  BceRowSums out;
  out.loss = horizontal_sum(sums[0], sums[1]) + tail.loss;
  out.q = horizontal_sum(sums[2], sums[3]) + tail.q;
  out.qd = horizontal_sum(sums[4], sums[5]) + tail.qd;
  return out;
}
#endif  // PCMEKIT_VEC_X86

bool use_avx2() {
  static const bool yes = cpu_isa() != Isa::generic;
  return yes;
}

bool use_avx512() {
  static const bool yes = cpu_isa() == Isa::avx512;
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


// The per-element formulas of bce_row with the C library's exp and log1p, in T.
template <typename T>
BceRowSums bce_row_scalar(const T* d, const T* target, int64_t diag, T neg_scale, T shift,
                          T grad_scale, T* grad, int64_t n) {
  BceRowSums s;
  for (int64_t j = 0; j < n; ++j) {
    const T dj = d[j];  // read before grad[j] is written: grad may be d
    const T scaled = neg_scale * dj;  // two roundings, like the vector path and torch
    const T x = scaled + shift;
    const T y = target ? target[j] : T(j == diag ? 1 : 0);
    const T e = std::exp(-std::fabs(x));
    const T sigmoid = x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
    const T term = std::max(x, T(0)) - x * y + std::log1p(e);  // NaN x: NaN throughout
    const T q = sigmoid - y;
    grad[j] = q * grad_scale;
    s.loss += double(term);
    s.q += double(q);
    s.qd += double(q) * double(dj);
  }
  return s;
}

}  // namespace

void exp_array(const float* x, float* y, int64_t n) {
#ifdef PCMEKIT_VEC_X86
  if (use_avx512()) return exp_array_avx512(x, y, n);
  if (use_avx2()) return exp_array_avx2(x, y, n);
#endif
  exp_array_scalar(x, y, n);
}

void exp_array(const double* x, double* y, int64_t n) { exp_array_scalar(x, y, n); }

double sum_squares_exp(const float* mu, const float* lv, int64_t n) {
#ifdef PCMEKIT_VEC_X86
  if (use_avx512()) return sum_squares_exp_avx512(mu, lv, n);
  if (use_avx2()) return sum_squares_exp_avx2(mu, lv, n);
#endif
  return sum_squares_exp_scalar(mu, lv, n);
}

double sum_squares_exp(const double* mu, const double* lv, int64_t n) {
  return sum_squares_exp_scalar(mu, lv, n);
}

}  // namespace pcmekit::cpu

namespace pcmekit::cpu {

BceRowSums bce_row(const float* d, const float* target, int64_t diag, float neg_scale, float shift,
                   float grad_scale, float* grad, int64_t n) {
#ifdef PCMEKIT_VEC_X86
  if (use_avx2()) return bce_row_avx2(d, target, diag, neg_scale, shift, grad_scale, grad, n);
#endif
  return bce_row_scalar(d, target, diag, neg_scale, shift, grad_scale, grad, n);
}

BceRowSums bce_row(const double* d, const double* target, int64_t diag, double neg_scale,
                   double shift, double grad_scale, double* grad, int64_t n) {
  return bce_row_scalar(d, target, diag, neg_scale, shift, grad_scale, grad, n);
}

}  // namespace pcmekit::cpu
