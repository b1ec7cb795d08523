// CUDA back end of the top-k retrieval op (pcmekit/topk.h): score tiles, then a k-selection pass.
// Where the tensor-core engine applies and k <= 64 (csd / w2 / l2 / kl under the precision
// table, topk_tensor_cores_apply), topk_tc.cu ranks in the engine's epilogue instead and nothing
// below runs; the tile path scores its tiles with the caller's matmul precision.
//
// For every query, the k gallery items of smallest distance (or largest match probability),
// with ties to the lower gallery index, without ever holding the Q x N score matrix:
//
//   for each block of query rows [q0, q1)            (at most kBlockRows rows, see below)
//     for each chunk of gallery rows [n0, n1)        (at most kChunkCols = 8192 columns)
//       1. score tile [q1 - q0, n1 - n0] into the workspace, by the existing kernels:
//          pairwise_forward (distances; float32 for 16-bit inputs) or match_prob_forward
//          (log p and log(1 - p), two tiles; only log p is used);
//       2. select_kernel: one thread block per query row merges the tile row into that row's
//          running top-k, which lives in the output views `values` / `indices` between chunks
//          (log p instead of p for match_prob until the last chunk, which writes p = exp(log p)).
//
// All launches go to the caller's stream, so step 2 of one chunk is ordered before step 1 of the
// next overwrites the tile. Scoring and selection are not fused: each tile goes through memory
// once (written, then read once, coalesced). Next to today's direct FP32 scoring kernels that
// round trip is small; once scoring runs on tensor cores it costs about as much as the GEMM
// (docs/design.md, "Performance"), and the selection belongs in the GEMM epilogue (faiss / cuVS style).
// Until then this keeps memory bounded and reuses the kernels the pairwise tests already check.
//
// Workspace (topk_workspace_bytes): C = min(N, kChunkCols) columns, and the largest number of
// query rows R <= min(Q, kBlockRows) whose tiles fit kTileBudgetBytes = 128 MiB:
//   bytes = tiles * R * C * sizeof(acc),  tiles = 2 for match_prob (log p, log q) else 1,
//   acc = double for float64 inputs, float otherwise.
// It depends on the shapes, dtype, score and nothing else (k does not matter: the running lists
// are the outputs themselves), and it is bounded independently of N.
//
// Selection (select_kernel, kSelectThreads = 256 threads per query row): the running sorted
// list of k (key, index) pairs sits in shared memory at [0, k), followed by a candidate buffer
// [k, S) with S a power of two >= k + 256 (512, 1024 or 2048 entries; 32 KB of shared memory at
// most, for doubles). The tile row is read 256 consecutive columns at a time (coalesced); a
// column goes into the buffer (slot from a shared atomic counter) only when it is strictly
// better than the current k-th entry, the threshold. When the buffer might not take another
// 256 candidates, and at the end of the row, the whole array is bitonic-sorted (the unused tail
// padded with the worst possible entry), the first k are kept and the threshold updated.
//
// Order: key = score for distances, key = -log p for match_prob, so smaller is always better;
// (key, index) lexicographic, so ties go to the lower gallery index; a NaN key ranks after every
// number (including +inf), NaNs among themselves by index. The "empty" entry is (NaN,
// INT64_MAX): worse than any real entry, so before the list is full every column is a candidate.
// These comparisons are plain C++ (`entry_less`, `bitonic_step`) so a host test can check them.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/topk_tc.h"
#include "pcmekit/match_prob.h"
#include "pcmekit/pairwise.h"
#include "pcmekit/topk.h"

namespace pcmekit::cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// Selection order (host and device).

// Index of the "empty" entry; every real gallery index is smaller.
constexpr int64_t kNoIndex = INT64_MAX;

// Whether (ak, ai) ranks before (bk, bi): smaller key first, NaN after every number, then the
// lower index. A strict total order on the pairs that occur (indices are distinct or both
// kNoIndex), which is what the bitonic network needs.
template <typename K>
PCMEKIT_HD bool entry_less(K ak, int64_t ai, K bk, int64_t bi) {
  const bool a_nan = ak != ak;
  const bool b_nan = bk != bk;
  if (a_nan || b_nan) return a_nan == b_nan ? ai < bi : b_nan;
  if (ak != bk) return ak < bk;
  return ai < bi;
}

// Sort key of a score (smaller is better) and back. Exact: only a sign flip.
template <bool kLargest, typename K>
PCMEKIT_HD K to_key(K score) {
  return kLargest ? -score : score;
}

// One compare-exchange step (size, stride) of a bitonic sort of keys/idx[0, n), n a power of two,
// done by thread `tid` of `nthreads`: pair i < n / 2 compares lo = i with the `stride` bit
// inserted as 0 and hi = lo + stride, in ascending order when the `size` bit of lo is 0. Every
// position belongs to exactly one pair per step, so the threads of one step never touch the same
// entry; steps must be separated by a barrier. After all steps (size = 2, 4, ..., n; stride =
// size / 2, ..., 1) the array is ascending.
template <typename K>
PCMEKIT_HD void bitonic_step(K* keys, int64_t* idx, int n, int size, int stride, int tid,
                             int nthreads) {
  for (int i = tid; i < n / 2; i += nthreads) {
    const int lo = 2 * i - (i & (stride - 1));
    const int hi = lo + stride;
    const bool ascending = (lo & size) == 0;
    const bool swap = ascending ? entry_less(keys[hi], idx[hi], keys[lo], idx[lo])
                                : entry_less(keys[lo], idx[lo], keys[hi], idx[hi]);
    if (swap) {
      const K k = keys[lo];
      keys[lo] = keys[hi];
      keys[hi] = k;
      const int64_t j = idx[lo];
      idx[lo] = idx[hi];
      idx[hi] = j;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Tiling constants.

constexpr int64_t kChunkCols = 8192;                     // gallery rows per score tile
constexpr int64_t kTileBudgetBytes = int64_t(128) << 20;  // score tile(s) of one query block
constexpr int64_t kBlockRows = int64_t(1) << 16;          // query rows per block (grid size)
constexpr int kSelectThreads = 256;                      // threads per query row

// Smallest sort size S in {512, 1024, 2048} whose candidate buffer S - k takes a full step of
// kSelectThreads candidates; k <= kCudaMaxTopk = 1024 fits S = 2048.
int sort_size(int64_t k) {
  if (k + kSelectThreads <= 512) return 512;
  if (k + kSelectThreads <= 1024) return 1024;
  return 2048;
}
static_assert(kCudaMaxTopk + kSelectThreads <= 2048, "largest k must fit the largest sort");

// ---------------------------------------------------------------------------------------------
// Selection kernel.

__device__ __forceinline__ float nan_of(float) { return nanf(""); }
__device__ __forceinline__ double nan_of(double) { return nan(""); }
__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }

template <typename Acc>
struct SelectArgs {
  const Acc* tile;   // [rows, cols] scores (log p for match_prob), row stride tile_ld, contiguous
  int64_t tile_ld;   // elements between tile rows
  int64_t cols;      // columns of this chunk, >= 1
  int64_t q0;        // output row of tile row 0
  int64_t n0;        // gallery index of tile column 0
  int k;             // 1 <= k <= kCudaMaxTopk, k + kSelectThreads <= sort size
  bool first;        // first chunk: the running lists start empty (the outputs are not read)
  bool last;         // last chunk: write the final values (p = exp(log p) for match_prob)
  Acc* values;       // [Q, k] running / final values
  int64_t values_row_stride, values_col_stride;
  int64_t* indices;  // [Q, k] running / final gallery indices
  int64_t indices_row_stride, indices_col_stride;
};

// Block b merges tile row b into the running top-k of output row q0 + b. kSort entries of
// (key, index) in shared memory: [0, k) the sorted running list, [k, kSort) the candidates.
template <typename Acc, int kSort, bool kLargest>
__global__ void __launch_bounds__(kSelectThreads) select_kernel(const SelectArgs<Acc> args) {
  __shared__ Acc keys[kSort];
  __shared__ int64_t idx[kSort];
  __shared__ int count;          // candidates in [k, k + count)
  __shared__ Acc thr_key;        // the current k-th entry: only strictly better ones are taken
  __shared__ int64_t thr_idx;

  const int tid = static_cast<int>(threadIdx.x);
  const int k = args.k;
  const int room = kSort - k - kSelectThreads;  // merge when more candidates than this are held
  const int64_t q = args.q0 + blockIdx.x;
  const Acc* row = args.tile + static_cast<int64_t>(blockIdx.x) * args.tile_ld;
  Acc* values = args.values + q * args.values_row_stride;
  int64_t* indices = args.indices + q * args.indices_row_stride;
  const Acc empty_key = nan_of(Acc(0));

  for (int i = tid; i < k; i += kSelectThreads) {
    if (args.first) {
      keys[i] = empty_key;
      idx[i] = kNoIndex;
    } else {
      keys[i] = to_key<kLargest>(values[i * args.values_col_stride]);
      idx[i] = indices[i * args.indices_col_stride];
    }
  }
  if (tid == 0) count = 0;
  __syncthreads();
  if (tid == 0) {
    thr_key = keys[k - 1];
    thr_idx = idx[k - 1];
  }
  __syncthreads();

  // Sorts list + the n candidates, keeps the first k, updates the threshold, empties the buffer.
  // Called by all threads with the same n, after a barrier that follows the last candidate write.
  auto merge = [&](int n) {
    for (int i = k + n + tid; i < kSort; i += kSelectThreads) {
      keys[i] = empty_key;
      idx[i] = kNoIndex;
    }
    __syncthreads();
    for (int size = 2; size <= kSort; size <<= 1)
      for (int stride = size >> 1; stride > 0; stride >>= 1) {
        bitonic_step(keys, idx, kSort, size, stride, tid, kSelectThreads);
        __syncthreads();
      }
    if (tid == 0) {
      thr_key = keys[k - 1];
      thr_idx = idx[k - 1];
      count = 0;
    }
    __syncthreads();
  };

  for (int64_t c0 = 0; c0 < args.cols; c0 += kSelectThreads) {
    // Invariant: count <= room, so this step's at most kSelectThreads candidates fit.
    const int64_t c = c0 + tid;
    if (c < args.cols) {
      const Acc key = to_key<kLargest>(row[c]);
      const int64_t gallery = args.n0 + c;
      if (entry_less(key, gallery, thr_key, thr_idx)) {
        const int slot = k + atomicAdd(&count, 1);
        keys[slot] = key;
        idx[slot] = gallery;
      }
    }
    __syncthreads();
    const int held = count;
    __syncthreads();  // every thread has read count before the next step adds to it
    if (held > room) merge(held);
  }
  // count is stable here: the loop ended on a barrier with no writer after it.
  const int held = count;
  if (held > 0) merge(held);

  for (int i = tid; i < k; i += kSelectThreads) {
    const Acc score = to_key<kLargest>(keys[i]);
    values[i * args.values_col_stride] = (kLargest && args.last) ? exp_acc(score) : score;
    indices[i * args.indices_col_stride] = idx[i];
  }
}

template <typename Acc, int kSort, bool kLargest>
void launch_select_sized(const SelectArgs<Acc>& args, int64_t rows, cudaStream_t stream) {
  select_kernel<Acc, kSort, kLargest>
      <<<static_cast<unsigned>(rows), kSelectThreads, 0, stream>>>(args);
  PCMEKIT_CUDA_LAUNCH_CHECK(stream);
}

template <typename Acc, bool kLargest>
void launch_select(const SelectArgs<Acc>& args, int64_t rows, cudaStream_t stream) {
  switch (sort_size(args.k)) {
    case 512: return launch_select_sized<Acc, 512, kLargest>(args, rows, stream);
    case 1024: return launch_select_sized<Acc, 1024, kLargest>(args, rows, stream);
    default: return launch_select_sized<Acc, 2048, kLargest>(args, rows, stream);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

int64_t dtype_bytes(DType dtype) {
  switch (dtype) {
    case DType::Float64:
    case DType::Int64: return 8;
    case DType::Float16:
    case DType::BFloat16: return 2;
    case DType::Float32: break;
  }
  return 4;
}

// The tiling of one call: a pure function of Q, N, the dtype and the score.
struct Plan {
  int64_t rows = 0;        // query rows per block
  int64_t cols = 0;        // gallery rows per chunk (= tile row stride)
  int64_t acc_bytes = 4;   // bytes per score
  int64_t tile_bytes = 0;  // one tile
  int64_t tiles = 1;       // 2 for match_prob (log p, log q)
  int64_t total_bytes = 0;
};

Plan make_plan(const TopkParams& p) {
  Plan plan;
  plan.acc_bytes = p.q_mean.dtype == DType::Float64 ? 8 : 4;
  plan.tiles = p.score == TopkScore::MatchProb ? 2 : 1;
  const int64_t q = p.q_mean.rows, n = p.g_mean.rows;
  if (q <= 0 || n <= 0) return plan;
  plan.cols = std::min(n, kChunkCols);
  const int64_t row_bytes = plan.cols * plan.acc_bytes * plan.tiles;
  plan.rows = std::max<int64_t>(1, std::min({q, kBlockRows, kTileBudgetBytes / row_bytes}));
  plan.tile_bytes = plan.rows * plan.cols * plan.acc_bytes;
  plan.total_bytes = plan.tile_bytes * plan.tiles;
  return plan;
}

// Rows [r0, r1) of `v`; an absent view stays absent.
MatrixView row_slice(const MatrixView& v, int64_t r0, int64_t r1) {
  MatrixView s = v;
  if (!v.present()) return s;
  s.data = static_cast<char*>(v.data) + r0 * v.row_stride * dtype_bytes(v.dtype);
  s.rows = r1 - r0;
  return s;
}

// A [rows, cols] tile of accumulators at `data`, row stride plan.cols, on the inputs' device.
MatrixView tile_view(void* data, int64_t rows, int64_t cols, const Plan& plan,
                     const TopkParams& p) {
  MatrixView t;
  t.data = data;
  t.rows = rows;
  t.cols = cols;
  t.row_stride = plan.cols;
  t.col_stride = 1;
  t.dtype = plan.acc_bytes == 8 ? DType::Float64 : DType::Float32;
  t.device = Device::CUDA;
  t.device_index = p.q_mean.device_index;
  return t;
}

template <typename Acc>
void run(const TopkParams& p, const Plan& plan, cudaStream_t stream) {
  const int64_t q_total = p.q_mean.rows, n_total = p.g_mean.rows;
  const bool match = p.score == TopkScore::MatchProb;
  const int64_t j = p.num_samples;
  char* workspace = static_cast<char*>(p.workspace);

  for (int64_t q0 = 0; q0 < q_total; q0 += plan.rows) {
    const int64_t q1 = std::min(q_total, q0 + plan.rows);
    for (int64_t n0 = 0; n0 < n_total; n0 += plan.cols) {
      const int64_t n1 = std::min(n_total, n0 + plan.cols);
      const MatrixView tile = tile_view(workspace, q1 - q0, n1 - n0, plan, p);

      // The CUDA entry points, not the validating front ends: p was validated once by the caller
      // and the tile views are ours.
      if (match) {
        MatchProbForwardParams mp;
        mp.a_mean = row_slice(p.q_mean, q0, q1);
        mp.a_logvar = row_slice(p.q_logvar, q0, q1);
        mp.b_mean = row_slice(p.g_mean, n0, n1);
        mp.b_logvar = row_slice(p.g_logvar, n0, n1);
        mp.eps_a = row_slice(p.eps_q, q0 * j, q1 * j);
        mp.eps_b = row_slice(p.eps_g, n0 * j, n1 * j);
        mp.num_samples = j;
        mp.scale = p.scale;
        mp.shift = p.shift;
        mp.squared = p.squared;
        mp.log_p = tile;
        mp.log_q = tile_view(workspace + plan.tile_bytes, q1 - q0, n1 - n0, plan, p);
        mp.stream = p.stream;
        cuda::match_prob_forward(mp);
      } else {
        PairwiseForwardParams pp;
        pp.a_mean = row_slice(p.q_mean, q0, q1);
        pp.a_logvar = row_slice(p.q_logvar, q0, q1);
        pp.b_mean = row_slice(p.g_mean, n0, n1);
        pp.b_logvar = row_slice(p.g_logvar, n0, n1);
        pp.out = tile;
        pp.metric = p.metric;
        pp.precision = p.precision;  // tensor-core tiles under high / medium (pairwise's rule)
        pp.stream = p.stream;
        cuda::pairwise_forward(pp);
      }

      SelectArgs<Acc> args;
      args.tile = static_cast<const Acc*>(tile.data);
      args.tile_ld = plan.cols;
      args.cols = n1 - n0;
      args.q0 = q0;
      args.n0 = n0;
      args.k = static_cast<int>(p.k);
      args.first = n0 == 0;
      args.last = n1 == n_total;
      args.values = static_cast<Acc*>(p.values.data);
      args.values_row_stride = p.values.row_stride;
      args.values_col_stride = p.values.col_stride;
      args.indices = static_cast<int64_t*>(p.indices.data);
      args.indices_row_stride = p.indices.row_stride;
      args.indices_col_stride = p.indices.col_stride;
      if (match)
        launch_select<Acc, true>(args, q1 - q0, stream);
      else
        launch_select<Acc, false>(args, q1 - q0, stream);
    }
  }
}

}  // namespace

int64_t topk_workspace_bytes(const TopkParams& p) {
  if (topk_tensor_cores_apply(p)) return topk_tensor_cores_workspace_bytes(p);
  return make_plan(p).total_bytes;
}

void topk(const TopkParams& p) {
  if (topk_tensor_cores_apply(p)) return topk_tensor_cores(p);
  const Plan plan = make_plan(p);
  if (plan.total_bytes == 0) return;  // Q == 0: nothing to write
  // The front end validates; these guard the kernels' shared-memory sizing and the workspace.
  if (p.k < 1 || p.k > kCudaMaxTopk || p.k > p.g_mean.rows)
    throw std::invalid_argument("pcmekit CUDA topk: k must be in [1, min(N, " +
                                std::to_string(kCudaMaxTopk) + ")], got " + std::to_string(p.k) +
                                " with N = " + std::to_string(p.g_mean.rows));
  if (p.workspace == nullptr || p.workspace_bytes < plan.total_bytes)
    throw std::invalid_argument("pcmekit CUDA topk: workspace must have at least " +
                                std::to_string(plan.total_bytes) + " bytes, got " +
                                (p.workspace == nullptr ? std::string("none")
                                                        : std::to_string(p.workspace_bytes)));
  if (p.score == TopkScore::MatchProb && p.q_mean.dtype != DType::Float32 &&
      p.q_mean.dtype != DType::Float64)
    throw TypeError(std::string("pcmekit CUDA topk: match_prob takes float32 or float64, got ") +
                    dtype_name(p.q_mean.dtype));

  const DeviceGuard guard(p.q_mean.device_index);
  const auto stream = static_cast<cudaStream_t>(p.stream);
  if (p.q_mean.dtype == DType::Float64)
    run<double>(p, plan, stream);
  else
    run<float>(p, plan, stream);
}

}  // namespace pcmekit::cuda
