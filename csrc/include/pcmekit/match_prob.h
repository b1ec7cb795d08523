// Monte-Carlo match probability of PCME between two sets of diagonal Gaussians (docs/design.md, "The match probability").
//
//   z_as = a_mean[n] + exp(a_logvar[n] / 2) * eps_a[n * J + s]          s < J   (likewise z_bt)
//   d_st = sqrt(||z_as - z_bt||^2 + 1e-6)          (or ||z_as - z_bt||^2 when `squared`)
//   l_st = -scale * d_st + shift
//   log_p[n, m] = logsumexp_{s,t} logsigmoid(l_st)  - 2 log J     (log of p = mean sigmoid(l))
//   log_q[n, m] = logsumexp_{s,t} logsigmoid(-l_st) - 2 log J     (log of 1 - p)
//
// Both outputs are computed in log space, so they are finite and accurate when p rounds to 0 or
// to 1 in the storage type. The noise eps is an input: the same eps gives the same numbers on
// every device (up to rounding). The (N J) x (M J) matrix of sample distances is never stored.
//
// Front end: core/match_prob.cpp (validation, device dispatch); kernels: cpu/match_prob.cpp,
// cuda/match_prob.cu. Dtypes: float32 and float64, computed in their own type (the Python layer
// converts float16/bfloat16 CUDA inputs to float32 first).
#pragma once

#include <cstdint>

#include "pcmekit/precision.h"
#include "pcmekit/view.h"

namespace pcmekit {

// Added under the square root of the Euclidean sample distance (PCME's batchwise_cdist), so that
// d and its gradient stay finite for coinciding samples.
inline constexpr double kMatchDistanceEps = 1e-6;

struct MatchProbForwardParams {
  MatrixView a_mean;    // [N, D]
  MatrixView a_logvar;  // [N, D]
  MatrixView b_mean;    // [M, D]
  MatrixView b_logvar;  // [M, D]
  MatrixView eps_a;     // [N * J, D]: row n * J + s is the noise of sample s of a_n
  MatrixView eps_b;     // [M * J, D]: row m * J + t is the noise of sample t of b_m
  int64_t num_samples = 1;  // J >= 1, samples per embedding (on both sides)
  double scale = 1.0;       // logit = -scale * d + shift; finite
  double shift = 0.0;       // finite
  bool squared = false;     // d = ||z_a - z_b||^2 instead of sqrt(||z_a - z_b||^2 + 1e-6)
  MatrixView log_p;     // [N, M], written: log p, input dtype
  MatrixView log_q;     // [N, M], written: log (1 - p), input dtype
  int num_threads = 0;      // CPU threads; 0 = hardware concurrency
  void* stream = nullptr;   // cudaStream_t on CUDA; nullptr = legacy default stream
  // CUDA, float32: High / Medium run the sample GEMM on TF32 tensor cores (sm_80+, J <= 64;
  // cuda/match_prob_tc.cu), Highest the direct FP32 kernel. float64 and the CPU ignore it.
  MatmulPrecision precision = MatmulPrecision::Highest;
};

// Gradients of  L = sum_{n,m} grad_log_p[n, m] * log_p[n, m] + grad_log_q[n, m] * log_q[n, m]
// with respect to the means, the log-variances (through the reparameterisation z = mu + sigma eps)
// and scale / shift. eps is a constant (it gets no gradient).
struct MatchProbBackwardParams {
  MatrixView grad_log_p;  // [N, M], input dtype; absent = all zeros
  MatrixView grad_log_q;  // [N, M], input dtype; absent = all zeros
  MatrixView log_p;       // [N, M], the forward outputs for these inputs
  MatrixView log_q;       // [N, M]
  MatrixView a_mean;      // [N, D]
  MatrixView a_logvar;    // [N, D]
  MatrixView b_mean;      // [M, D]
  MatrixView b_logvar;    // [M, D]
  MatrixView eps_a;       // [N * J, D]
  MatrixView eps_b;       // [M * J, D]
  int64_t num_samples = 1;  // J
  double scale = 1.0;
  double shift = 0.0;
  bool squared = false;
  // Outputs, written (not accumulated) in the input dtype; an absent view is not computed.
  MatrixView grad_a_mean;       // [N, D]
  MatrixView grad_a_logvar;     // [N, D]
  MatrixView grad_b_mean;       // [M, D]
  MatrixView grad_b_logvar;     // [M, D]
  MatrixView grad_scale_shift;  // [1, 2]: (dL/dscale, dL/dshift)
  int num_threads = 0;
  void* stream = nullptr;
  // Checked as the forward's; the CUDA backward runs on the direct FP32 kernel in every mode.
  MatmulPrecision precision = MatmulPrecision::Highest;
};

// Validates (std::invalid_argument / pcmekit::TypeError naming the field) and runs on the
// device of the inputs.
void match_prob_forward(const MatchProbForwardParams& p);
void match_prob_backward(const MatchProbBackwardParams& p);

namespace cpu {
void match_prob_forward(const MatchProbForwardParams& p);
void match_prob_backward(const MatchProbBackwardParams& p);
}  // namespace cpu

namespace cuda {
void match_prob_forward(const MatchProbForwardParams& p);
void match_prob_backward(const MatchProbBackwardParams& p);
}  // namespace cuda

}  // namespace pcmekit
