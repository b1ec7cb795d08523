// Top-k retrieval: for every query, the k gallery items that score best, without ever holding
// the Q x N score matrix.
//
//   distance metrics:  values[q, :] = the k smallest  metric(query q, gallery n)   ascending
//   match_prob:        values[q, :] = the k largest   p(query q, gallery n)        descending
//   indices[q, i]    = the gallery row of values[q, i]
//
// Ties are broken by the lower gallery index, so the result is deterministic. The scores are
// exactly the ones the pairwise / match_prob ops compute (same clamp at zero, same formula), up to
// rounding: for the inner-product metrics the per-query constant is left out while ranking and
// added to the k survivors only.
//
// NaN in the inputs is rejected by the Python layer; the kernels never crash on one and rank a
// NaN score last (the CPU kernel like +inf, the CUDA kernel after +inf; either way by index among
// equals).
//
// Front end: core/topk.cpp (validation, device dispatch); kernels: cpu/topk.cpp, cuda/topk.cu.
#pragma once

#include <cstdint>

#include "pcmekit/metrics.h"
#include "pcmekit/view.h"

namespace pcmekit {

// What to rank by.
enum class TopkScore : int {
  Distance = 0,   // `metric` (smallest first)
  MatchProb = 1,  // Monte-Carlo match probability of match_prob.h (largest first)
};

// Largest k the CUDA kernels take (the CPU takes any k <= N).
inline constexpr int64_t kCudaMaxTopk = 1024;

struct TopkParams {
  MatrixView q_mean;    // [Q, D] queries
  MatrixView q_logvar;  // [Q, D]; may be absent when the metric is l2
  MatrixView g_mean;    // [N, D] gallery
  MatrixView g_logvar;  // [N, D]; may be absent when the metric is l2
  TopkScore score = TopkScore::Distance;
  Metric metric = Metric::CSD;  // score == Distance

  // score == MatchProb (see match_prob.h): noise, samples, logit = -scale * d + shift.
  MatrixView eps_q;         // [Q * J, D]
  MatrixView eps_g;         // [N * J, D]
  int64_t num_samples = 1;  // J >= 1
  double scale = 1.0;
  double shift = 0.0;
  bool squared = false;

  int64_t k = 1;        // 1 <= k <= N (and <= kCudaMaxTopk on CUDA)
  MatrixView values;    // [Q, k], written: float32 for float16/bfloat16 inputs, else input dtype
  MatrixView indices;   // [Q, k], written: int64 gallery rows

  // CUDA only: scratch of topk_workspace_bytes(*this) bytes, allocated by the caller on the
  // inputs' device (nullptr when that is 0). Unused on the CPU.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;

  int num_threads = 0;     // CPU threads; 0 = hardware concurrency
  void* stream = nullptr;  // cudaStream_t on CUDA; nullptr = legacy default stream
};

// Validates (std::invalid_argument / pcmekit::TypeError naming the field) and runs on the
// device of the inputs.
void topk(const TopkParams& p);

// Bytes of workspace `topk` needs for these shapes, dtype, device, score and k (0 on the CPU).
// Only the views' shapes, dtypes and devices are read, so it can be called before the outputs
// exist.
int64_t topk_workspace_bytes(const TopkParams& p);

namespace cpu {
void topk(const TopkParams& p);
}  // namespace cpu

namespace cuda {
void topk(const TopkParams& p);
int64_t topk_workspace_bytes(const TopkParams& p);
}  // namespace cuda

}  // namespace pcmekit
