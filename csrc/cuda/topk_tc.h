// The top-k op fused into the tensor-core engine's epilogue (topk_tc.cu): for k <= kTopkTcMaxK
// and where the engine applies (pairwise_tc.h's rule), no score tile goes through global memory.
// topk.cu asks here first and keeps its tile path for everything else.
#pragma once

#include <cstdint>

#include "pcmekit/topk.h"

namespace pcmekit::cuda {

// Largest k of the fused path (a candidate list of at most 64 entries per query row a block).
inline constexpr int64_t kTopkTcMaxK = 64;

// Whether topk_tensor_cores takes `p`: distance score, 1 <= k <= kTopkTcMaxK, and the tensor
// cores apply to the metric, dtype and matmul precision on the inputs' device.
bool topk_tensor_cores_apply(const TopkParams& p);

// Workspace bytes topk_tensor_cores needs for `p` (0 when the gallery is a single split).
int64_t topk_tensor_cores_workspace_bytes(const TopkParams& p);

// Runs the fused top-k; p was validated and topk_tensor_cores_apply(p) holds.
void topk_tensor_cores(const TopkParams& p);

}  // namespace pcmekit::cuda
