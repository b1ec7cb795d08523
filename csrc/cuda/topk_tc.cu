// The CUDA top-k of csd / w2 / l2 / kl fused into the tensor-core engine (pairwise_tc_engine.h):
// for k <= kTopkTcMaxK = 64 and where the engine applies (tensor_cores_apply, the precision
// table of docs/design.md), the scores are ranked in the epilogue and no score tile goes through
// global memory. topk.cu's tile path (score tiles, then select_kernel) does the rest.
//
// Grid: x = query tiles of 64 rows, y = gallery splits. Block (x, y) walks the 64-row gallery
// tiles of split y, [y T / S, (y + 1) T / S) of the T tiles; for each one the engine's main loop
// (tile_products) leaves the 64 x 64 accumulators in registers, they are stored into a score
// tile that aliases the (then free) staging arrays, and warp w ranks the rows [16 w, 16 w + 16)
// of it into those rows' candidate lists, which stay in shared memory for the whole split.
//
// The score of a pair is the pairwise op's, computed the same way: row + col + alpha acc,
// clamped at 0 (NaN passes), from the same accumulator (the same features, chunks and k-steps),
// so the values are bit for bit those of pairwise_forward's tensor-core path and the result is
// a stable sort of its matrix. (The CPU top-k leaves the per-query row term out while ranking
// and adds it to the survivors; here that would save one add a pair, which the epilogue does not
// notice, and cost the equality: (row + col) + alpha acc and row + (col + alpha acc) round
// differently, and ties at the clamp would be ranked by the unclamped remainder.)
//
// Candidate list of a row: its k best (key, index) pairs sorted, index local to the split (int
// in shared memory), (NaN, kNoLocal) while empty. Per 32 columns, each lane compares its score
// against the list's k-th entry; the lanes that beat it (__ballot_sync) are inserted one by one
// in column order by the whole warp (warp_insert: each lane owns list positions lane and lane +
// 32, the rank is a popcount of two ballots, the tail shifts by one). After the first tile a row
// rarely has a candidate, so the epilogue is a load, an add, a compare and a vote a pair.
//
// Order (topk.h, docs/design.md "Ties"): smaller key first, NaN after every number, then the
// lower gallery index: entry_less, the same total order as topk.cu's. Within a split the columns
// arrive in increasing index order and a candidate must beat the k-th entry strictly, so the
// lower index of equal scores survives; the splits are merged on (key, global index).
//
// Splits (tc_plan): ~16 blocks an SM (with 2-5 resident, the last partial wave costs little),
// each split at least kMinTilesPerSplit tiles.
// With one split the lists go straight to `values` / `indices`; with S > 1 each block writes its
// rows' lists to the workspace [Q, S, k] (int64 indices, then float keys; an empty entry as
// (NaN, INT64_MAX)) and merge_kernel, one warp a query row, merges the S sorted lists with the
// same warp insertion, reading each list only while its entries still beat the k-th.
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/cuda_check.h"
#include "cuda/pairwise_tc.h"
#include "cuda/pairwise_tc_engine.h"
#include "cuda/tc_ops.h"
#include "cuda/topk_tc.h"

namespace pcmekit::cuda {
namespace {

namespace wmma = nvcuda::wmma;
using namespace tc;  // the forward engine (pairwise_tc_engine.h)

constexpr int kScoreLd = kTile + 4;                // score tile row: 272 bytes
constexpr int kRowsPerWarp = kTile / kWarps;      // rows a warp ranks
constexpr int kNoLocal = INT_MAX;                 // index of an empty entry in shared memory
constexpr int64_t kNoIndex = INT64_MAX;           // and in the workspace
constexpr int64_t kMinTilesPerSplit = 4;          // gallery tiles a block walks at least
constexpr int64_t kBlocksPerSm = 16;              // blocks the splits aim for (~8 waves)
constexpr int64_t kMaxSplits = 65535;             // grid y
constexpr int kMergeWarps = 4;                    // query rows per merge block
constexpr int kMergeThreads = 32 * kMergeWarps;
constexpr unsigned kFull = 0xffffffffu;
static_assert(kTopkTcMaxK <= 64, "a lane owns two list positions");
static_assert(kRowsPerWarp * kWarps == kTile, "the warps split the tile's rows");

// Whether (ak, ai) ranks before (bk, bi): smaller key first, NaN after every number, then the
// lower index (topk.cu's entry_less, for both index types).
template <typename I>
__device__ __forceinline__ bool entry_less(float ak, I ai, float bk, I bi) {
  const bool a_nan = ak != ak;
  const bool b_nan = bk != bk;
  if (a_nan || b_nan) return a_nan == b_nan ? ai < bi : b_nan;
  if (ak != bk) return ak < bk;
  return ai < bi;
}

// Inserts (ck, ci) into the sorted list key/idx[0, k) of shared memory if it ranks before the
// k-th entry, dropping that one. Called by all 32 lanes with the same candidate, after a
// __syncwarp that follows the last write of the list (every caller's loop ends on one).
template <typename I>
__device__ __forceinline__ void warp_insert(float* key, I* idx, int k, float ck, I ci, int lane) {
  if (!entry_less(ck, ci, key[k - 1], idx[k - 1])) return;  // warp-uniform
  const int p0 = lane, p1 = lane + 32;
  const bool in0 = p0 < k, in1 = p1 < k;
  // Each lane reads its positions and their predecessors before anyone writes.
  const float k0 = in0 ? key[p0] : 0.0f, k1 = in1 ? key[p1] : 0.0f;
  const I i0 = in0 ? idx[p0] : I(0), i1 = in1 ? idx[p1] : I(0);
  const float q0 = in0 && p0 > 0 ? key[p0 - 1] : 0.0f, q1 = in1 ? key[p1 - 1] : 0.0f;
  const I j0 = in0 && p0 > 0 ? idx[p0 - 1] : I(0), j1 = in1 ? idx[p1 - 1] : I(0);
  // The list is sorted, so the entries before the candidate are a prefix: its rank is their count.
  const int pos = __popc(__ballot_sync(kFull, in0 && entry_less(k0, i0, ck, ci))) +
                  __popc(__ballot_sync(kFull, in1 && entry_less(k1, i1, ck, ci)));
  __syncwarp();
  if (in0 && p0 >= pos) {
    key[p0] = p0 == pos ? ck : q0;
    idx[p0] = p0 == pos ? ci : j0;
  }
  if (in1 && p1 >= pos) {
    key[p1] = p1 == pos ? ck : q1;
    idx[p1] = p1 == pos ? ci : j1;
  }
  __syncwarp();
}

// ---------------------------------------------------------------------------------------------
// The fused kernel.

// The engine's names (tile_products reads them): a = the queries (n of them), b = the gallery (m).
template <typename S>
struct TopkTcArgs {
  Input<S> a_mu, a_lv, b_mu, b_lv;
  int64_t n, m, dim;
  int k;
  int64_t splits, gallery_tiles;
  int64_t* ws_idx;   // splits > 1: [q][splits][k]
  float* ws_key;
  float* values;     // splits == 1: the outputs
  int64_t v_row_stride, v_col_stride;
  int64_t* indices;
  int64_t i_row_stride, i_col_stride;
};

// Dynamic shared memory, byte offsets (all multiples of 128): the staging arrays A and B of the
// engine, aliased by the score tile after the main loop; the row and column terms; the lists.
template <typename Op, int kList>
struct TopkTcLayout {
  using T = typename Op::smem;
  static constexpr int ld = stage_ld<Op>();
  static constexpr size_t stage_half = size_t(2) * kTile * ld * sizeof(T);  // A (or B)
  static constexpr size_t score = size_t(kTile) * kScoreLd * sizeof(float);
  static constexpr size_t shared = (std::max(2 * stage_half, score) + 127) / 128 * 128;
  static constexpr size_t row = shared;
  static constexpr size_t col = row + kTile * sizeof(float);
  static constexpr size_t key = col + kTile * sizeof(float);
  static constexpr size_t idx = key + size_t(kTile) * kList * sizeof(float);
  static constexpr size_t bytes = idx + size_t(kTile) * kList * sizeof(int);
  // The launch asks for 128 bytes more and the kernel aligns the base itself (the emulator's
  // dynamic shared memory is only malloc-aligned; wmma wants 32 bytes).
  static constexpr size_t launch_bytes = bytes + 128;
  static_assert(stage_half % 128 == 0 && score % 128 == 0, "128-byte aligned parts");
};

template <Metric kMetric, typename S, typename Op, int kList>
__global__ void __launch_bounds__(kThreads) topk_tc_kernel(const TopkTcArgs<S> args) {
#ifndef PCMEKIT_TC_ARCH
  (void)Form<kMetric>::alpha;
  (void)Op::k;
  __trap();  // the host never launches it there (topk_tensor_cores_apply)
#else
  using F = Form<kMetric>;
  using L = TopkTcLayout<Op, kList>;
  using T = typename Op::smem;
  extern __shared__ __align__(128) unsigned char topk_tc_smem[];
  unsigned char* base =
      topk_tc_smem + (128 - reinterpret_cast<std::uintptr_t>(topk_tc_smem) % 128) % 128;
  auto& sa = *reinterpret_cast<T(*)[2][kTile][L::ld]>(base);
  auto& sb = *reinterpret_cast<T(*)[2][kTile][L::ld]>(base + L::stage_half);
  auto& score = *reinterpret_cast<float(*)[kTile][kScoreLd]>(base);
  auto& row = *reinterpret_cast<float(*)[kTile]>(base + L::row);
  auto& col = *reinterpret_cast<float(*)[kTile]>(base + L::col);
  auto& lkey = *reinterpret_cast<float(*)[kTile][kList]>(base + L::key);
  auto& lidx = *reinterpret_cast<int(*)[kTile][kList]>(base + L::idx);

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int wm = warp / 2, wn = warp % 2;
  const int k = args.k;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t split = blockIdx.y;
  const int64_t t_begin = split * args.gallery_tiles / args.splits;
  const int64_t t_end = (split + 1) * args.gallery_tiles / args.splits;
  const int64_t local0 = t_begin * kTile;  // gallery index of local index 0
  const int64_t chunks = feature_chunks<kMetric>(args.dim);

  for (int e = tid; e < kTile * kList; e += kThreads) {
    lkey[e / kList][e % kList] = nanf("");
    lidx[e / kList][e % kList] = kNoLocal;
  }
  // (visible to every warp after tile_products' first barrier)

  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t j0 = t * kTile;
    TileAcc<Op> acc[2][2];
    tile_products<kMetric, S, Op, L::ld>(args, chunks, i0, j0, sa, sb, row, col, acc);
    // The staging arrays are free (tile_products ended on a barrier): the accumulators go there.
#pragma unroll
    for (int fi = 0; fi < 2; ++fi)
#pragma unroll
      for (int fj = 0; fj < 2; ++fj)
        wmma::store_matrix_sync(&score[wm * 32 + 16 * fi][wn * 32 + 16 * fj], acc[fi][fj],
                                kScoreLd, wmma::mem_row_major);
    __syncthreads();

    const int c_local0 = static_cast<int>(j0 - local0);
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      if (i0 + r >= args.n) break;  // warp-uniform
      float* key = lkey[r];
      int* idx = lidx[r];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int c = lane + 32 * h;
        float d = 0.0f;
        bool better = false;
        if (j0 + c < args.m) {
          const float v = row[r] + col[c] + F::alpha * score[r][c];  // pairwise_tc.cu's epilogue
          d = v < 0.0f ? 0.0f : v;
          better = entry_less(d, c_local0 + c, key[k - 1], idx[k - 1]);
        }
        unsigned mask = __ballot_sync(kFull, better);
        while (mask != 0) {  // warp-uniform: in column order, so in index order
          const int src = __ffs(static_cast<int>(mask)) - 1;
          mask &= mask - 1;
          const float ck = __shfl_sync(kFull, d, src);
          warp_insert(key, idx, k, ck, c_local0 + 32 * h + src, lane);
        }
      }
    }
    __syncthreads();  // the next tile's staging overwrites the score tile
  }

  // The warp's rows' lists (only it wrote them; warp_insert ended on a __syncwarp).
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp * kRowsPerWarp + rr;
    const int64_t i = i0 + r;
    if (i >= args.n) break;
    for (int p = lane; p < k; p += 32) {
      const float kv = lkey[r][p];
      const int iv = lidx[r][p];
      const int64_t gi = iv == kNoLocal ? kNoIndex : local0 + iv;
      if (args.splits == 1) {
        args.values[i * args.v_row_stride + p * args.v_col_stride] = kv;
        args.indices[i * args.i_row_stride + p * args.i_col_stride] = gi;
      } else {
        const int64_t off = (i * args.splits + split) * k + p;
        args.ws_key[off] = kv;
        args.ws_idx[off] = gi;
      }
    }
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// The merge of the splits' lists: warp w of block b takes query row kMergeWarps b + w.

struct MergeArgs {
  const int64_t* ws_idx;  // [q][splits][k]
  const float* ws_key;
  int64_t q, splits;
  int k;
  float* values;
  int64_t v_row_stride, v_col_stride;
  int64_t* indices;
  int64_t i_row_stride, i_col_stride;
};

__global__ void __launch_bounds__(kMergeThreads) topk_tc_merge_kernel(const MergeArgs args) {
  __shared__ float keys[kMergeWarps][kTopkTcMaxK];
  __shared__ int64_t idxs[kMergeWarps][kTopkTcMaxK];
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kMergeWarps + warp;
  if (i >= args.q) return;  // the whole warp; the kernel has no block barrier
  const int k = args.k;
  float* key = keys[warp];
  int64_t* idx = idxs[warp];
  for (int p = lane; p < k; p += 32) {
    key[p] = nanf("");
    idx[p] = kNoIndex;
  }
  __syncwarp();
  for (int64_t s = 0; s < args.splits; ++s) {
    const int64_t off = (i * args.splits + s) * k;
    for (int c0 = 0; c0 < k; c0 += 32) {
      const int p = c0 + lane;
      const bool valid = p < k;
      const float ck = valid ? args.ws_key[off + p] : 0.0f;
      const int64_t ci = valid ? args.ws_idx[off + p] : kNoIndex;
      const bool better = valid && entry_less(ck, ci, key[k - 1], idx[k - 1]);
      const unsigned mask = __ballot_sync(kFull, better);
      const unsigned valid_mask = __ballot_sync(kFull, valid);
      for (unsigned m = mask; m != 0; m &= m - 1) {
        const int src = __ffs(static_cast<int>(m)) - 1;
        warp_insert(key, idx, k, __shfl_sync(kFull, ck, src), __shfl_sync(kFull, ci, src), lane);
      }
      // The split's list is sorted: after an entry that did not beat the k-th, none does.
      if (mask != valid_mask) break;
    }
  }
  for (int p = lane; p < k; p += 32) {
    args.values[i * args.v_row_stride + p * args.v_col_stride] = key[p];
    args.indices[i * args.i_row_stride + p * args.i_col_stride] = idx[p];
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

int sm_count(int device) {
  static int count[64] = {};
  if (device < 0 || device >= 64) return 1;
  if (count[device] == 0) {
    int value = 0;
    if (cudaDeviceGetAttribute(&value, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        value <= 0) {
      (void)cudaGetLastError();
      return 1;
    }
    count[device] = value;
  }
  return count[device];
}

struct TcPlan {
  int64_t row_tiles = 0, gallery_tiles = 0, splits = 1;
  int64_t bytes = 0;  // workspace: splits > 1 only
};

// A pure function of Q, N, k and the device's SM count (the result does not depend on it: the
// merge is exact).
TcPlan tc_plan(const TopkParams& p) {
  TcPlan plan;
  plan.row_tiles = (p.q_mean.rows + kTile - 1) / kTile;
  plan.gallery_tiles = (p.g_mean.rows + kTile - 1) / kTile;
  if (plan.row_tiles == 0 || plan.gallery_tiles == 0) return plan;
  const int64_t target = kBlocksPerSm * sm_count(p.q_mean.device_index);
  int64_t splits = (target + plan.row_tiles - 1) / plan.row_tiles;
  splits = std::min(splits, (plan.gallery_tiles + kMinTilesPerSplit - 1) / kMinTilesPerSplit);
  // Local indices are ints: a split holds fewer than INT_MAX gallery rows.
  splits = std::max(splits, (plan.gallery_tiles * kTile + INT_MAX - 2) / (INT_MAX - 1));
  plan.splits = std::max<int64_t>(1, std::min(splits, kMaxSplits));
  if (plan.splits > 1)
    plan.bytes = p.q_mean.rows * plan.splits * p.k * int64_t(sizeof(int64_t) + sizeof(float));
  return plan;
}

template <Metric kMetric, typename S, typename Op, int kList>
void launch_sized(const TopkParams& p, const TcPlan& plan, cudaStream_t stream) {
  using L = TopkTcLayout<Op, kList>;
  const bool lv = Form<kMetric>::needs_logvar;
  TopkTcArgs<S> args;
  args.a_mu = input<S>(p.q_mean, true);
  args.a_lv = input<S>(p.q_logvar, lv);
  args.b_mu = input<S>(p.g_mean, true);
  args.b_lv = input<S>(p.g_logvar, lv);
  args.n = p.q_mean.rows;
  args.m = p.g_mean.rows;
  args.dim = p.q_mean.cols;
  args.k = static_cast<int>(p.k);
  args.splits = plan.splits;
  args.gallery_tiles = plan.gallery_tiles;
  args.ws_idx = static_cast<int64_t*>(p.workspace);
  args.ws_key = plan.splits > 1
                    ? reinterpret_cast<float*>(args.ws_idx + args.n * plan.splits * p.k)
                    : nullptr;
  args.values = static_cast<float*>(p.values.data);
  args.v_row_stride = p.values.row_stride;
  args.v_col_stride = p.values.col_stride;
  args.indices = static_cast<int64_t*>(p.indices.data);
  args.i_row_stride = p.indices.row_stride;
  args.i_col_stride = p.indices.col_stride;

  auto* kernel = &topk_tc_kernel<kMetric, S, Op, kList>;
  PCMEKIT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(L::launch_bytes)));
  const dim3 grid(static_cast<unsigned>(plan.row_tiles), static_cast<unsigned>(plan.splits));
  kernel<<<grid, kThreads, L::launch_bytes, stream>>>(args);
  PCMEKIT_CUDA_LAUNCH_CHECK(stream);
  if (plan.splits == 1) return;

  MergeArgs m;
  m.ws_idx = args.ws_idx;
  m.ws_key = args.ws_key;
  m.q = args.n;
  m.splits = plan.splits;
  m.k = args.k;
  m.values = args.values;
  m.v_row_stride = args.v_row_stride;
  m.v_col_stride = args.v_col_stride;
  m.indices = args.indices;
  m.i_row_stride = args.i_row_stride;
  m.i_col_stride = args.i_col_stride;
  const unsigned blocks = static_cast<unsigned>((args.n + kMergeWarps - 1) / kMergeWarps);
  topk_tc_merge_kernel<<<blocks, kMergeThreads, 0, stream>>>(m);
  PCMEKIT_CUDA_LAUNCH_CHECK(stream);
}

// List sizes: 16 covers the common top-10 with a quarter of the shared memory of 64.
template <Metric kMetric, typename S, typename Op>
void launch_op(const TopkParams& p, const TcPlan& plan, cudaStream_t stream) {
  if (p.k <= 16)
    launch_sized<kMetric, S, Op, 16>(p, plan, stream);
  else
    launch_sized<kMetric, S, Op, 64>(p, plan, stream);
}

// The operand type as pairwise_tc.cu's launch_metric picks it.
template <Metric kMetric, typename S>
void launch_metric(const TopkParams& p, const TcPlan& plan, cudaStream_t stream) {
  constexpr bool kInputFeatures = Form<kMetric>::width == 1;  // csd, l2: the features are the means
  if constexpr (std::is_same_v<S, __half> && kInputFeatures) {
    launch_op<kMetric, S, HalfOp>(p, plan, stream);
  } else if constexpr (std::is_same_v<S, __nv_bfloat16> && kInputFeatures) {
    launch_op<kMetric, S, Bf16Op>(p, plan, stream);
  } else {
    launch_op<kMetric, S, Tf32Op>(p, plan, stream);
  }
}

template <typename S>
void launch_storage(const TopkParams& p, const TcPlan& plan, cudaStream_t stream) {
  switch (p.metric) {
    case Metric::CSD: return launch_metric<Metric::CSD, S>(p, plan, stream);
    case Metric::L2: return launch_metric<Metric::L2, S>(p, plan, stream);
    case Metric::W2: return launch_metric<Metric::W2, S>(p, plan, stream);
    case Metric::KL: return launch_metric<Metric::KL, S>(p, plan, stream);
    default: return;
  }
}

}  // namespace

bool topk_tensor_cores_apply(const TopkParams& p) {
  return p.score == TopkScore::Distance && p.k >= 1 && p.k <= kTopkTcMaxK &&
         tensor_cores_apply(p.metric, p.q_mean.dtype, p.precision, p.q_mean.device_index);
}

int64_t topk_tensor_cores_workspace_bytes(const TopkParams& p) { return tc_plan(p).bytes; }

void topk_tensor_cores(const TopkParams& p) {
  const TcPlan plan = tc_plan(p);
  if (plan.row_tiles == 0) return;  // Q == 0: nothing to write
  if (p.k < 1 || p.k > kTopkTcMaxK || p.k > p.g_mean.rows)
    throw std::invalid_argument("pcmekit CUDA topk (tensor cores): k must be in [1, min(N, " +
                                std::to_string(kTopkTcMaxK) + ")], got " + std::to_string(p.k) +
                                " with N = " + std::to_string(p.g_mean.rows));
  if (plan.bytes > 0 && (p.workspace == nullptr || p.workspace_bytes < plan.bytes))
    throw std::invalid_argument("pcmekit CUDA topk (tensor cores): workspace must have at least " +
                                std::to_string(plan.bytes) + " bytes, got " +
                                (p.workspace == nullptr ? std::string("none")
                                                        : std::to_string(p.workspace_bytes)));
  const DeviceGuard guard(p.q_mean.device_index);
  const auto stream = static_cast<cudaStream_t>(p.stream);
  switch (p.q_mean.dtype) {
    case DType::Float32: return launch_storage<float>(p, plan, stream);
    case DType::Float16: return launch_storage<__half>(p, plan, stream);
    default: return launch_storage<__nv_bfloat16>(p, plan, stream);
  }
}

}  // namespace pcmekit::cuda
