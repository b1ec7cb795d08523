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
// Front end: core/topk.cpp (validation, device dispatch); kernels: cpu/topk.cpp, cuda/topk.cu,
// cuda/topk_tc.cu (k <= 64 fused into the tensor-core engine, see `precision` below).
#pragma once

#include <cstdint>

#include "pcmekit/metrics.h"
#include "pcmekit/precision.h"
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

  // CPU, csd / w2 / l2 / kl only: a gallery prepared by topk_prepare_gallery for these g_mean /
  // g_logvar (both absent = prepare nothing). The kernel then reads the gallery only through them.
  MatrixView g_packed;      // [1, TopkPreparedLayout::packed_elements]
  MatrixView g_terms;       // [N, 1]
  int64_t g_layout_tag = 0; // TopkPreparedLayout::tag of the preparation

  // CUDA, score == Distance: the float32 matmul precision, by pairwise's rule (precision.h,
  // docs/design.md's table): where it puts csd / w2 / l2 / kl on tensor cores, k <= 64 ranks in
  // the engine's epilogue (cuda/topk_tc.cu) and larger k scores its tiles there. The CPU ignores it.
  MatmulPrecision precision = MatmulPrecision::Highest;

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

// A gallery prepared once for many CPU searches (what GalleryIndex keeps): its column terms of
// the inner-product form and its GEMM operand packed in the micro-kernels' panel layout, so that a
// search neither takes exp of the gallery's log-variances nor packs it. Searching a prepared
// gallery gives the unprepared search's results bit for bit. The packing is valid only for the
// process's SIMD path (the tag says which); csd, w2, l2 and kl; float32 and float64.
struct TopkPreparedLayout {
  int64_t packed_elements = 0;  // of the gallery's dtype
  int64_t tag = 0;
};
TopkPreparedLayout topk_prepared_layout(Metric metric, DType dtype, int64_t n, int64_t d);

struct TopkPrepareParams {
  Metric metric = Metric::CSD;
  MatrixView g_mean;    // [N, D]
  MatrixView g_logvar;  // [N, D]; may be absent for l2
  MatrixView packed;    // [1, packed_elements], written
  MatrixView terms;     // [N, 1], written
  int num_threads = 0;
};
// Validates like topk (NaN in the gallery is an error) and fills packed and terms.
void topk_prepare_gallery(const TopkPrepareParams& p);

namespace cpu {
void topk(const TopkParams& p);
TopkPreparedLayout topk_prepared_layout(Metric metric, DType dtype, int64_t n, int64_t d);
void topk_prepare_gallery(const TopkPrepareParams& p);
}  // namespace cpu

namespace cuda {
void topk(const TopkParams& p);
int64_t topk_workspace_bytes(const TopkParams& p);
}  // namespace cuda

}  // namespace pcmekit
