// CPU kernels of the Monte-Carlo match probability op (pcmekit/match_prob.h).
//
// Inner-product form on the GEMM engine (cpu/gemm.h). A tile is qb query items by gb gallery
// items; their samples z = mu + sigma eps are built as row-major matrices (query rows item-major,
// gallery rows sample-major: row t G + g is sample t of gallery item g), one single-threaded GEMM
// gives their dot products, and
//
//   x_st = |z_as|^2 + |z_bt|^2 - 2 z_as . z_bt        (squared norms precomputed once, in double)
//
// The J x J block of every pair lies inside one tile, so each pair is finished by the thread that
// owns its tile: no atomics, nothing of size (N J) x (M J). Threads take whole tiles
// (parallel_for over tiles); the GEMM inside runs on the calling thread.
//
// Forward. The GEMM's epilogue runs a vectorised pass over each run of dot products while it is
// in L1: x -> logit l -> sigmoid(l) and sigmoid(-l), added into per-(query, column) sums; the
// sample-major columns make the per-pair sums over t sums of contiguous slices. No logarithm per
// sample: with e = exp(-|l|), r = 1 / (1 + e),
//   sigmoid(l) = r or e r,  sigmoid(-l) = e r or r    (l >= 0 or l < 0),
// both with full relative accuracy. The sums are scaled by exp(K) (K = 60 in float, 600 in
// double), i.e. exp(K - |l|) is computed rather than exp(-|l|), so that terms down to l ~ -K - 87
// (float) stay normal numbers: PCME's scale puts most non-matching pairs at l ~ -70, p ~ 1e-31.
// Of a pair's two sums S_p = sum sigmoid(l), S_q = sum sigmoid(-l), the smaller (<= J^2 / 2)
// gives its log directly, and the larger is log1p(-small); so log p and log q are both accurate
// to relative rounding, including log q ~ -1e-30 when p ~ 1e-30, and p ~ 1 - 1e-9. Where the
// smaller sum is too small for clamped terms to be negligible (p or 1 - p below ~1e-57 in float),
// that query's row of the tile is redone in log space: its dot products again (a J-row GEMM),
// log-sigmoids, then a max pass and a sum pass (vectorised as well; ~3x the fast path's cost).
//
// Backward. With c_st = dL/dl_st = sigmoid(l) sigmoid(-l) (g_p / S_p - g_q / S_q) (S from the
// saved log_p, log_q) and w_st = c_st dl/dx_st, the gradient w.r.t. the samples is
//   dL/dz_as = 2 (z_as sum_t w_st - sum_t w_st z_bt),  dL/dz_bt = 2 (z_bt sum_s w_st - sum_s w_st z_as)
// i.e. per tile the W tile (the dot products, transformed in place), then two more GEMMs,
// W [Z_b | 1] and W^T [Z_a | 1] (the ones column yields the row and column sums of W), folded into
// the mean and log-variance gradients through dz/dmu = 1, dz/dlv = sigma eps / 2. Query groups
// stay with one thread; gallery groups move between threads in a Latin-square schedule (step k:
// query group u with gallery group (u + k) mod G), so no two threads write the same rows at once.
// Pairs below the fast path's floor get their weights in log space (scalar; rare).
//
// The vectorised passes are compiled per instruction set with GCC target attributes and chosen at
// run time together with the GEMM micro-kernel (cpu::simd_path()).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/denormals.h"
#include "cpu/gemm.h"
#include "cpu/parallel.h"
#include "cpu/strided.h"
#include "pcmekit/match_prob.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define PCMEKIT_MP_X86 1
#endif

namespace pcmekit::cpu {
namespace {

// The scaled sums. kScaleExp: K, the sums hold exp(K) * S (exp(K) J^2 must not overflow).
// kMinExpArg: exp is evaluated for arguments >= kMinExpArg only, so no term underflows into
// subnormals (slow on some CPUs) or to zero; a clamped term is at most exp(kMinExpArg) (scaled)
// too large. kMantissa: bits of precision; a scaled sum of at least
// J^2 exp(kMinExpArg) 2^kMantissa is accurate to rounding despite clamped terms (fast_floor()).
template <typename T>
struct Limits;
template <>
struct Limits<float> {
  static constexpr double kScaleExp = 60.0;
  static constexpr double kMinExpArg = -87.0;
  static constexpr int kMantissa = 24;
};
template <>
struct Limits<double> {
  static constexpr double kScaleExp = 600.0;
  static constexpr double kMinExpArg = -700.0;
  static constexpr int kMantissa = 53;
};

template <typename T>
double fast_floor(int64_t j) {
  return double(j) * double(j) * std::exp(Limits<T>::kMinExpArg) * std::ldexp(1.0, Limits<T>::kMantissa);
}

// exp(x) for x in [-87, 87]: Cephes-style range reduction x = n ln 2 + r, |r| <= ln2 / 2, and a
// degree-6 polynomial; about 1 ulp. Branch-free and call-free so that loops over it vectorise.
[[gnu::always_inline]] inline float exp_in_range(float x) {
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) * (int32_t{1} << 23);  // 2^n, |n| <= 126
  float pow2;
  std::memcpy(&pow2, &bits, sizeof pow2);
  return poly * pow2;
}

[[gnu::always_inline]] inline double exp_in_range(double x) { return std::exp(x); }

// log(x) for normal positive finite x: Cephes logf (x = m 2^e with m in [sqrt(1/2), sqrt(2)), a
// degree-8 polynomial in m - 1); about 1 ulp, branch-free.
[[gnu::always_inline]] inline float log_positive(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const int32_t mant_bits = (bits & 0x007fffff) | 0x3f000000;  // m in [0.5, 1)
  float m;
  std::memcpy(&m, &mant_bits, sizeof m);
  // 1 where m < sqrt(1/2) (0x3f3504f3), from the sign bit of the difference: a conditional
  // expression with constant arms gets jump-threaded and stops the loop from vectorising.
  const float low = static_cast<float>(
      static_cast<int32_t>(static_cast<uint32_t>(mant_bits - 0x3f3504f3) >> 31));
  const float e = static_cast<float>((bits >> 23) - 126) - low;
  const float f = (m + low * m) - 1.0f;  // 2m - 1 or m - 1, in [sqrt(1/2) - 1, sqrt(2) - 1)
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  return (f + y) + e * 0.693359375f;
}

[[gnu::always_inline]] inline double log_positive(double x) { return std::log(x); }

// log(1 + x) for x in [-1/2, 1]: 2 atanh(w), w = x / (2 + x) in [-1/3, 1/3], as the odd series
// 2 w (1 + w^2/3 + ... + w^14/15), whose truncation error is below float rounding; relative
// accuracy for tiny x too (log(1 + x) ~ x).
[[gnu::always_inline]] inline float log1p_bounded(float x) {
  const float w = x / (2.0f + x);
  const float s = w * w;
  float poly = 1.0f / 15;
  poly = poly * s + 1.0f / 13;
  poly = poly * s + 1.0f / 11;
  poly = poly * s + 1.0f / 9;
  poly = poly * s + 1.0f / 7;
  poly = poly * s + 1.0f / 5;
  poly = poly * s + 1.0f / 3;
  poly = poly * s + 1.0f;
  return 2.0f * w * poly;
}

[[gnu::always_inline]] inline double log1p_bounded(double x) { return std::log1p(x); }

// Distance of one sample pair from its expanded squared distance x, which rounding may leave
// slightly negative: clamped at `zero` (always 0; see RowArgs). The same expression in the
// vectorised passes and the scalar fallbacks, so both see identical logits.
template <typename T, bool kSquared>
[[gnu::always_inline]] inline T sample_distance(T x, T zero) {
  x = x < zero ? zero : x;  // (NaN stays NaN)
  return kSquared ? x : std::sqrt(x + T(kMatchDistanceEps));
}

template <typename T>
T log_sigmoid(T l) {
  return std::min(l, T(0)) - std::log1p(std::exp(-std::fabs(l)));
}

// Online log-sum-exp.
template <typename T>
struct LogSumExp {
  T max = -std::numeric_limits<T>::infinity();
  T sum = T(0);
  void add(T v) {
    if (v > max) {
      sum = sum * std::exp(max - v) + T(1);
      max = v;
    } else {
      sum += std::exp(v - max);
    }
  }
  T value() const { return max + std::log(sum); }
};

// ---------------------------------------------------------------------------------------------
// Vectorised passes over a tile. Within a tile, the gallery samples (the columns) are ordered
// sample-major: column t * G + g is sample t of the tile's gallery item g, so that the per-pair
// sums over t are sums of contiguous slices.
//
// Clamping constants travel as run-time values: as compile-time constants, GCC threads jumps
// through the clamps (the clamped branch has a constant result) and the loops no longer vectorise.
// For the same reason sign selections are written as exact arithmetic blends m u + (1 - m) v
// with m in {0, 1}, rather than conditional expressions.

// Constants of the row passes, computed once per call of the op.
template <typename T>
struct RowArgs {
  T scale, shift;
  T zero;     // 0
  T k;        // K = Limits<T>::kScaleExp: sums are scaled by exp(K)
  T min_arg;  // Limits<T>::kMinExpArg
  T e_floor;  // exp(K + min_arg)
  T inv_big;  // exp(-K)
  T big;      // exp(K)

  RowArgs(double scale_, double shift_)
      : scale(static_cast<T>(scale_)),
        shift(static_cast<T>(shift_)),
        zero(0),
        k(static_cast<T>(Limits<T>::kScaleExp)),
        min_arg(static_cast<T>(Limits<T>::kMinExpArg)),
        e_floor(static_cast<T>(std::exp(Limits<T>::kScaleExp + Limits<T>::kMinExpArg))),
        inv_big(static_cast<T>(std::exp(-Limits<T>::kScaleExp))),
        big(static_cast<T>(std::exp(Limits<T>::kScaleExp))) {}

  // The logit of a sample pair and the two quantities both passes need: e_k = exp(K - |l|) and
  // r = 1 / (1 + e), e = exp(-|l|) (clamped from below at exp(min_arg): 1 + e is unchanged).
  template <bool kSquared>
  [[gnu::always_inline]] void sample(T x, T& dist, T& l, T& e_k, T& r) const {
    dist = sample_distance<T, kSquared>(x, zero);
    l = shift - scale * dist;
    e_k = exp_in_range(std::max(k - std::fabs(l), min_arg));
    const T e = std::max(e_k, e_floor) * inv_big;
    r = T(1) / (T(1) + e);
  }
};

// One query sample row (or a run of its columns): sum_p[c] += exp(K) sigmoid(l_c),
// sum_q[c] += exp(K) sigmoid(-l_c), where l_c = shift - scale d(x_c) and
// x_c = row_norm + col_norm[c] - 2 dot[c].
template <typename T, bool kSquared>
[[gnu::always_inline]] inline void forward_row_body(const RowArgs<T>& args, int64_t count,
                                                    T row_norm, const T* __restrict dot,
                                                    const T* __restrict col_norm,
                                                    T* __restrict sum_p, T* __restrict sum_q) {
  for (int64_t c = 0; c < count; ++c) {
    T dist, l, e_k, r;
    args.template sample<kSquared>(row_norm + col_norm[c] - T(2) * dot[c], dist, l, e_k, r);
    const T large = args.big * r;  // exp(K) sigmoid(|l|)
    const T small = e_k * r;       // exp(K) sigmoid(-|l|)
    const T positive = l >= T(0) ? T(1) : T(0);
    sum_p[c] += positive * large + (T(1) - positive) * small;
    sum_q[c] += positive * small + (T(1) - positive) * large;
  }
}

// One query sample row of the backward pass, in place: dot[c] -> w_c = dL/dx_c, where
// dL/dl_c = sigmoid(l) sigmoid(-l) (g_p / S_p - g_q / S_q) = exp(K) e r^2 (alpha[c] - beta[c])
// with alpha = g_p / (exp(K) S_p), beta = g_q / (exp(K) S_q); accumulates dL/dshift and dL/dscale
// per column (a reduction across c would not vectorise without reassociation).
template <typename T, bool kSquared>
[[gnu::always_inline]] inline void backward_row_body(const RowArgs<T>& args, int64_t count,
                                                     T row_norm, T* __restrict dot,
                                                     const T* __restrict col_norm,
                                                     const T* __restrict alpha,
                                                     const T* __restrict beta,
                                                     T* __restrict d_shift, T* __restrict d_scale) {
  for (int64_t c = 0; c < count; ++c) {
    T dist, l, e_k, r;
    args.template sample<kSquared>(row_norm + col_norm[c] - T(2) * dot[c], dist, l, e_k, r);
    const T dl = e_k * r * r * (alpha[c] - beta[c]);
    d_shift[c] += dl;
    d_scale[c] -= dl * dist;
    dot[c] = kSquared ? -args.scale * dl : dl * (-args.scale / (T(2) * dist));
  }
}

struct FinalizeArgs {
  int64_t items;    // G, gallery items of the tile
  int64_t samples;  // J
  double log_j2;    // log J^2
  double k;         // K: the sums are scaled by exp(K)
  double floor;     // fast_floor<T>(J): smaller sums are clamped here (the exact path redoes them)
};

// From the (scaled) column sums of one query's J rows: the pair sums S_p, S_q, and both logs,
// taken from the smaller sum S: log S - log J^2 for its side, log(1 - S / J^2) for the other.
template <typename T>
[[gnu::always_inline]] inline void finalize_body(const FinalizeArgs& args,
                                                 const T* __restrict sum_p,
                                                 const T* __restrict sum_q,
                                                 T* __restrict pair_p, T* __restrict pair_q,
                                                 T* __restrict log_p, T* __restrict log_q) {
  const int64_t items = args.items;
  for (int64_t g = 0; g < items; ++g) {
    pair_p[g] = sum_p[g];
    pair_q[g] = sum_q[g];
  }
  for (int64_t t = 1; t < args.samples; ++t)
    for (int64_t g = 0; g < items; ++g) {
      pair_p[g] += sum_p[t * items + g];
      pair_q[g] += sum_q[t * items + g];
    }
  const T offset = static_cast<T>(args.log_j2 + args.k), floor = static_cast<T>(args.floor);
  const T inv_total = static_cast<T>(std::exp(-args.log_j2 - args.k));
  for (int64_t g = 0; g < items; ++g) {
    const T sp = pair_p[g], sq = pair_q[g];
    const T small = std::max(std::min(sp, sq), floor);
    const T log_small = log_positive(small) - offset;
    const T log_large = log1p_bounded(-small * inv_total);  // log(1 - S / J^2)
    const bool p_small = sp <= sq;
    log_p[g] = p_small ? log_small : log_large;
    log_q[g] = p_small ? log_large : log_small;
  }
}

struct ExactArgs {
  int64_t items;    // G
  int64_t samples;  // J
};

// The exact path for one query's J sample rows against the tile's columns, in log space:
//   lse_p[g] = logsumexp_{s,t} log sigmoid(l_{s, tG+g}),   lse_q[g] likewise with -l,
// by a maximum pass and a sum pass. x: [J, cols] dot products; v_p, v_q: [J, cols] scratch.
template <typename T, bool kSquared>
[[gnu::always_inline]] inline void exact_body(const ExactArgs& ex, const RowArgs<T>& args,
                                              const T* __restrict row_norm,
                                              const T* __restrict col_norm,
                                              const T* __restrict x, T* __restrict v_p,
                                              T* __restrict v_q, T* __restrict lse_p,
                                              T* __restrict lse_q) {
  const int64_t items = ex.items, cols = items * ex.samples, j = ex.samples;
  for (int64_t s = 0; s < j; ++s)
    for (int64_t c = 0; c < cols; ++c) {
      const T dist = sample_distance<T, kSquared>(row_norm[s] + col_norm[c] - T(2) * x[s * cols + c], args.zero);
      const T l = args.shift - args.scale * dist;
      const T soft = log1p_bounded(exp_in_range(std::max(-std::fabs(l), args.min_arg)));
      v_p[s * cols + c] = std::min(l, args.zero) - soft;   // log sigmoid(l)
      v_q[s * cols + c] = std::min(-l, args.zero) - soft;  // log sigmoid(-l)
    }
  for (int64_t g = 0; g < items; ++g) {
    lse_p[g] = v_p[g];
    lse_q[g] = v_q[g];
  }
  for (int64_t k = 1; k < j * j; ++k)  // k = s J + t: row s, slice t
    for (int64_t g = 0; g < items; ++g) {
      const int64_t c = (k / j) * cols + (k % j) * items + g;
      lse_p[g] = std::max(lse_p[g], v_p[c]);
      lse_q[g] = std::max(lse_q[g], v_q[c]);
    }
  // v <- exp(v - max), summed; the maxima stay in lse until the end.
  for (int64_t s = 0; s < j; ++s)
    for (int64_t t = 0; t < j; ++t)
      for (int64_t g = 0; g < items; ++g) {
        const int64_t c = s * cols + t * items + g;
        v_p[c] = exp_in_range(std::max(v_p[c] - lse_p[g], args.min_arg));
        v_q[c] = exp_in_range(std::max(v_q[c] - lse_q[g], args.min_arg));
      }
  for (int64_t k = 1; k < j * j; ++k)  // summed into the first slice
    for (int64_t g = 0; g < items; ++g) {
      const int64_t c = (k / j) * cols + (k % j) * items + g;
      v_p[g] += v_p[c];
      v_q[g] += v_q[c];
    }
  for (int64_t g = 0; g < items; ++g) {
    lse_p[g] += log_positive(v_p[g]);
    lse_q[g] += log_positive(v_q[g]);
  }
}

template <typename T>
using ForwardRowFn = void (*)(const RowArgs<T>&, int64_t, T, const T*, const T*, T*, T*);
template <typename T>
using BackwardRowFn = void (*)(const RowArgs<T>&, int64_t, T, T*, const T*, const T*, const T*,
                               T*, T*);
template <typename T>
using FinalizeFn = void (*)(const FinalizeArgs&, const T*, const T*, T*, T*, T*, T*);
template <typename T>
using ExactFn = void (*)(const ExactArgs&, const RowArgs<T>&, const T*, const T*, const T*, T*, T*,
                         T*, T*);

// One copy of each pass per instruction set (the bodies are inlined into each).
#define PCMEKIT_MP_PASSES(SUFFIX, ATTRIBUTES)                                                   \
  template <typename T, bool kSquared>                                                         \
  ATTRIBUTES void forward_row_##SUFFIX(const RowArgs<T>& a, int64_t n, T rn, const T* d,       \
                                       const T* cn, T* sp, T* sq) {                            \
    forward_row_body<T, kSquared>(a, n, rn, d, cn, sp, sq);                                    \
  }                                                                                            \
  template <typename T, bool kSquared>                                                         \
  ATTRIBUTES void backward_row_##SUFFIX(const RowArgs<T>& a, int64_t n, T rn, T* d,            \
                                        const T* cn, const T* al, const T* be, T* ds, T* dc) { \
    backward_row_body<T, kSquared>(a, n, rn, d, cn, al, be, ds, dc);                           \
  }                                                                                            \
  template <typename T>                                                                        \
  ATTRIBUTES void finalize_##SUFFIX(const FinalizeArgs& a, const T* sp, const T* sq, T* pp,    \
                                    T* pq, T* lp, T* lq) {                                     \
    finalize_body<T>(a, sp, sq, pp, pq, lp, lq);                                               \
  }                                                                                            \
  template <typename T, bool kSquared>                                                         \
  ATTRIBUTES void exact_##SUFFIX(const ExactArgs& e, const RowArgs<T>& a, const T* rn,         \
                                 const T* cn, const T* x, T* vp, T* vq, T* lp, T* lq) {        \
    exact_body<T, kSquared>(e, a, rn, cn, x, vp, vq, lp, lq);                                  \
  }

PCMEKIT_MP_PASSES(generic, )
#ifdef PCMEKIT_MP_X86
PCMEKIT_MP_PASSES(avx2, __attribute__((target("avx2,fma"))))
PCMEKIT_MP_PASSES(avx512, __attribute__((target("avx512f,avx512dq,fma"))))
#endif

template <typename T, bool kSquared>
struct Passes {
  ForwardRowFn<T> forward_row;
  BackwardRowFn<T> backward_row;
  FinalizeFn<T> finalize;
  ExactFn<T> exact;
};

// The passes for the running CPU: the same choice as the GEMM micro-kernel's (cpu::simd_path(),
// which honours PCMEKIT_CPU_CAPABILITY).
template <typename T, bool kSquared>
const Passes<T, kSquared>& passes() {
  static const Passes<T, kSquared> chosen = [] {
    const char* path = simd_path();
#ifdef PCMEKIT_MP_X86
    if (std::strcmp(path, "avx512") == 0)
      return Passes<T, kSquared>{forward_row_avx512<T, kSquared>, backward_row_avx512<T, kSquared>,
                                 finalize_avx512<T>, exact_avx512<T, kSquared>};
    if (std::strcmp(path, "avx2") == 0)
      return Passes<T, kSquared>{forward_row_avx2<T, kSquared>, backward_row_avx2<T, kSquared>,
                                 finalize_avx2<T>, exact_avx2<T, kSquared>};
#endif
    (void)path;
    return Passes<T, kSquared>{forward_row_generic<T, kSquared>, backward_row_generic<T, kSquared>,
                               finalize_generic<T>, exact_generic<T, kSquared>};
  }();
  return chosen;
}

// ---------------------------------------------------------------------------------------------
// Inputs.

// One side: contiguous copies of mu and sigma = exp(lv / 2) ([rows, D]), the eps view, and the
// squared norms of all rows * J samples (summed in double, then rounded: they are the large terms
// of x that cancel).
template <typename T>
struct Side {
  int64_t rows = 0, dim = 0, samples = 1;
  std::vector<T> mu, sigma;
  std::vector<T> norm;  // [rows * J], item-major
  MatrixView eps;

  Side(const MatrixView& mean, const MatrixView& logvar, const MatrixView& eps_view, int64_t j,
       int num_threads)
      : rows(mean.rows), dim(mean.cols), samples(j), eps(eps_view) {
    mu.resize(static_cast<size_t>(rows * dim));
    sigma.resize(static_cast<size_t>(rows * dim));
    norm.resize(static_cast<size_t>(rows * j));
    parallel_for(0, rows, 64, num_threads, [&](int64_t lo, int64_t hi, int) {
      std::vector<T> z(static_cast<size_t>(dim));
      for (int64_t r = lo; r < hi; ++r) {
        T* m = mu.data() + r * dim;
        T* s = sigma.data() + r * dim;
        for (int64_t c = 0; c < dim; ++c) {
          m[c] = load<T>(mean, r, c);
          s[c] = std::exp(T(0.5) * load<T>(logvar, r, c));
        }
        for (int64_t k = 0; k < j; ++k) {
          sample_row(r, k, z.data());
          double acc[4] = {0, 0, 0, 0};  // four chains: a single sum is latency-bound
          int64_t c = 0;
          for (; c + 4 <= dim; c += 4)
            for (int u = 0; u < 4; ++u) acc[u] += double(z[c + u]) * z[c + u];
          for (; c < dim; ++c) acc[0] += double(z[c]) * z[c];
          norm[static_cast<size_t>(r * j + k)] = static_cast<T>((acc[0] + acc[1]) + (acc[2] + acc[3]));
        }
      }
    });
  }

  const T* mu_row(int64_t r) const { return mu.data() + r * dim; }
  const T* sigma_row(int64_t r) const { return sigma.data() + r * dim; }
  const T* eps_row(int64_t r, int64_t k) const {  // contiguous rows only (eps.col_stride == 1)
    return static_cast<const T*>(eps.data) + (r * samples + k) * eps.row_stride;
  }

  // z = mu + sigma * eps of sample k of item r, into out[0, D).
  void sample_row(int64_t r, int64_t k, T* __restrict out) const {
    const T* m = mu_row(r);
    const T* s = sigma_row(r);
    if (eps.col_stride == 1) {
      const T* e = eps_row(r, k);
      for (int64_t c = 0; c < dim; ++c) out[c] = m[c] + s[c] * e[c];
    } else {
      for (int64_t c = 0; c < dim; ++c) out[c] = m[c] + s[c] * load<T>(eps, r * samples + k, c);
    }
  }

  // Tile row of sample k of item r (tile items [i0, i1)): item-major (r - i0) J + k for the
  // query side, sample-major k G + (r - i0) for the gallery side.
  int64_t tile_row(int64_t r, int64_t k, int64_t i0, int64_t i1, bool sample_major) const {
    return sample_major ? k * (i1 - i0) + (r - i0) : (r - i0) * samples + k;
  }

  // The samples of items [i0, i1) as the rows of z (leading dimension D + 1, column D = 1), and
  // their squared norms in tile order.
  void build(int64_t i0, int64_t i1, bool sample_major, T* z, T* tile_norm) const {
    const int64_t ld = dim + 1;
    for (int64_t r = i0; r < i1; ++r)
      for (int64_t k = 0; k < samples; ++k) {
        const int64_t row = tile_row(r, k, i0, i1, sample_major);
        T* out = z + row * ld;
        sample_row(r, k, out);
        out[dim] = T(1);
        tile_norm[row] = norm[static_cast<size_t>(r * samples + k)];
      }
  }
};

// Tile sizes in items: about kTileRows query samples by kTileCols gallery samples (GEMM packing
// costs about 16 (1/rows + 1/cols) of the multiply-adds; a tile of dot products, rows * cols
// values, stays in L2/L3), shrunk so that each side has as many tiles as threads where it can.
#ifndef PCMEKIT_MATCH_TILE_ROWS  // (compile-time knobs for tuning)
#define PCMEKIT_MATCH_TILE_ROWS 960
#endif
#ifndef PCMEKIT_MATCH_TILE_COLS
#define PCMEKIT_MATCH_TILE_COLS 1440
#endif
constexpr int64_t kTileRows = PCMEKIT_MATCH_TILE_ROWS;
constexpr int64_t kTileCols = PCMEKIT_MATCH_TILE_COLS;

struct Blocking {
  int64_t qb = 1, gb = 1;    // items per query / gallery tile
  int64_t nqb = 0, ngb = 0;  // tiles per side
};

Blocking plan_blocks(int64_t n, int64_t m, int64_t j, int threads) {
  Blocking b;
  const int64_t t = std::max(1, threads);
  b.qb = std::max<int64_t>(1, std::min(kTileRows / j, (n + t - 1) / t));
  b.gb = std::max<int64_t>(1, std::min(kTileCols / j, (m + t - 1) / t));
  b.nqb = (n + b.qb - 1) / b.qb;
  b.ngb = (m + b.gb - 1) / b.gb;
  return b;
}

// C[m, n] = A @ B on the calling thread, stored row-major with leading dimension ld.
template <typename T>
void gemm_into(int64_t m, int64_t n, int64_t k, GemmOperand<T> a, GemmOperand<T> b, T* out,
               int64_t ld) {
  auto epilogue = [out, ld](int64_t r, int64_t c0, int64_t count, const T* acc) {
    std::copy(acc, acc + count, out + r * ld + c0);
  };
  gemm<T>(m, n, k, a, b, epilogue, 1);
}

template <typename T>
struct Problem {
  const Side<T>& a;
  const Side<T>& b;
  int64_t j;
  double scale, shift;
  double log_j2;  // log(J^2)
  Blocking blocks;
  RowArgs<T> row{scale, shift};
};

// One tile's extent and samples: query items [i0, i1) (rows item-major), gallery items [j0, j1)
// (columns sample-major).
template <typename T>
struct Tile {
  int64_t i0 = 0, i1 = 0, j0 = 0, j1 = 0;
  int64_t rows = 0, cols = 0, items = 0;  // items = j1 - j0 (G)
  std::vector<T> za, zb;                  // [rows, D + 1], [cols, D + 1]
  std::vector<T> row_norm, col_norm;      // [rows], [cols]

  Tile(const Problem<T>& pb) {
    const int64_t ld = pb.a.dim + 1;
    const int64_t max_rows = pb.blocks.qb * pb.j, max_cols = pb.blocks.gb * pb.j;
    za.resize(static_cast<size_t>(max_rows * ld));
    zb.resize(static_cast<size_t>(max_cols * ld));
    row_norm.resize(static_cast<size_t>(max_rows));
    col_norm.resize(static_cast<size_t>(max_cols));
  }

  // Builds the samples of tile (qi, gj); the query side only when `build_a`.
  void load(const Problem<T>& pb, int64_t qi, int64_t gj, bool build_a) {
    i0 = qi * pb.blocks.qb;
    i1 = std::min(pb.a.rows, i0 + pb.blocks.qb);
    j0 = gj * pb.blocks.gb;
    j1 = std::min(pb.b.rows, j0 + pb.blocks.gb);
    rows = (i1 - i0) * pb.j;
    items = j1 - j0;
    cols = items * pb.j;
    if (build_a) pb.a.build(i0, i1, false, za.data(), row_norm.data());
    pb.b.build(j0, j1, true, zb.data(), col_norm.data());
  }

  // dots[r, c] = z_a[r] . z_b[c]   ([rows, cols], row-major)
  void dot_products(const Problem<T>& pb, T* dots) const {
    const int64_t ld = pb.a.dim + 1;
    gemm_into<T>(rows, cols, pb.a.dim, {za.data(), ld, 1}, {zb.data(), 1, ld}, dots, cols);
  }
};

// ---------------------------------------------------------------------------------------------
// Forward: the row pass runs in the GEMM's epilogue, on each run of dot products while it is in
// L1; the (scaled) column sums of a tile's queries, [qb, cols], are the only per-tile storage.

template <typename T>
struct ForwardWorkspace {
  Tile<T> tile;
  std::vector<T> sum_p, sum_q;                  // [qb, cols]
  std::vector<T> pair_p, pair_q, log_p, log_q;  // [gb]
  std::vector<T> x, v_p, v_q, lse_p, lse_q;     // exact path: [J, cols] x 3, [gb] x 2
  explicit ForwardWorkspace(const Problem<T>& pb) : tile(pb) {
    const int64_t cols = pb.blocks.gb * pb.j, items = pb.blocks.gb;
    for (auto* v : {&sum_p, &sum_q}) v->resize(static_cast<size_t>(pb.blocks.qb * cols));
    for (auto* v : {&pair_p, &pair_q, &log_p, &log_q, &lse_p, &lse_q})
      v->resize(static_cast<size_t>(items));
    for (auto* v : {&x, &v_p, &v_q}) v->resize(static_cast<size_t>(pb.j * cols));
  }
};

template <typename T, bool kSquared>
void forward_tile(const Problem<T>& pb, const MatchProbForwardParams& p, int64_t qi, int64_t gj,
                  bool build_a, ForwardWorkspace<T>& ws) {
  Tile<T>& tile = ws.tile;
  tile.load(pb, qi, gj, build_a);
  const Passes<T, kSquared>& pass = passes<T, kSquared>();
  const int64_t j = pb.j, dim = pb.a.dim, ld = dim + 1;
  const int64_t cols = tile.cols, items = tile.items;
  std::fill_n(ws.sum_p.begin(), (tile.i1 - tile.i0) * cols, T(0));
  std::fill_n(ws.sum_q.begin(), (tile.i1 - tile.i0) * cols, T(0));
  {
    // The row pass on each run of dot products the GEMM hands over (one sample row, up to the
    // micro-kernel's tile width of columns). (Staging runs to batch them measured slower.)
    const ForwardRowFn<T> row_fn = pass.forward_row;
    const RowArgs<T>& args = pb.row;
    const T* row_norm = tile.row_norm.data();
    const T* col_norm = tile.col_norm.data();
    T* sum_p = ws.sum_p.data();
    T* sum_q = ws.sum_q.data();
    auto epilogue = [&](int64_t r, int64_t c0, int64_t count, const T* acc) {
      const int64_t at_sum = (r / j) * cols + c0;
      row_fn(args, count, row_norm[r], acc, col_norm + c0, sum_p + at_sum, sum_q + at_sum);
    };
    gemm<T>(tile.rows, cols, dim, {tile.za.data(), ld, 1}, {tile.zb.data(), 1, ld}, epilogue, 1);
  }
  const FinalizeArgs fin{items, j, pb.log_j2, Limits<T>::kScaleExp, fast_floor<T>(j)};
  const T fast = static_cast<T>(fin.floor);
  const T log_j2 = static_cast<T>(pb.log_j2);
  for (int64_t i = tile.i0; i < tile.i1; ++i) {
    const int64_t at_sum = (i - tile.i0) * cols;
    pass.finalize(fin, ws.sum_p.data() + at_sum, ws.sum_q.data() + at_sum, ws.pair_p.data(),
                  ws.pair_q.data(), ws.log_p.data(), ws.log_q.data());
    bool exact = false;
    for (int64_t g = 0; g < items; ++g)
      exact |= std::min(ws.pair_p[static_cast<size_t>(g)], ws.pair_q[static_cast<size_t>(g)]) < fast;
    if (exact) {
      // Some pair's smaller sum may have lost terms to underflow (p or 1 - p below ~1e-57 in
      // float): redo this query's row in log space, from its dot products recomputed.
      const int64_t r0 = (i - tile.i0) * j;
      gemm_into<T>(j, cols, dim, {tile.za.data() + r0 * ld, ld, 1}, {tile.zb.data(), 1, ld},
                   ws.x.data(), cols);
      pass.exact(ExactArgs{items, j}, pb.row, tile.row_norm.data() + r0, tile.col_norm.data(),
                 ws.x.data(), ws.v_p.data(), ws.v_q.data(), ws.lse_p.data(), ws.lse_q.data());
    }
    for (int64_t g = 0; g < items; ++g) {
      const size_t gi = static_cast<size_t>(g);
      T lp = ws.log_p[gi], lq = ws.log_q[gi];
      const T sp = ws.pair_p[gi], sq = ws.pair_q[gi];
      if (std::min(sp, sq) < fast) {
        if (sp <= sq) {
          lp = ws.lse_p[gi] - log_j2;
          lq = std::log1p(-std::exp(lp));
        } else {
          lq = ws.lse_q[gi] - log_j2;
          lp = std::log1p(-std::exp(lq));
        }
      }
      at<T>(p.log_p, i, tile.j0 + g) = lp;
      at<T>(p.log_q, i, tile.j0 + g) = lq;
    }
  }
}

template <typename T, bool kSquared>
void forward_typed(const MatchProbForwardParams& p) {
  const int nt = resolve_threads(p.num_threads);
  const int64_t j = p.num_samples;
  const Side<T> a(p.a_mean, p.a_logvar, p.eps_a, j, nt);
  const Side<T> b(p.b_mean, p.b_logvar, p.eps_b, j, nt);
  const Problem<T> pb{a, b, j, p.scale, p.shift, 2.0 * std::log(double(j)),
                      plan_blocks(a.rows, b.rows, j, nt)};
  const int64_t tiles = pb.blocks.nqb * pb.blocks.ngb;
  parallel_for(0, tiles, 1, nt, [&](int64_t lo, int64_t hi, int) {
    ForwardWorkspace<T> ws(pb);
    int64_t built = -1;
    for (int64_t tile = lo; tile < hi; ++tile) {
      const int64_t qi = tile / pb.blocks.ngb, gj = tile % pb.blocks.ngb;
      forward_tile<T, kSquared>(pb, p, qi, gj, qi != built, ws);
      built = qi;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward.

template <typename T>
struct BackwardWorkspace {
  Tile<T> tile;
  std::vector<T> w, alpha, beta, alpha_col, beta_col, d_shift, d_scale, prod_a, prod_b;
  std::vector<T> acc_mu, acc_lv;  // [D]
  std::vector<int64_t> exact;     // tile gallery items of the current query on the exact path
  std::vector<T> exact_w;         // their J x J weights, in that order
  double grad_scale = 0, grad_shift = 0;
  explicit BackwardWorkspace(const Problem<T>& pb) : tile(pb) {
    const int64_t ld = pb.a.dim + 1;
    const int64_t rows = pb.blocks.qb * pb.j, cols = pb.blocks.gb * pb.j, items = pb.blocks.gb;
    w.resize(static_cast<size_t>(rows * cols));
    for (auto* v : {&alpha, &beta}) v->resize(static_cast<size_t>(items));
    for (auto* v : {&alpha_col, &beta_col}) v->resize(static_cast<size_t>(cols));
    for (auto* v : {&d_shift, &d_scale}) v->assign(static_cast<size_t>(cols), T(0));
    prod_a.resize(static_cast<size_t>(rows * ld));
    prod_b.resize(static_cast<size_t>(cols * ld));
    acc_mu.resize(static_cast<size_t>(pb.a.dim));
    acc_lv.resize(static_cast<size_t>(pb.a.dim));
  }
};

// Adds the gradients of the samples of items [i0, i1) of one side,
//   dL/dz = 2 (rowsum(W) z - prod),   prod = W-product with the ones column last,
// into the items' mean (dz/dmu = 1) and log-variance (dz/dlv = sigma eps / 2) gradients.
template <typename T>
void fold_side(const Side<T>& side, int64_t i0, int64_t i1, bool sample_major, const T* z,
               const T* prod, const MatrixView& grad_mean, const MatrixView& grad_logvar,
               T* __restrict acc_mu, T* __restrict acc_lv) {
  const int64_t dim = side.dim, ld = dim + 1;
  const bool contiguous_eps = side.eps.col_stride == 1;
  for (int64_t i = i0; i < i1; ++i) {
    std::fill_n(acc_mu, dim, T(0));
    std::fill_n(acc_lv, dim, T(0));
    for (int64_t k = 0; k < side.samples; ++k) {
      const int64_t r = side.tile_row(i, k, i0, i1, sample_major);
      const T* __restrict zr = z + r * ld;
      const T* __restrict pr = prod + r * ld;
      const T rowsum = pr[dim];
      if (contiguous_eps) {
        const T* __restrict e = side.eps_row(i, k);
        for (int64_t c = 0; c < dim; ++c) {
          const T g = T(2) * (rowsum * zr[c] - pr[c]);
          acc_mu[c] += g;
          acc_lv[c] += g * e[c];
        }
      } else {
        for (int64_t c = 0; c < dim; ++c) {
          const T g = T(2) * (rowsum * zr[c] - pr[c]);
          acc_mu[c] += g;
          acc_lv[c] += g * load<T>(side.eps, i * side.samples + k, c);
        }
      }
    }
    const T* sigma = side.sigma_row(i);
    if (grad_mean.present())
      for (int64_t c = 0; c < dim; ++c) at<T>(grad_mean, i, c) += acc_mu[c];
    if (grad_logvar.present())
      for (int64_t c = 0; c < dim; ++c) at<T>(grad_logvar, i, c) += T(0.5) * sigma[c] * acc_lv[c];
  }
}

template <typename T, bool kSquared>
void backward_tile(const Problem<T>& pb, const MatchProbBackwardParams& p, int64_t qi, int64_t gj,
                   bool build_a, BackwardWorkspace<T>& ws) {
  Tile<T>& tile = ws.tile;
  tile.load(pb, qi, gj, build_a);
  tile.dot_products(pb, ws.w.data());
  const Passes<T, kSquared>& pass = passes<T, kSquared>();
  const int64_t j = pb.j, dim = pb.a.dim, ld = dim + 1;
  const int64_t rows = tile.rows, cols = tile.cols, items = tile.items;
  // log of the smallest unscaled sum the fast path takes
  const double log_fast = std::log(fast_floor<T>(j)) - Limits<T>::kScaleExp;
  const T scale = static_cast<T>(pb.scale), shift = static_cast<T>(pb.shift);
  for (int64_t i = tile.i0; i < tile.i1; ++i) {
    // Per gallery item: alpha = g_p / (exp(K) S_p), beta = g_q / (exp(K) S_q) (S = J^2 exp(saved
    // log)), or 0 where the smaller sum is below the fast path's floor: those pairs take the
    // exact path below.
    ws.exact.clear();
    for (int64_t g = 0; g < items; ++g) {
      const int64_t jg = tile.j0 + g;
      const double gp = p.grad_log_p.present() ? double(load<T>(p.grad_log_p, i, jg)) : 0.0;
      const double gq = p.grad_log_q.present() ? double(load<T>(p.grad_log_q, i, jg)) : 0.0;
      const double log_sp = double(load<T>(p.log_p, i, jg)) + pb.log_j2;
      const double log_sq = double(load<T>(p.log_q, i, jg)) + pb.log_j2;
      T al = 0, be = 0;
      if (std::min(log_sp, log_sq) >= log_fast) {
        al = static_cast<T>(gp * std::exp(-log_sp - Limits<T>::kScaleExp));
        be = static_cast<T>(gq * std::exp(-log_sq - Limits<T>::kScaleExp));
      } else {
        ws.exact.push_back(g);
      }
      ws.alpha[static_cast<size_t>(g)] = al;
      ws.beta[static_cast<size_t>(g)] = be;
    }
    for (int64_t t = 0; t < j; ++t) {
      std::copy_n(ws.alpha.begin(), items, ws.alpha_col.begin() + t * items);
      std::copy_n(ws.beta.begin(), items, ws.beta_col.begin() + t * items);
    }
    T* w_i = ws.w.data() + (i - tile.i0) * j * cols;
    const T* row_norm = tile.row_norm.data() + (i - tile.i0) * j;
    // Exact-path weights first (they read the dot products), put back after the row pass, which
    // writes 0 there (alpha = beta = 0).
    ws.exact_w.clear();
    for (int64_t g : ws.exact) {
      const int64_t jg = tile.j0 + g;
      const T gp = p.grad_log_p.present() ? load<T>(p.grad_log_p, i, jg) : T(0);
      const T gq = p.grad_log_q.present() ? load<T>(p.grad_log_q, i, jg) : T(0);
      const T log_sp = static_cast<T>(double(load<T>(p.log_p, i, jg)) + pb.log_j2);
      const T log_sq = static_cast<T>(double(load<T>(p.log_q, i, jg)) + pb.log_j2);
      for (int64_t s = 0; s < j; ++s)
        for (int64_t t = 0; t < j; ++t) {
          const int64_t c = t * items + g;
          const T dist = sample_distance<T, kSquared>(
              row_norm[s] + tile.col_norm[static_cast<size_t>(c)] - T(2) * w_i[s * cols + c], T(0));
          const T l = shift - scale * dist;
          const T log_ss = log_sigmoid(l) + log_sigmoid(-l);  // log sigmoid(l) sigmoid(-l)
          // log_ss <= log S of either side, so neither exponential overflows.
          const T dl = gp * std::exp(log_ss - log_sp) - gq * std::exp(log_ss - log_sq);
          ws.grad_shift += double(dl);
          ws.grad_scale -= double(dl) * double(dist);
          ws.exact_w.push_back(kSquared ? -scale * dl : dl * (-scale / (T(2) * dist)));
        }
    }
    for (int64_t s = 0; s < j; ++s)
      pass.backward_row(pb.row, cols, row_norm[s], w_i + s * cols, tile.col_norm.data(),
                        ws.alpha_col.data(), ws.beta_col.data(), ws.d_shift.data(),
                        ws.d_scale.data());
    size_t next = 0;
    for (int64_t g : ws.exact)
      for (int64_t s = 0; s < j; ++s)
        for (int64_t t = 0; t < j; ++t) w_i[s * cols + t * items + g] = ws.exact_w[next++];
  }
  for (int64_t c = 0; c < cols; ++c) {
    ws.grad_shift += double(ws.d_shift[static_cast<size_t>(c)]);
    ws.grad_scale += double(ws.d_scale[static_cast<size_t>(c)]);
    ws.d_shift[static_cast<size_t>(c)] = 0;
    ws.d_scale[static_cast<size_t>(c)] = 0;
  }

  if (p.grad_a_mean.present() || p.grad_a_logvar.present()) {
    // [rows, D + 1] = W @ [Z_b | 1]
    gemm_into<T>(rows, ld, cols, {ws.w.data(), cols, 1}, {tile.zb.data(), ld, 1},
                 ws.prod_a.data(), ld);
    fold_side(pb.a, tile.i0, tile.i1, false, tile.za.data(), ws.prod_a.data(), p.grad_a_mean,
              p.grad_a_logvar, ws.acc_mu.data(), ws.acc_lv.data());
  }
  if (p.grad_b_mean.present() || p.grad_b_logvar.present()) {
    // [cols, D + 1] = W^T @ [Z_a | 1]
    gemm_into<T>(cols, ld, rows, {ws.w.data(), 1, cols}, {tile.za.data(), ld, 1},
                 ws.prod_b.data(), ld);
    fold_side(pb.b, tile.j0, tile.j1, true, tile.zb.data(), ws.prod_b.data(), p.grad_b_mean,
              p.grad_b_logvar, ws.acc_mu.data(), ws.acc_lv.data());
  }
}

template <typename T>
void zero_view(const MatrixView& v, int num_threads) {
  if (!v.present()) return;
  parallel_for(0, v.rows, 256, num_threads, [&](int64_t lo, int64_t hi, int) {
    for (int64_t r = lo; r < hi; ++r)
      for (int64_t c = 0; c < v.cols; ++c) at<T>(v, r, c) = T(0);
  });
}

template <typename T, bool kSquared>
void backward_typed(const MatchProbBackwardParams& p) {
  const int nt = resolve_threads(p.num_threads);
  for (const MatrixView* v : {&p.grad_a_mean, &p.grad_a_logvar, &p.grad_b_mean, &p.grad_b_logvar})
    zero_view<T>(*v, nt);
  double grad_scale = 0, grad_shift = 0;
  const int64_t j = p.num_samples;
  if (p.a_mean.rows > 0 && p.b_mean.rows > 0) {
    const Side<T> a(p.a_mean, p.a_logvar, p.eps_a, j, nt);
    const Side<T> b(p.b_mean, p.b_logvar, p.eps_b, j, nt);
    const Problem<T> pb{a, b, j, p.scale, p.shift, 2.0 * std::log(double(j)),
                        plan_blocks(a.rows, b.rows, j, nt)};
    const int64_t nqb = pb.blocks.nqb, ngb = pb.blocks.ngb;
    const bool need_a = p.grad_a_mean.present() || p.grad_a_logvar.present();
    const bool need_b = p.grad_b_mean.present() || p.grad_b_logvar.present();
    // Workers, query groups and gallery groups (contiguous ranges of tiles):
    //  both sides: G x G groups in G steps; in step k worker u takes query group u and gallery
    //    group (u + k) mod G, so no two workers write the gradient of the same item at once;
    //  one side (or scale / shift only): one step; the workers split that side.
    int64_t groups_q = 1, groups_g = 1, steps = 1;
    if (need_a && need_b) {
      groups_q = groups_g = steps = std::max<int64_t>(1, std::min<int64_t>({nt, nqb, ngb}));
    } else if (need_b) {
      groups_g = std::min<int64_t>(nt, ngb);
    } else {
      groups_q = std::min<int64_t>(nt, nqb);
    }
    const int64_t workers = std::max(groups_q, groups_g);
    std::vector<BackwardWorkspace<T>> ws;
    ws.reserve(static_cast<size_t>(workers));
    for (int64_t u = 0; u < workers; ++u) ws.emplace_back(pb);
    for (int64_t k = 0; k < steps; ++k) {
      parallel_for(0, workers, 1, static_cast<int>(workers), [&](int64_t lo, int64_t hi, int) {
        const ScopedFlushDenormals ftz;  // cpu/denormals.h
        for (int64_t u = lo; u < hi; ++u) {
          const int64_t uq = groups_q == 1 ? 0 : u;
          const int64_t ug = groups_g == 1 ? 0 : (u + k) % groups_g;
          const int64_t q_lo = nqb * uq / groups_q, q_hi = nqb * (uq + 1) / groups_q;
          const int64_t g_lo = ngb * ug / groups_g, g_hi = ngb * (ug + 1) / groups_g;
          BackwardWorkspace<T>& w = ws[static_cast<size_t>(u)];
          for (int64_t qi = q_lo; qi < q_hi; ++qi)
            for (int64_t gj = g_lo; gj < g_hi; ++gj)
              backward_tile<T, kSquared>(pb, p, qi, gj, gj == g_lo, w);
        }
      });
    }
    for (const BackwardWorkspace<T>& w : ws) {
      grad_scale += w.grad_scale;
      grad_shift += w.grad_shift;
    }
  }
  if (p.grad_scale_shift.present()) {
    at<T>(p.grad_scale_shift, 0, 0) = static_cast<T>(grad_scale);
    at<T>(p.grad_scale_shift, 0, 1) = static_cast<T>(grad_shift);
  }
}

}  // namespace

void match_prob_forward(const MatchProbForwardParams& p) {
  if (p.log_p.empty()) return;
  const bool f64 = p.a_mean.dtype == DType::Float64;
  if (p.squared) return f64 ? forward_typed<double, true>(p) : forward_typed<float, true>(p);
  return f64 ? forward_typed<double, false>(p) : forward_typed<float, false>(p);
}

void match_prob_backward(const MatchProbBackwardParams& p) {
  const bool f64 = p.a_mean.dtype == DType::Float64;
  if (p.squared) return f64 ? backward_typed<double, true>(p) : backward_typed<float, true>(p);
  return f64 ? backward_typed<double, false>(p) : backward_typed<float, false>(p);
}

}  // namespace pcmekit::cpu
