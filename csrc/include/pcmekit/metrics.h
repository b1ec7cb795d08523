// The metric math of pcmekit, in one place (docs/design.md, "The metrics").
//
// Every metric is a sum over the D dimensions of a per-dimension term t(a_d, b_d) plus a
// constant; the per-dimension term and its four partial derivatives are written once here as
// __host__ __device__ code, so the arithmetic the GPU runs is the arithmetic the CPU tests check.
//
// A dimension of an embedding is given as (mu, lv, var) with var = exp(lv) precomputed by the
// caller, since every pair reuses it. All terms already include the metric's overall factor
// (the 1/2 of kl and elk), so  distance = sum_d term + offset(D).
#pragma once

#include <cmath>
#include <cstdint>

#include "pcmekit/view.h"

namespace pcmekit {

enum class Metric : int { CSD = 0, W2 = 1, L2 = 2, KL = 3, Bhattacharyya = 4, ELK = 5, Inclusion = 6 };

// The largest metric code (the front ends refuse codes above it).
constexpr Metric kLastMetric = Metric::Inclusion;

const char* metric_name(Metric metric);

// Whether the metric reads the log-variances at all (l2 uses the means only).
PCMEKIT_HD constexpr bool metric_needs_logvar(Metric metric) { return metric != Metric::L2; }

// Whether the metric is row term + column term + alpha * <f_a, f_b> (docs/design.md, "The metrics"),
// the form the GEMM engines compute.
PCMEKIT_HD constexpr bool has_inner_product_metric(Metric metric) {
  return metric == Metric::CSD || metric == Metric::W2 || metric == Metric::L2 ||
         metric == Metric::KL;
}

// Partial derivatives of one per-dimension term.
template <typename T>
struct TermGrad {
  T d_mu_a, d_lv_a, d_mu_b, d_lv_b;
};

// csd: Delta^2 + var_a + var_b                       (PCME++ closed-form sampled distance)
struct CsdTerm {
  template <typename T>
  PCMEKIT_HD static T value(T ma, T, T va, T mb, T, T vb) {
    const T d = ma - mb;
    return d * d + va + vb;
  }
  template <typename T>
  PCMEKIT_HD static TermGrad<T> grad(T ma, T, T va, T mb, T, T vb) {
    const T d = ma - mb;
    return {T(2) * d, va, -T(2) * d, vb};
  }
  template <typename T>
  PCMEKIT_HD static T offset(int64_t) { return T(0); }
};

// w2: Delta^2 + (sigma_a - sigma_b)^2, sigma = sqrt(var)   (squared 2-Wasserstein)
struct W2Term {
  template <typename T>
  PCMEKIT_HD static T value(T ma, T, T va, T mb, T, T vb) {
    const T d = ma - mb;
    const T s = sqrt(va) - sqrt(vb);
    return d * d + s * s;
  }
  template <typename T>
  PCMEKIT_HD static TermGrad<T> grad(T ma, T, T va, T mb, T, T vb) {
    const T d = ma - mb;
    const T sa = sqrt(va), sb = sqrt(vb);
    // d sigma / d lv = sigma / 2
    return {T(2) * d, (sa - sb) * sa, -T(2) * d, -(sa - sb) * sb};
  }
  template <typename T>
  PCMEKIT_HD static T offset(int64_t) { return T(0); }
};

// l2: Delta^2 (means only)
struct L2Term {
  template <typename T>
  PCMEKIT_HD static T value(T ma, T, T, T mb, T, T) {
    const T d = ma - mb;
    return d * d;
  }
  template <typename T>
  PCMEKIT_HD static TermGrad<T> grad(T ma, T, T, T mb, T, T) {
    const T d = ma - mb;
    return {T(2) * d, T(0), -T(2) * d, T(0)};
  }
  template <typename T>
  PCMEKIT_HD static T offset(int64_t) { return T(0); }
};

// kl: KL(a || b) = 1/2 [var_a/var_b + Delta^2/var_b - 1 + lv_b - lv_a]
struct KlTerm {
  template <typename T>
  PCMEKIT_HD static T value(T ma, T la, T va, T mb, T lb, T vb) {
    const T d = ma - mb;
    return T(0.5) * ((va + d * d) / vb - T(1) + lb - la);
  }
  template <typename T>
  PCMEKIT_HD static TermGrad<T> grad(T ma, T, T va, T mb, T, T vb) {
    const T d = ma - mb;
    const T inv = T(1) / vb;
    return {d * inv, T(0.5) * (va * inv - T(1)), -d * inv, T(0.5) * (T(1) - (va + d * d) * inv)};
  }
  template <typename T>
  PCMEKIT_HD static T offset(int64_t) { return T(0); }
};

// bhattacharyya: Delta^2 / (4 s) + 1/2 log(s / 2) - (lv_a + lv_b) / 4,  s = var_a + var_b
struct BhattacharyyaTerm {
  template <typename T>
  PCMEKIT_HD static T value(T ma, T la, T va, T mb, T lb, T vb) {
    const T d = ma - mb;
    const T s = va + vb;
    return d * d / (T(4) * s) + T(0.5) * log(T(0.5) * s) - T(0.25) * (la + lb);
  }
  template <typename T>
  PCMEKIT_HD static TermGrad<T> grad(T ma, T, T va, T mb, T, T vb) {
    const T d = ma - mb;
    const T inv = T(1) / (va + vb);
    // d/d s of the s-dependent part, then d s / d lv = var
    const T ds = -T(0.25) * d * d * inv * inv + T(0.5) * inv;
    return {T(0.5) * d * inv, ds * va - T(0.25), -T(0.5) * d * inv, ds * vb - T(0.25)};
  }
  template <typename T>
  PCMEKIT_HD static T offset(int64_t) { return T(0); }
};

// elk: 1/2 [Delta^2 / s + log s] per dimension, plus D/2 log(2 pi);  s = var_a + var_b
struct ElkTerm {
  template <typename T>
  PCMEKIT_HD static T value(T ma, T, T va, T mb, T, T vb) {
    const T d = ma - mb;
    const T s = va + vb;
    return T(0.5) * (d * d / s + log(s));
  }
  template <typename T>
  PCMEKIT_HD static TermGrad<T> grad(T ma, T, T va, T mb, T, T vb) {
    const T d = ma - mb;
    const T inv = T(1) / (va + vb);
    const T ds = T(0.5) * (inv - d * d * inv * inv);
    return {d * inv, ds * va, -d * inv, ds * vb};
  }
  template <typename T>
  PCMEKIT_HD static T offset(int64_t dim) {
    return T(0.5) * T(dim) * T(1.8378770664093454835606594728112);  // log(2 pi)
  }
};

// inclusion: how far a is from being included in b (ProLIP's inclusion measure; docs/design.md,
// "The metrics"). Not symmetric: inclusion(a, b) = -inclusion(b, a), and the smaller (the more
// negative) it is, the more a lies inside b. With s1 = var_a + 2 var_b, s2 = 2 var_a + var_b,
// per dimension
//   lv_a - lv_b + 1/2 log(s1 / s2) + Delta^2 (1 / s1 - 1 / s2),
// which is minus ProLIP's logit test(a in b) - test(b in a) at eps = 0. Written as
// 1/2 log1p((var_b - var_a) / s2) and Delta^2 (var_a - var_b) / (s1 s2), so that nothing cancels
// when var_a ~ var_b (where the term tends to lv_a - lv_b).
struct InclusionTerm {
  template <typename T>
  PCMEKIT_HD static T value(T ma, T la, T va, T mb, T lb, T vb) {
    const T d = ma - mb;
    const T s1 = va + T(2) * vb, s2 = T(2) * va + vb;
    return la - lb + T(0.5) * log1p((vb - va) / s2) + d * d * (va - vb) / (s1 * s2);
  }
  template <typename T>
  PCMEKIT_HD static TermGrad<T> grad(T ma, T, T va, T mb, T, T vb) {
    const T d = ma - mb;
    const T i1 = T(1) / (va + T(2) * vb), i2 = T(1) / (T(2) * va + vb);
    const T d2 = d * d;
    const T dm = T(2) * d * (i1 - i2);
    // d s1 / d var_a = 1, d s2 / d var_a = 2 (and 2, 1 for var_b); then d var / d lv = var.
    const T dva = T(0.5) * (i1 - T(2) * i2) + d2 * (T(2) * i2 * i2 - i1 * i1);
    const T dvb = T(0.5) * (T(2) * i1 - i2) + d2 * (i2 * i2 - T(2) * i1 * i1);
    return {dm, T(1) + va * dva, -dm, -T(1) + vb * dvb};
  }
  template <typename T>
  PCMEKIT_HD static T offset(int64_t) { return T(0); }
};

// Calls f(Term{}) with the term type of `metric`: the one switch from the runtime enum to the
// compile-time functor that both back ends use.
template <typename F>
PCMEKIT_HD decltype(auto) visit_metric(Metric metric, F&& f) {
  switch (metric) {
    case Metric::W2: return f(W2Term{});
    case Metric::L2: return f(L2Term{});
    case Metric::KL: return f(KlTerm{});
    case Metric::Bhattacharyya: return f(BhattacharyyaTerm{});
    case Metric::ELK: return f(ElkTerm{});
    case Metric::Inclusion: return f(InclusionTerm{});
    case Metric::CSD:
    default: return f(CsdTerm{});
  }
}

}  // namespace pcmekit
