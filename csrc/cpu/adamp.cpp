// CPU kernel of the fused AdamP / SGDP step (pcmekit/adamp.h has the formulas).
//
// Work plan, per parameter: pass 1 updates the optimizer state and, for a projectable weight,
// accumulates per row <g, w>, |g|^2, |w|^2 and <w, u> (u: the unprojected update); a decision
// step on those sums; pass 2 recomputes u from the state just written (bit for bit the same u),
// projects it, decays and steps the weight. A non-projectable parameter needs one pass.
//
// Parallelism: parameters smaller than half a thread's share of all elements are handed out
// whole, largest first to the least loaded thread, so each one's two passes run back to back on
// one core (its second pass then mostly reads from cache) and the whole list needs one
// parallel_for. Larger parameters are split by rows, one parameter at a time. Every sum is
// accumulated in fixed lanes in a fixed order, so the results do not depend on the thread count
// or on the instruction set.
//
// Rounding: this file is compiled with -ffp-contract=off, and FMAs are written out (fused_mul_add)
// exactly where torch's CPU kernels use one (add_ with alpha: g * alpha + x; addcmul_:
// (value * a) * b + x), so the element-wise arithmetic is the reference's, except that the square
// root is IEEE's (torch's CPU sqrt is not correctly rounded for every input).
//
// Vectorisation: the element-wise loops are plain and left to the compiler, compiled once per
// instruction set through a target attribute (the library itself is built without -march); the
// per-row sums, which GCC vectorises poorly (float-to-double widening in a reduction), are
// written with AVX2 intrinsics, with a portable twin that adds the same lanes in the same order.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "cpu/isa.h"
#include "cpu/parallel.h"
#include "pcmekit/adamp.h"

#if defined(__x86_64__) || defined(__i386__)
#define PCMEKIT_ADAMP_X86 1
#define PCMEKIT_ADAMP_AVX2 __attribute__((target("avx2,fma")))
#include <immintrin.h>
#endif

#define PCMEKIT_INLINE __attribute__((always_inline)) inline

namespace pcmekit::cpu {
namespace {

// Fewer elements than this per thread are not worth a thread.
constexpr int64_t kMinElementsPerThread = int64_t(1) << 15;

template <typename T>
PCMEKIT_INLINE T fused_mul_add(T a, T b, T c) {
  return std::fma(a, b, c);
}

// Per-parameter constants, rounded to the parameter's dtype as torch rounds a Python scalar.
template <typename T>
struct Constants {
  T beta1, one_minus_beta1, beta2, one_minus_beta2, root_bc2;  // AdamP
  T momentum, one_minus_dampening;                             // SGDP
  T eps;  // AdamP's denominator; the projection's norm (both)
  T neg_step;                  // -step_size: AdamP lr / (1 - beta1^t), SGDP lr
  T decay_plain, decay_projected;  // weight factor without / with projection (1 without decay)
};

template <typename T>
Constants<T> make_constants(const AdamPStepParams& p, int64_t step) {
  Constants<T> c{};
  const bool adam = p.algorithm == ProjectedOptimizer::AdamP;
  double step_size = p.lr;
  double decay_plain = 1.0, decay_projected = 1.0;
  if (adam) {
    // The reference's Python arithmetic, in its order.
    const double bias_correction1 = 1.0 - std::pow(p.beta1, double(step));
    const double bias_correction2 = 1.0 - std::pow(p.beta2, double(step));
    step_size = p.lr / bias_correction1;
    c.beta1 = T(p.beta1);
    c.one_minus_beta1 = T(1.0 - p.beta1);
    c.beta2 = T(p.beta2);
    c.one_minus_beta2 = T(1.0 - p.beta2);
    c.root_bc2 = T(std::sqrt(bias_correction2));
    if (p.weight_decay > 0) {
      decay_plain = 1.0 - p.lr * p.weight_decay * 1.0;
      decay_projected = 1.0 - p.lr * p.weight_decay * p.wd_ratio;
    }
  } else {
    c.momentum = T(p.momentum);
    c.one_minus_dampening = T(1.0 - p.dampening);
    if (p.weight_decay > 0) {
      decay_plain = 1.0 - p.lr * p.weight_decay * 1.0 / (1.0 - p.momentum);
      decay_projected = 1.0 - p.lr * p.weight_decay * p.wd_ratio / (1.0 - p.momentum);
    }
  }
  c.eps = T(p.eps);
  c.neg_step = T(-step_size);
  c.decay_plain = T(decay_plain);
  c.decay_projected = T(decay_projected);
  return c;
}

// The element-wise rules. advance() updates the state from the raw gradient and returns the
// update u; update() recomputes the same u from the state advance() wrote.
template <typename T, bool Nesterov>
struct AdamRule {
  static constexpr bool kSecondState = true;
  static constexpr bool kGradInPass2 = Nesterov;
  static constexpr bool kBufferIsUpdate = false;
  static PCMEKIT_INLINE T update(const Constants<T>& c, T g, T m, T v) {
    const T denom = std::sqrt(v) / c.root_bc2 + c.eps;
    if constexpr (Nesterov)
      return (c.beta1 * m + c.one_minus_beta1 * g) / denom;
    else
      return m / denom;
  }
  static PCMEKIT_INLINE T advance(const Constants<T>& c, T g, T& m, T& v) {
    m = fused_mul_add(g, c.one_minus_beta1, m * c.beta1);          // m.mul_(b1).add_(g, alpha=1-b1)
    v = fused_mul_add(c.one_minus_beta2 * g, g, v * c.beta2);      // v.mul_(b2).addcmul_(g, g, value=1-b2)
    return update(c, g, m, v);
  }
};

template <typename T, bool Nesterov>
struct SgdRule {
  static constexpr bool kSecondState = false;
  static constexpr bool kGradInPass2 = Nesterov;
  static constexpr bool kBufferIsUpdate = !Nesterov;  // the reference's d_p = buf
  static PCMEKIT_INLINE T update(const Constants<T>& c, T g, T b, T /*unused*/) {
    if constexpr (Nesterov)
      return g + c.momentum * b;
    else
      return b;
  }
  static PCMEKIT_INLINE T advance(const Constants<T>& c, T g, T& b, T& /*unused*/) {
    b = fused_mul_add(g, c.one_minus_dampening, b * c.momentum);  // b.mul_(mom).add_(g, alpha=1-damp)
    return update(c, g, b, b);
  }
};

// One parameter's work and its outcome.
template <typename T>
struct Job {
  T* w = nullptr;
  const T* g = nullptr;
  T* s0 = nullptr;  // exp_avg or the momentum buffer
  T* s1 = nullptr;  // exp_avg_sq (AdamP); SGDP: null
  int64_t rows = 0, cols = 0;
  bool projectable = false;
  Constants<T> c{};
  double* sums = nullptr;  // [rows][4]: <g, w>, |g|^2, |w|^2, <w, u> per row (projectable only)
  Projection kind = Projection::None;
  T layer_scale = T(1), layer_coef = T(0);  // the layer view's |w| + eps and <w, u> / (|w| + eps)
  int64_t numel() const { return rows * cols; }
};

// Lanes of the per-row sums: 32 bytes of T, whatever the instruction set, so the sums (and with
// them every result) are the same on every path.
template <typename T>
constexpr int kLanes = int(32 / sizeof(T));

// Elements per chunk of pass 1: the updates of one chunk wait on the stack (in L1) for the sums.
constexpr int64_t kChunk = 512;

template <typename T>
using LaneSums = double[4][kLanes<T>];

// Adds <g, w>, |g|^2, |w|^2, <w, u> of elements [j, n) into per-lane sums, element j + l into
// lane l mod L. Every path below adds the same products in the same order.
template <typename T>
PCMEKIT_INLINE void accumulate_tail(int64_t j, int64_t n, const T* g, const T* w, const T* u,
                                    LaneSums<T>& acc) {
  for (int l = 0; j < n; ++j, l = (l + 1) % kLanes<T>) {
    const double gd = double(g[j]), wd = double(w[j]), ud = double(u[j]);
    acc[0][l] += gd * wd;
    acc[1][l] += gd * gd;
    acc[2][l] += wd * wd;
    acc[3][l] += wd * ud;
  }
}

struct PortableSums {
  template <typename T>
  static void run(int64_t n, const T* g, const T* w, const T* u, LaneSums<T>& acc) {
    accumulate_tail<T>(0, n, g, w, u, acc);
  }
};

#ifdef PCMEKIT_ADAMP_X86
// The same sums with AVX2: float lanes are widened to double (products of two floats are exact
// in double, so the FMA rounds as the portable multiply-then-add does); double lanes multiply
// and add separately, as the portable code does.
struct Avx2Sums {
  static PCMEKIT_ADAMP_AVX2 void run(int64_t n, const float* g, const float* w, const float* u,
                                     LaneSums<float>& acc) {
    __m256d a[4][2];
    for (int s = 0; s < 4; ++s)
      for (int h = 0; h < 2; ++h) a[s][h] = _mm256_loadu_pd(&acc[s][4 * h]);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      const __m256 gv = _mm256_loadu_ps(g + j), wv = _mm256_loadu_ps(w + j), uv = _mm256_loadu_ps(u + j);
      const __m256d gd[2] = {_mm256_cvtps_pd(_mm256_castps256_ps128(gv)), _mm256_cvtps_pd(_mm256_extractf128_ps(gv, 1))};
      const __m256d wd[2] = {_mm256_cvtps_pd(_mm256_castps256_ps128(wv)), _mm256_cvtps_pd(_mm256_extractf128_ps(wv, 1))};
      const __m256d ud[2] = {_mm256_cvtps_pd(_mm256_castps256_ps128(uv)), _mm256_cvtps_pd(_mm256_extractf128_ps(uv, 1))};
      for (int h = 0; h < 2; ++h) {
        a[0][h] = _mm256_fmadd_pd(gd[h], wd[h], a[0][h]);
        a[1][h] = _mm256_fmadd_pd(gd[h], gd[h], a[1][h]);
        a[2][h] = _mm256_fmadd_pd(wd[h], wd[h], a[2][h]);
        a[3][h] = _mm256_fmadd_pd(wd[h], ud[h], a[3][h]);
      }
    }
    for (int s = 0; s < 4; ++s)
      for (int h = 0; h < 2; ++h) _mm256_storeu_pd(&acc[s][4 * h], a[s][h]);
    accumulate_tail<float>(j, n, g, w, u, acc);
  }
  static PCMEKIT_ADAMP_AVX2 void run(int64_t n, const double* g, const double* w, const double* u,
                                     LaneSums<double>& acc) {
    __m256d a[4];
    for (int s = 0; s < 4; ++s) a[s] = _mm256_loadu_pd(acc[s]);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      const __m256d gd = _mm256_loadu_pd(g + j), wd = _mm256_loadu_pd(w + j), ud = _mm256_loadu_pd(u + j);
      a[0] = _mm256_add_pd(a[0], _mm256_mul_pd(gd, wd));
      a[1] = _mm256_add_pd(a[1], _mm256_mul_pd(gd, gd));
      a[2] = _mm256_add_pd(a[2], _mm256_mul_pd(wd, wd));
      a[3] = _mm256_add_pd(a[3], _mm256_mul_pd(wd, ud));
    }
    for (int s = 0; s < 4; ++s) _mm256_storeu_pd(acc[s], a[s]);
    accumulate_tail<double>(j, n, g, w, u, acc);
  }
};
#endif

// Pass 1 on one row of n elements: state update and the row's four sums into out[0..3].
template <typename T, typename Rule, typename Sums>
PCMEKIT_INLINE void pass1_row_impl(const Constants<T>& c, int64_t n, const T* __restrict g,
                                   const T* __restrict w, T* __restrict s0, T* __restrict s1,
                                   double* out) {
  constexpr int L = kLanes<T>;
  double acc[4][L] = {};
  T u[kChunk];
  for (int64_t j0 = 0; j0 < n; j0 += kChunk) {
    const int64_t m = std::min(kChunk, n - j0);
    const T* gc = g + j0;
    T* a = s0 + j0;
    for (int64_t k = 0; k < m; ++k) {
      T x = a[k];
      T y = Rule::kSecondState ? s1[j0 + k] : T(0);
      u[k] = Rule::advance(c, gc[k], x, y);
      a[k] = x;
      if constexpr (Rule::kSecondState) s1[j0 + k] = y;
    }
    // Chunks are whole numbers of lanes, so lane l always sums the elements l mod L of the row.
    Sums::run(m, gc, w + j0, u, acc);
  }
  for (int s = 0; s < 4; ++s) {
    double* a = acc[s];
    for (int width = L / 2; width >= 1; width /= 2)
      for (int l = 0; l < width; ++l) a[l] += a[l + width];
    out[s] = a[0];
  }
}

// Pass 1 for rows [r0, r1) of a projectable weight.
template <typename T, typename Rule, typename Sums>
PCMEKIT_INLINE void pass1_impl(const Job<T>& job, int64_t r0, int64_t r1) {
  const int64_t n = job.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * n;
    T* s1 = Rule::kSecondState ? job.s1 + o : nullptr;
    pass1_row_impl<T, Rule, Sums>(job.c, n, job.g + o, job.w + o, job.s0 + o, s1, job.sums + 4 * r);
  }
}

// The whole step for elements [e0, e1) of a parameter that is never projected.
template <typename T, typename Rule>
PCMEKIT_INLINE void single_pass_impl(const Job<T>& job, int64_t e0, int64_t e1) {
  const Constants<T> c = job.c;
  const T decay = c.decay_plain, neg_step = c.neg_step;
  const T* __restrict g = job.g;
  T* __restrict w = job.w;
  T* __restrict s0 = job.s0;
  T* __restrict s1 = job.s1;
  for (int64_t k = e0; k < e1; ++k) {
    T a = s0[k];
    T b = Rule::kSecondState ? s1[k] : T(0);
    const T u = Rule::advance(c, g[k], a, b);
    s0[k] = a;
    if constexpr (Rule::kSecondState) s1[k] = b;
    w[k] = fused_mul_add(u, neg_step, w[k] * decay);
  }
}

// One row of pass 2: u recomputed, projected with (scale, coef) when `project`, then
// w = (w * decay) - step_size * u.
template <typename T, typename Rule, bool Project>
PCMEKIT_INLINE void pass2_row(const Constants<T>& c, int64_t n, const T* __restrict g,
                              T* __restrict w, T* __restrict s0, const T* __restrict s1, T decay,
                              T scale, T coef) {
  const T neg_step = c.neg_step;
  for (int64_t k = 0; k < n; ++k) {
    const T gk = Rule::kGradInPass2 ? g[k] : T(0);
    const T b = Rule::kSecondState ? s1[k] : T(0);
    T u = Rule::update(c, gk, s0[k], b);
    if constexpr (Project) {
      u = u - (w[k] / scale) * coef;  // the reference's perturb -= p_n * coef, p_n = p / scale
      if constexpr (Rule::kBufferIsUpdate) s0[k] = u;
    }
    w[k] = fused_mul_add(u, neg_step, w[k] * decay);
  }
}

template <typename T, typename Rule>
PCMEKIT_INLINE void pass2_impl(const Job<T>& job, int64_t r0, int64_t r1) {
  const int64_t n = job.cols;
  const Constants<T>& c = job.c;
  const T eps = c.eps;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * n;
    const T* g = job.g + o;
    const T* s1 = Rule::kSecondState ? job.s1 + o : nullptr;
    T *w = job.w + o, *s0 = job.s0 + o;
    switch (job.kind) {
      case Projection::None:
        pass2_row<T, Rule, false>(c, n, g, w, s0, s1, c.decay_plain, T(1), T(0));
        break;
      case Projection::Channel: {
        const double* s = job.sums + 4 * r;
        const T scale = T(std::sqrt(s[2])) + eps;  // the reference's norm(dim=1).add_(eps)
        const T coef = T(s[3] / double(scale));
        pass2_row<T, Rule, true>(c, n, g, w, s0, s1, c.decay_projected, scale, coef);
        break;
      }
      case Projection::Layer:
        pass2_row<T, Rule, true>(c, n, g, w, s0, s1, c.decay_projected, job.layer_scale,
                                 job.layer_coef);
        break;
    }
  }
}

// Entry points for one (dtype, algorithm, nesterov) combination on one instruction set.
template <typename T>
struct Kernels {
  void (*pass1)(const Job<T>&, int64_t, int64_t);
  void (*single)(const Job<T>&, int64_t, int64_t);
  void (*pass2)(const Job<T>&, int64_t, int64_t);
};

template <typename T, typename Rule>
void pass1_generic(const Job<T>& j, int64_t a, int64_t b) { pass1_impl<T, Rule, PortableSums>(j, a, b); }
template <typename T, typename Rule>
void single_generic(const Job<T>& j, int64_t a, int64_t b) { single_pass_impl<T, Rule>(j, a, b); }
template <typename T, typename Rule>
void pass2_generic(const Job<T>& j, int64_t a, int64_t b) { pass2_impl<T, Rule>(j, a, b); }

#ifdef PCMEKIT_ADAMP_X86
template <typename T, typename Rule>
PCMEKIT_ADAMP_AVX2 void pass1_avx2(const Job<T>& j, int64_t a, int64_t b) { pass1_impl<T, Rule, Avx2Sums>(j, a, b); }
template <typename T, typename Rule>
PCMEKIT_ADAMP_AVX2 void single_avx2(const Job<T>& j, int64_t a, int64_t b) { single_pass_impl<T, Rule>(j, a, b); }
template <typename T, typename Rule>
PCMEKIT_ADAMP_AVX2 void pass2_avx2(const Job<T>& j, int64_t a, int64_t b) { pass2_impl<T, Rule>(j, a, b); }
#endif

template <typename T, typename Rule>
Kernels<T> kernels_for(bool avx2) {
#ifdef PCMEKIT_ADAMP_X86
  if (avx2) return {pass1_avx2<T, Rule>, single_avx2<T, Rule>, pass2_avx2<T, Rule>};
#endif
  (void)avx2;
  return {pass1_generic<T, Rule>, single_generic<T, Rule>, pass2_generic<T, Rule>};
}

template <typename T>
Kernels<T> select_kernels(const AdamPStepParams& p) {
  // The process's choice of instruction set (cpu/isa.h: it honours PCMEKIT_CPU_CAPABILITY);
  // AVX-512 parts get the AVX2 code: the step is bound by memory, not by vector width.
  const bool avx2 = cpu_isa() != Isa::generic;
  const bool adam = p.algorithm == ProjectedOptimizer::AdamP;
  if (adam)
    return p.nesterov ? kernels_for<T, AdamRule<T, true>>(avx2) : kernels_for<T, AdamRule<T, false>>(avx2);
  return p.nesterov ? kernels_for<T, SgdRule<T, true>>(avx2) : kernels_for<T, SgdRule<T, false>>(avx2);
}

// The scale-invariance test on pass 1's sums (adamp's _projection, on exact-ish sums).
template <typename T>
void decide(Job<T>& job, const AdamPStepParams& p) {
  job.kind = Projection::None;
  if (!job.projectable || job.numel() == 0) return;
  // torch clamps the norms at eps and compares with the threshold in the parameter's dtype.
  const double eps = double(T(p.eps));
  auto cosine = [eps](double dot, double gg, double ww) {
    return std::fabs(dot) / (std::max(std::sqrt(gg), eps) * std::max(std::sqrt(ww), eps));
  };
  const double channel_threshold = double(T(p.delta / std::sqrt(double(job.cols))));
  bool channel = true;
  double dot = 0, gg = 0, ww = 0, wu = 0;
  for (int64_t r = 0; r < job.rows; ++r) {
    const double* s = job.sums + 4 * r;
    if (!(cosine(s[0], s[1], s[2]) < channel_threshold)) channel = false;  // NaN fails
    dot += s[0];
    gg += s[1];
    ww += s[2];
    wu += s[3];
  }
  if (channel) {
    job.kind = Projection::Channel;
    return;
  }
  const double layer_threshold = double(T(p.delta / std::sqrt(double(job.numel()))));
  if (cosine(dot, gg, ww) < layer_threshold) {
    job.kind = Projection::Layer;
    job.layer_scale = T(std::sqrt(ww)) + job.c.eps;
    job.layer_coef = T(wu / double(job.layer_scale));
  }
}

template <typename T>
void run(const AdamPStepParams& p) {
  const Kernels<T> k = select_kernels<T>(p);
  const int64_t count = p.count;
  std::vector<Job<T>> jobs(static_cast<size_t>(count));
  int64_t sum_rows = 0, total = 0;
  for (int64_t i = 0; i < count; ++i) {
    const AdamPTensor& t = p.tensors[i];
    Job<T>& j = jobs[i];
    j.w = static_cast<T*>(t.param.data);
    j.g = static_cast<const T*>(t.grad.data);
    j.s0 = static_cast<T*>(t.exp_avg.data);
    j.s1 = static_cast<T*>(t.exp_avg_sq.data);
    j.rows = t.param.rows;
    j.cols = t.param.cols;
    j.projectable = t.projectable && j.numel() > 0;
    j.c = make_constants<T>(p, t.step);
    if (j.projectable) sum_rows += j.rows;
    total += j.numel();
  }
  std::vector<double> sums(static_cast<size_t>(4 * sum_rows));
  for (int64_t i = 0, offset = 0; i < count; ++i) {
    if (!jobs[i].projectable) continue;
    jobs[i].sums = sums.data() + 4 * offset;
    offset += jobs[i].rows;
  }

  auto whole = [&](Job<T>& j) {
    if (j.numel() == 0) return;
    if (!j.projectable) {
      k.single(j, 0, j.numel());
      return;
    }
    k.pass1(j, 0, j.rows);
    decide(j, p);
    k.pass2(j, 0, j.rows);
  };

  int threads = resolve_threads(p.num_threads);
  threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, total / kMinElementsPerThread)));
  if (threads == 1) {
    for (Job<T>& j : jobs) whole(j);
  } else {
    // Split the large parameters by rows (or elements), one at a time.
    const int64_t share = total / threads;
    std::vector<int64_t> small;
    for (int64_t i = 0; i < count; ++i) {
      Job<T>& j = jobs[i];
      const bool splittable = !j.projectable || j.rows >= 2 * threads;
      if (j.numel() == 0 || !splittable || 2 * j.numel() <= share) {
        small.push_back(i);
        continue;
      }
      if (!j.projectable) {
        parallel_for(0, j.numel(), kMinElementsPerThread, threads,
                     [&](int64_t a, int64_t b, int) { k.single(j, a, b); });
        continue;
      }
      const int64_t grain = std::max<int64_t>(1, kMinElementsPerThread / std::max<int64_t>(1, j.cols));
      parallel_for(0, j.rows, grain, threads, [&](int64_t a, int64_t b, int) { k.pass1(j, a, b); });
      decide(j, p);
      parallel_for(0, j.rows, grain, threads, [&](int64_t a, int64_t b, int) { k.pass2(j, a, b); });
    }
    // The rest whole, largest first to the least loaded thread.
    std::stable_sort(small.begin(), small.end(),
                     [&](int64_t a, int64_t b) { return jobs[a].numel() > jobs[b].numel(); });
    std::vector<std::vector<int64_t>> bins(static_cast<size_t>(threads));
    std::vector<int64_t> load(static_cast<size_t>(threads), 0);
    for (int64_t i : small) {
      const size_t t = size_t(std::min_element(load.begin(), load.end()) - load.begin());
      bins[t].push_back(i);
      load[t] += jobs[i].numel() + 64;  // + a little for the per-parameter overhead
    }
    parallel_for(0, threads, 1, threads, [&](int64_t a, int64_t b, int) {
      for (int64_t t = a; t < b; ++t)
        for (int64_t i : bins[size_t(t)]) whole(jobs[size_t(i)]);
    });
  }
  for (int64_t i = 0; i < count; ++i) p.projections[i] = jobs[i].kind;
}

}  // namespace

void adamp_step(const AdamPStepParams& p) {
  if (p.count == 0) return;
  if (p.tensors[0].param.dtype == DType::Float64)
    run<double>(p);
  else
    run<float>(p);
}

}  // namespace pcmekit::cpu
