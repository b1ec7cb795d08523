// Pairwise probabilistic distances between two sets of diagonal Gaussians.
//
//   out[i, j] = metric((a_mean[i], a_logvar[i]), (b_mean[j], b_logvar[j]))
//
// Front end: core/pairwise.cpp (validation, device dispatch); kernels: cpu/pairwise.cpp,
// cuda/pairwise.cu.
#pragma once

#include "pcmekit/metrics.h"
#include "pcmekit/precision.h"
#include "pcmekit/view.h"

namespace pcmekit {

struct PairwiseForwardParams {
  MatrixView a_mean;    // [N, D]
  MatrixView a_logvar;  // [N, D]; may be absent when the metric is l2
  MatrixView b_mean;    // [M, D]
  MatrixView b_logvar;  // [M, D]; may be absent when the metric is l2
  MatrixView out;       // [N, M], written; float32 for float16/bfloat16 inputs, else input dtype
  Metric metric = Metric::CSD;
  int num_threads = 0;      // CPU threads; 0 = hardware concurrency
  void* stream = nullptr;   // cudaStream_t on CUDA; nullptr = legacy default stream
  MatmulPrecision precision = MatmulPrecision::Highest;  // CUDA float32 matmul precision
};

struct PairwiseBackwardParams {
  MatrixView grad_out;  // [N, M], dtype of `out`
  MatrixView a_mean;    // [N, D]
  MatrixView a_logvar;  // [N, D]; may be absent when the metric is l2
  MatrixView b_mean;    // [M, D]
  MatrixView b_logvar;  // [M, D]; may be absent when the metric is l2
  // Outputs, written (not accumulated) in the input dtype; an absent view is not computed.
  MatrixView grad_a_mean;    // [N, D]
  MatrixView grad_a_logvar;  // [N, D]
  MatrixView grad_b_mean;    // [M, D]
  MatrixView grad_b_logvar;  // [M, D]
  Metric metric = Metric::CSD;
  int num_threads = 0;
  void* stream = nullptr;
  MatmulPrecision precision = MatmulPrecision::Highest;  // CUDA float32 matmul precision
};

// One side of a backward pass: the side whose gradients are written (own) and the side summed
// over (other). Both back ends compute the two sides as the same pass with the roles swapped.
struct BackwardSide {
  const MatrixView& own_mean;
  const MatrixView& own_logvar;
  const MatrixView& other_mean;
  const MatrixView& other_logvar;
  const MatrixView& grad_mean;
  const MatrixView& grad_logvar;
  bool wanted() const { return grad_mean.present() || grad_logvar.present(); }
};

inline BackwardSide backward_side(const PairwiseBackwardParams& p, bool own_is_b) {
  if (own_is_b)
    return {p.b_mean, p.b_logvar, p.a_mean, p.a_logvar, p.grad_b_mean, p.grad_b_logvar};
  return {p.a_mean, p.a_logvar, p.b_mean, p.b_logvar, p.grad_a_mean, p.grad_a_logvar};
}

// Validates (std::invalid_argument / pcmekit::TypeError naming the field) and runs on the
// device of the inputs.
void pairwise_forward(const PairwiseForwardParams& p);
void pairwise_backward(const PairwiseBackwardParams& p);

namespace detail {
// pairwise_forward's validation alone (the fused pairwise BCE runs it before its own kernels).
void check_pairwise_forward(const PairwiseForwardParams& p);
}  // namespace detail

namespace cpu {
void pairwise_forward(const PairwiseForwardParams& p);
void pairwise_backward(const PairwiseBackwardParams& p);
}  // namespace cpu

namespace cuda {
void pairwise_forward(const PairwiseForwardParams& p);
void pairwise_backward(const PairwiseBackwardParams& p);
}  // namespace cuda

}  // namespace pcmekit
