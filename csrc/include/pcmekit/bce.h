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
// Front end: core/bce.cpp (validation); kernel: cpu/bce.cpp. CUDA tensors are computed by the
// Python layer with torch operations.
#pragma once

#include "pcmekit/view.h"

namespace pcmekit {

struct DistanceBceParams {
  MatrixView distance;  // [N, M] float32 or float64
  MatrixView target;    // [N, M], distance's dtype, values in [0, 1]; absent = identity
  MatrixView grad;      // [N, M], written: dloss/ddistance; its columns contiguous; may be
                        // `distance` itself (the same view), which it then overwrites
  double scale = 1;     // rounded to the distance's dtype before use, as torch does
  double shift = 0;
  bool mean = true;     // false: sum
  int num_threads = 0;  // 0 = hardware concurrency
};

struct DistanceBceResult {
  double loss = 0;
  double grad_scale = 0;  // dloss/dscale
  double grad_shift = 0;  // dloss/dshift
};

// Validates (std::invalid_argument / pcmekit::TypeError naming the field) and computes.
// The sums are accumulated in double, row by row, and added in row order: the result does not
// depend on the thread count.
DistanceBceResult distance_bce(const DistanceBceParams& p);

namespace cpu {
DistanceBceResult distance_bce(const DistanceBceParams& p);
}  // namespace cpu

}  // namespace pcmekit
