// BCE-with-logits over an affine map of a distance matrix: the matching loss of PCME++.
//
//   x[i, j]    = shift - scale * distance[i, j]           (the match logits)
//   loss       = w * sum_ij  max(x, 0) - x y + log1p(exp(-|x|))      y = target[i, j]
//   grad[i, j] = dloss / ddistance[i, j] = -scale * w * (sigmoid(x) - y)
//   grad_shift = w * sum_ij (sigmoid(x) - y),   grad_scale = -w * sum_ij (sigmoid(x) - y) distance
//
// with w = 1 / (N M) (mean) or 1 (sum); the target is a dense [N, M] matrix or, when absent, the
// identity (y = 1 where i == j). One pass over the matrix forms the loss and every gradient, so
// the backward pass is the distance kernel's own (pairwise.h) fed with `grad`.
//
// Front end: core/bce.cpp (validation, device dispatch); kernels: cpu/bce.cpp, cuda/bce.cu (and,
// for pairwise_bce on the tensor-core engine, the fused epilogue in cuda/pairwise_tc.cu).
#pragma once

#include <cstdint>

#include "pcmekit/pairwise.h"
#include "pcmekit/view.h"

namespace pcmekit {

// Rows of the CUDA `sums` view: row 0 receives (loss, grad_scale, grad_shift), rows 1.. hold the
// per-block partial sums (at most kBceMaxPartials blocks, a fixed grid for given shapes, so the
// sums are added in the same order on every run).
inline constexpr int64_t kBceMaxPartials = 2048;
inline constexpr int64_t kBceSumsRows = kBceMaxPartials + 1;

struct DistanceBceParams {
  MatrixView distance;  // [N, M] float32 or float64 (CUDA: also float16 / bfloat16)
  MatrixView target;    // [N, M], distance's dtype, values in [0, 1]; absent = identity
  MatrixView grad;      // [N, M], distance's dtype, written: dloss/ddistance; its columns
                        // contiguous; may be `distance` itself (the same view), which it then
                        // overwrites
  double scale = 1;     // rounded to the distance's dtype (float for 16-bit) before use, as torch
  double shift = 0;
  bool mean = true;     // false: sum
  int num_threads = 0;  // CPU threads; 0 = hardware concurrency
  // CUDA only: a [kBceSumsRows, 3] contiguous float64 view on the distance's device; row 0 is
  // written with (loss, grad_scale, grad_shift), asynchronously on `stream` (the returned struct
  // is then all zeros). Unused on the CPU.
  MatrixView sums;
  void* stream = nullptr;  // cudaStream_t; nullptr = legacy default stream
};

struct DistanceBceResult {
  double loss = 0;
  double grad_scale = 0;  // dloss/dscale
  double grad_shift = 0;  // dloss/dshift
};

// Validates (std::invalid_argument / pcmekit::TypeError naming the field) and computes.
// CPU: the sums are accumulated in double, row by row, and added in row order: the result does
// not depend on the thread count. CUDA: in double per thread, per block in a fixed tree, then the
// blocks in order: the same bits on every run.
DistanceBceResult distance_bce(const DistanceBceParams& p);

// The BCE on pairwise_distance(a, b): forward.out is the [N, M] buffer (float32 for 16-bit
// inputs, else the inputs' dtype, contiguous columns), which receives dloss/ddistance; the other
// fields as in DistanceBceParams (`target` in the buffer's dtype). On CUDA the tensor-core
// engine, where it applies (pairwise_tc.h), computes the BCE in its epilogue, so the distances
// never reach global memory; otherwise the distance kernel writes the buffer and the BCE pass
// overwrites it.
struct PairwiseBceParams {
  PairwiseForwardParams forward;
  MatrixView target;
  double scale = 1;
  double shift = 0;
  bool mean = true;
  MatrixView sums;  // CUDA only, as in DistanceBceParams
};

DistanceBceResult pairwise_bce(const PairwiseBceParams& p);

namespace detail {
// The DistanceBceParams of the unfused pass of p: distance = grad = p.forward.out.
DistanceBceParams bce_params_of(const PairwiseBceParams& p);
}  // namespace detail

namespace cpu {
DistanceBceResult distance_bce(const DistanceBceParams& p);
}  // namespace cpu

namespace cuda {
void distance_bce(const DistanceBceParams& p);
void pairwise_bce(const PairwiseBceParams& p);
}  // namespace cuda

}  // namespace pcmekit
