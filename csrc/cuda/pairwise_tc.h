// The tensor-core (wmma) engine of the pairwise distance op: csd, w2, l2 and kl in their
// inner-product form. See pairwise_tc.cu and docs/design.md, "CUDA tensor cores and the matmul precision".
#pragma once

#include "pcmekit/bce.h"
#include "pcmekit/pairwise.h"
#include "pcmekit/precision.h"

namespace pcmekit::cuda {

// The rule of docs/design.md's precision table: whether the engine takes `metric` on inputs of
// `dtype` under `precision` on CUDA device `device` (the same for forward, backward, the fused
// BCE and the fused top-k).
bool tensor_cores_apply(Metric metric, DType dtype, MatmulPrecision precision, int device);

// Runs the forward pass on tensor cores and returns true when the engine applies to `p` (metric,
// dtype, matmul precision, device capability); returns false, having done nothing, otherwise,
// and the caller uses the direct SIMT engine.
bool pairwise_forward_tensor_cores(const PairwiseForwardParams& p);

// The same for the backward pass (G @ F_b and G^T @ F_a on tensor cores, the chain rule in the
// epilogue), under the same rule as the forward.
bool pairwise_backward_tensor_cores(const PairwiseBackwardParams& p);

// pairwise_bce (bce.h) on this engine with the BCE fused into the forward epilogue: the
// gradient w.r.t. the distance goes to p.forward.out, the sums to p.sums; under the same rule as
// the forward (true when it ran, false having done nothing).
bool pairwise_bce_tensor_cores(const PairwiseBceParams& p);

}  // namespace pcmekit::cuda
