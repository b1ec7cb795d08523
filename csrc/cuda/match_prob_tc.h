// The match probability's forward on tensor cores: the J x J sample distances of every item
// pair as a TF32 GEMM of the samples. See match_prob_tc.cu and docs/design.md, "CUDA tensor
// cores and the matmul precision" ("The match probability on tensor cores").
#pragma once

#include <cstdint>

#include "pcmekit/match_prob.h"

namespace pcmekit::cuda {

// Samples per embedding the tensor-core forward takes: a 64-row tile holds whole items, at
// least one. Larger J runs on the direct kernel (match_prob.cu).
inline constexpr int64_t kMatchTcMaxSamples = 64;

// Runs the forward pass on tensor cores and returns true when they apply to `p` (float32,
// precision High or Medium, J <= kMatchTcMaxSamples, an sm_80+ device); returns false, having
// done nothing, otherwise, and the caller runs the direct kernel.
bool match_prob_forward_tensor_cores(const MatchProbForwardParams& p);

}  // namespace pcmekit::cuda
