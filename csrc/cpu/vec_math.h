// Vectorised element-wise math for the CPU kernels' O(N D) passes (the exp of the log-variances,
// the squared norms of the inner-product form) and for the distance BCE's pass, chosen at run
// time like the GEMM micro-kernels.
//
// float runs on 8-lane AVX2 code where the CPU has it; double, and CPUs without AVX2, use the C
// library's exp. The float exp is a degree-6 polynomial after the usual reduction
// x = n ln2 + r, |r| <= ln2 / 2: within 1 ulp of exp rounded once over the whole normal range
// (tests/test_pairwise.py, test_float32_logvar_gradient_is_exp_within_one_ulp). Inputs whose
// result would be subnormal, infinite or NaN go through the C library's exp.
#pragma once

#include <cstdint>

namespace pcmekit::cpu {

// y[i] = exp(x[i]) for i < n; x may equal y.
void exp_array(const float* x, float* y, int64_t n);
void exp_array(const double* x, double* y, int64_t n);

// sum_i mu[i]^2 + (lv ? sum_i exp(lv[i]) : 0), accumulated in double.
double sum_squares_exp(const float* mu, const float* lv, int64_t n);
double sum_squares_exp(const double* mu, const double* lv, int64_t n);

// One row of the distance BCE (pcmekit/bce.h); grad may be d. For j < n, with the logit
// x = (neg_scale * d[j]) + shift (two roundings, as torch computes -scale * d + shift) and the
// label y = target ? target[j] : (j == diag ? 1 : 0):
//   grad[j] = grad_scale * (sigmoid(x) - y)
// and the row's sums, in double, of the loss terms max(x, 0) - x y + log1p(exp(-|x|)), of
// q = sigmoid(x) - y and of q d[j]. The float path computes exp(-|x|) and log1p with AVX2
// polynomials (a few ulp; exp(-|x|) is taken as exp(-87), about 1.6e-38, for |x| > 87 rather than
// going subnormal, and sigmoid(x) is then 0 for x < -87); NaN lanes go through the C library.
struct BceRowSums {
  double loss = 0, q = 0, qd = 0;
};
BceRowSums bce_row(const float* d, const float* target, int64_t diag, float neg_scale, float shift,
                   float grad_scale, float* grad, int64_t n);
BceRowSums bce_row(const double* d, const double* target, int64_t diag, double neg_scale,
                   double shift, double grad_scale, double* grad, int64_t n);

}  // namespace pcmekit::cpu
