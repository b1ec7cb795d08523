// Vectorised element-wise math for the CPU kernels' O(N D) passes (the exp of the log-variances,
// the squared norms of the inner-product form), chosen at run time like the GEMM micro-kernels.
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

}  // namespace pcmekit::cpu
