// CUDA kernels of the pairwise distance op: the direct (per-dimension functor) engine.
//
// Forward:  out[i, j] = sum_d Term::value(a[i, d], b[j, d]) + Term::offset(D)
// Backward: grad_a[i, d] = sum_j g[i, j] dTerm/da,   grad_b[j, d] = sum_i g[i, j] dTerm/db
//
// Both are the engine shape of docs/design.md ("Architecture"): (rows of one side) x (rows or dims) x (the summed axis),
// tiled through shared memory, with the metric as a compile-time functor from metrics.h, so the
// arithmetic here is the code the CPU tests check.
//
// Tiling (the same for every storage type and metric):
//  * a block is 256 threads, 16 x 16; each thread owns a 4 x 4 sub-tile of a 64 x 64 output tile
//    (rows ty + 16 r, columns tx + 16 c: a half-warp writes 16 consecutive columns);
//  * the summed axis is walked in chunks of 16 (float accumulation) or 8 (double), staged in
//    shared memory as [chunk][64 + 1] arrays of (mu, lv, var); var = exp(lv) is computed once
//    when staging, never per pair;
//  * blocks walk the output tiles with a grid-stride loop over a 1-D tile index, so no grid
//    dimension limit applies whatever N, M and D are.
//
// The GEMM form: csd, w2, l2 and kl are  row term + column term + alpha <f_a, f_b>  (see
// cpu/pairwise.cpp for the features). Their forward and backward (the two GEMMs G @ F_b and
// G^T @ F_a) run on tensor cores (pairwise_tc.cu) where the dtype and the matmul precision allow
// it; otherwise, and for bhattacharyya, elk, inclusion and float64, this engine runs.
//
// Dtypes: float32 and float64 compute in their own type; float16 and bfloat16 inputs are loaded,
// converted to float and accumulated in float; the distance matrix (and grad_out) are float32 for
// them, and the input gradients are rounded back to the input dtype when stored.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda/cuda_check.h"
#include "cuda/pairwise_tc.h"
#include "pcmekit/pairwise.h"

namespace pcmekit::cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// Tiling constants.

constexpr int kThreadsX = 16;                      // threads along an output tile's columns
constexpr int kThreadsY = 16;                      // threads along an output tile's rows
constexpr int kThreads = kThreadsX * kThreadsY;    // 256 threads per block
constexpr int kRegs = 4;                           // each thread: kRegs x kRegs outputs
constexpr int kTile = kThreadsY * kRegs;           // 64 x 64 outputs per block
static_assert(kThreadsX * kRegs == kTile, "square output tiles");
constexpr int64_t kMaxBlocks = int64_t(1) << 20;   // grid cap; the grid-stride loop does the rest

// Length of the chunk of the summed axis staged in shared memory at a time. A chunk array is
// kChunk x (kTile + 1) accumulators, 4,160 bytes for float and double alike; forward stages 6 of
// them (24,960 bytes of static shared memory per block), backward 4 (16,640 bytes).
template <typename Acc>
constexpr int kChunk = sizeof(Acc) == 8 ? 8 : 16;

// Minimum resident blocks per SM handed to ptxas (__launch_bounds__'s second argument; 0 leaves
// ptxas's own register target). For these instantiations that target spills (bhattacharyya and
// inclusion forward on 16-bit inputs: 12 bytes at 80 registers; kl forward in double: 160 bytes at
// 128; l2 backward in float: 60 bytes at 128), and scripts/cuda_resources.py fails on any spill:
// the hint moves the target to 128 registers (2 blocks) or 255 (1 block), where they fit.
template <typename Term>
constexpr bool kLogHeavyTerm = std::is_same_v<Term, BhattacharyyaTerm> || std::is_same_v<Term, InclusionTerm>;
template <typename Term, typename S>
constexpr int kForwardMinBlocks = kLogHeavyTerm<Term> && sizeof(S) == 2                       ? 2
                                  : std::is_same_v<Term, KlTerm> && std::is_same_v<S, double> ? 1
                                                                                               : 0;
template <typename Term, typename S>
constexpr int kBackwardMinBlocks = std::is_same_v<Term, L2Term> && std::is_same_v<S, float> ? 1 : 0;

// ---------------------------------------------------------------------------------------------
// Storage types.

template <typename S>
struct Accumulate {
  using type = float;
};
template <>
struct Accumulate<double> {
  using type = double;
};

// Conversion between the storage type S and its accumulator type.
template <typename S>
struct Convert;
template <>
struct Convert<float> {
  __device__ __forceinline__ static float load(float x) { return x; }
  __device__ __forceinline__ static float store(float x) { return x; }
};
template <>
struct Convert<double> {
  __device__ __forceinline__ static double load(double x) { return x; }
  __device__ __forceinline__ static double store(double x) { return x; }
};
template <>
struct Convert<__half> {
  __device__ __forceinline__ static float load(__half x) { return __half2float(x); }
  __device__ __forceinline__ static __half store(float x) { return __float2half_rn(x); }
};
template <>
struct Convert<__nv_bfloat16> {
  __device__ __forceinline__ static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ __forceinline__ static __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};

__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }

// A strided matrix as the kernels see it; `data == nullptr` means absent.
template <typename T>
struct Strided {
  T* data;
  int64_t row_stride;  // elements
  int64_t col_stride;  // elements
};

template <typename T>
Strided<T> strided(const MatrixView& v) {
  return {static_cast<T*>(v.data), v.row_stride, v.col_stride};
}

template <typename T>
Strided<T> transposed(Strided<T> v) {
  return {v.data, v.col_stride, v.row_stride};
}

// ---------------------------------------------------------------------------------------------
// Staging into shared memory.

// Number of valid entries of a tile of kSize starting at `start` along an axis of `total`.
template <int kSize>
__device__ __forceinline__ int extent(int64_t total, int64_t start) {
  const int64_t left = total - start;
  return left < kSize ? static_cast<int>(left) : kSize;
}

// Loads the block  src[(l0 + l) * l_stride + (p0 + p) * p_stride],  l < kL, p < kTile,  converted
// to the accumulator type, and hands each element to put(l, p, x). `l` is the axis the compute
// loop walks (dims in forward, the summed-over rows in backward) and `p` the axis the threads own.
// Consecutive threads take consecutive elements along whichever axis is contiguous in memory, so
// the loads coalesce for row-major and transposed inputs alike. Elements outside l < nl, p < np,
// and all elements when src is null (an absent logvar), read as 0.
template <int kL, typename Acc, typename S, typename Put>
__device__ __forceinline__ void stage(const S* src, int64_t l0, int64_t p0, int nl, int np,
                                      int64_t l_stride, int64_t p_stride, Put put) {
  const bool l_fastest = l_stride == 1 && p_stride != 1;
  for (int e = static_cast<int>(threadIdx.x); e < kL * kTile; e += kThreads) {
    const int l = l_fastest ? e % kL : e / kTile;
    const int p = l_fastest ? e / kL : e % kTile;
    Acc x = Acc(0);
    if (src != nullptr && l < nl && p < np)
      x = Convert<S>::load(src[(l0 + l) * l_stride + (p0 + p) * p_stride]);
    put(l, p, x);
  }
}

// Padding column: the transposing stores (l fastest) hit distinct banks.
template <typename Acc>
using ChunkTile = Acc[kChunk<Acc>][kTile + 1];

template <typename Acc, typename S>
__device__ __forceinline__ void stage_values(ChunkTile<Acc>& dst, const S* src, int64_t l0,
                                             int64_t p0, int nl, int np, int64_t l_stride,
                                             int64_t p_stride) {
  stage<kChunk<Acc>, Acc>(src, l0, p0, nl, np, l_stride, p_stride,
                          [&](int l, int p, Acc x) { dst[l][p] = x; });
}

// Log-variances and var = exp(lv); padding and absent logvars give lv = 0, var = 1, values on
// which every metric term is finite.
template <typename Acc, typename S>
__device__ __forceinline__ void stage_logvar(ChunkTile<Acc>& lv, ChunkTile<Acc>& var, const S* src,
                                             int64_t l0, int64_t p0, int nl, int np,
                                             int64_t l_stride, int64_t p_stride) {
  stage<kChunk<Acc>, Acc>(src, l0, p0, nl, np, l_stride, p_stride, [&](int l, int p, Acc x) {
    lv[l][p] = x;
    var[l][p] = exp_acc(x);
  });
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename S, typename Acc>
struct ForwardArgs {
  Strided<const S> a_mu, a_lv;  // [N, D]; a_lv.data null when absent (l2)
  Strided<const S> b_mu, b_lv;  // [M, D]; b_lv.data null when absent (l2)
  Strided<Acc> out;             // [N, M]
  int64_t n, m, dim;
};

template <typename Term, typename S, typename Acc>
__global__ void __launch_bounds__(kThreads, (kForwardMinBlocks<Term, S>)) pairwise_forward_kernel(const ForwardArgs<S, Acc> args) {
  constexpr int kK = kChunk<Acc>;
  __shared__ ChunkTile<Acc> a_mu, a_lv, a_var, b_mu, b_lv, b_var;

  const int tx = static_cast<int>(threadIdx.x) % kThreadsX;
  const int ty = static_cast<int>(threadIdx.x) / kThreadsX;
  const int64_t tiles_m = (args.m + kTile - 1) / kTile;
  const int64_t tiles = (args.n + kTile - 1) / kTile * tiles_m;
  const Acc offset = Term::template offset<Acc>(args.dim);

  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t i0 = tile / tiles_m * kTile;
    const int64_t j0 = tile % tiles_m * kTile;
    const int ni = extent<kTile>(args.n, i0);
    const int nj = extent<kTile>(args.m, j0);

    Acc acc[kRegs][kRegs];
#pragma unroll
    for (int r = 0; r < kRegs; ++r)
#pragma unroll
      for (int c = 0; c < kRegs; ++c) acc[r][c] = Acc(0);

    for (int64_t k0 = 0; k0 < args.dim; k0 += kK) {
      const int nk = extent<kK>(args.dim, k0);
      // l = dimension, p = row: element (row, dim) is at row * row_stride + dim * col_stride.
      stage_values(a_mu, args.a_mu.data, k0, i0, nk, ni, args.a_mu.col_stride, args.a_mu.row_stride);
      stage_logvar(a_lv, a_var, args.a_lv.data, k0, i0, nk, ni, args.a_lv.col_stride,
                   args.a_lv.row_stride);
      stage_values(b_mu, args.b_mu.data, k0, j0, nk, nj, args.b_mu.col_stride, args.b_mu.row_stride);
      stage_logvar(b_lv, b_var, args.b_lv.data, k0, j0, nk, nj, args.b_lv.col_stride,
                   args.b_lv.row_stride);
      __syncthreads();

      // Two-level sum: the chunk's terms into `part`, then `part` into `acc`. One float running
      // sum over all D terms loses about D/16 times more to rounding than this (at D = 512 the
      // error was 5x the CPU GEMM form's, whose vector lanes and blocks split the sum too).
      Acc part[kRegs][kRegs];
#pragma unroll
      for (int r = 0; r < kRegs; ++r)
#pragma unroll
        for (int c = 0; c < kRegs; ++c) part[r][c] = Acc(0);
      // Only the nk valid dimensions: a padded dimension would add a nonzero term (csd: 2).
      for (int k = 0; k < nk; ++k) {
        Acc ma[kRegs], la[kRegs], va[kRegs], mb[kRegs], lb[kRegs], vb[kRegs];
#pragma unroll
        for (int r = 0; r < kRegs; ++r) {
          ma[r] = a_mu[k][ty + r * kThreadsY];
          la[r] = a_lv[k][ty + r * kThreadsY];
          va[r] = a_var[k][ty + r * kThreadsY];
        }
#pragma unroll
        for (int c = 0; c < kRegs; ++c) {
          mb[c] = b_mu[k][tx + c * kThreadsX];
          lb[c] = b_lv[k][tx + c * kThreadsX];
          vb[c] = b_var[k][tx + c * kThreadsX];
        }
#pragma unroll
        for (int r = 0; r < kRegs; ++r)
#pragma unroll
          for (int c = 0; c < kRegs; ++c)
            part[r][c] += Term::value(ma[r], la[r], va[r], mb[c], lb[c], vb[c]);
      }
#pragma unroll
      for (int r = 0; r < kRegs; ++r)
#pragma unroll
        for (int c = 0; c < kRegs; ++c) acc[r][c] += part[r][c];
      __syncthreads();  // before the next chunk overwrites the tiles
    }

#pragma unroll
    for (int r = 0; r < kRegs; ++r) {
      const int64_t i = i0 + ty + r * kThreadsY;
#pragma unroll
      for (int c = 0; c < kRegs; ++c) {
        const int64_t j = j0 + tx + c * kThreadsX;
        if (i < args.n && j < args.m)
          args.out.data[i * args.out.row_stride + j * args.out.col_stride] = acc[r][c] + offset;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward: one pass per side. The "own" side is the one whose gradients are written (rows P),
// the "other" side is summed over (rows Q), and g is grad_out seen as [P, Q] (its transpose for
// the b side). A block owns a 64 (own rows) x 64 (dims) tile of the gradients, keeps the own
// (mu, lv, var) of its 4 x 4 entries in registers, and walks Q in chunks, staging g[own rows,
// chunk] and the other side's (mu, lv, var)[chunk, dims] in shared memory.

template <typename S, typename Acc>
struct BackwardArgs {
  Strided<const Acc> g;                 // [P, Q]
  Strided<const S> own_mu, own_lv;      // [P, D]; own_lv.data null when absent (l2)
  Strided<const S> other_mu, other_lv;  // [Q, D]; other_lv.data null when absent (l2)
  Strided<S> grad_mu, grad_lv;          // [P, D]; data null = not requested
  int64_t p, q, dim;
};

template <typename Term, bool kOwnIsB, typename S, typename Acc>
__global__ void __launch_bounds__(kThreads, (kBackwardMinBlocks<Term, S>))
    pairwise_backward_kernel(const BackwardArgs<S, Acc> args) {
  constexpr int kQ = kChunk<Acc>;
  __shared__ ChunkTile<Acc> g_s, o_mu, o_lv, o_var;

  const int tx = static_cast<int>(threadIdx.x) % kThreadsX;
  const int ty = static_cast<int>(threadIdx.x) / kThreadsX;
  const int64_t tiles_d = (args.dim + kTile - 1) / kTile;
  const int64_t tiles = (args.p + kTile - 1) / kTile * tiles_d;

  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t r0 = tile / tiles_d * kTile;
    const int64_t d0 = tile % tiles_d * kTile;
    const int nr = extent<kTile>(args.p, r0);
    const int nd = extent<kTile>(args.dim, d0);

    Acc mu[kRegs][kRegs], lv[kRegs][kRegs], var[kRegs][kRegs];
    Acc g_mu[kRegs][kRegs], g_lv[kRegs][kRegs];
#pragma unroll
    for (int r = 0; r < kRegs; ++r) {
      const int64_t row = r0 + ty + r * kThreadsY;
#pragma unroll
      for (int c = 0; c < kRegs; ++c) {
        const int64_t d = d0 + tx + c * kThreadsX;
        const bool valid = row < args.p && d < args.dim;
        mu[r][c] = valid ? Convert<S>::load(
                               args.own_mu.data[row * args.own_mu.row_stride +
                                                d * args.own_mu.col_stride])
                         : Acc(0);
        lv[r][c] = valid && args.own_lv.data != nullptr
                       ? Convert<S>::load(args.own_lv.data[row * args.own_lv.row_stride +
                                                           d * args.own_lv.col_stride])
                       : Acc(0);
        var[r][c] = exp_acc(lv[r][c]);
        g_mu[r][c] = Acc(0);
        g_lv[r][c] = Acc(0);
      }
    }

    // Q == 0 (an empty other side) skips the loop: the gradients are written as zeros.
    for (int64_t q0 = 0; q0 < args.q; q0 += kQ) {
      const int nq = extent<kQ>(args.q, q0);
      // g: l = other row (column of g), p = own row.
      stage_values(g_s, args.g.data, q0, r0, nq, nr, args.g.col_stride, args.g.row_stride);
      // other side: l = other row, p = dimension.
      stage_values(o_mu, args.other_mu.data, q0, d0, nq, nd, args.other_mu.row_stride,
                   args.other_mu.col_stride);
      stage_logvar(o_lv, o_var, args.other_lv.data, q0, d0, nq, nd, args.other_lv.row_stride,
                   args.other_lv.col_stride);
      __syncthreads();

      for (int q = 0; q < nq; ++q) {
        Acc w[kRegs], om[kRegs], ol[kRegs], ov[kRegs];
#pragma unroll
        for (int r = 0; r < kRegs; ++r) w[r] = g_s[q][ty + r * kThreadsY];
#pragma unroll
        for (int c = 0; c < kRegs; ++c) {
          om[c] = o_mu[q][tx + c * kThreadsX];
          ol[c] = o_lv[q][tx + c * kThreadsX];
          ov[c] = o_var[q][tx + c * kThreadsX];
        }
#pragma unroll
        for (int r = 0; r < kRegs; ++r)
#pragma unroll
          for (int c = 0; c < kRegs; ++c) {
            if constexpr (kOwnIsB) {
              const TermGrad<Acc> t =
                  Term::grad(om[c], ol[c], ov[c], mu[r][c], lv[r][c], var[r][c]);
              g_mu[r][c] += w[r] * t.d_mu_b;
              g_lv[r][c] += w[r] * t.d_lv_b;
            } else {
              const TermGrad<Acc> t =
                  Term::grad(mu[r][c], lv[r][c], var[r][c], om[c], ol[c], ov[c]);
              g_mu[r][c] += w[r] * t.d_mu_a;
              g_lv[r][c] += w[r] * t.d_lv_a;
            }
          }
      }
      __syncthreads();  // before the next chunk overwrites the tiles
    }

#pragma unroll
    for (int r = 0; r < kRegs; ++r) {
      const int64_t row = r0 + ty + r * kThreadsY;
#pragma unroll
      for (int c = 0; c < kRegs; ++c) {
        const int64_t d = d0 + tx + c * kThreadsX;
        if (row >= args.p || d >= args.dim) continue;
        if (args.grad_mu.data != nullptr)
          args.grad_mu.data[row * args.grad_mu.row_stride + d * args.grad_mu.col_stride] =
              Convert<S>::store(g_mu[r][c]);
        if (args.grad_lv.data != nullptr)
          args.grad_lv.data[row * args.grad_lv.row_stride + d * args.grad_lv.col_stride] =
              Convert<S>::store(g_lv[r][c]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

unsigned grid_size(int64_t tiles) { return static_cast<unsigned>(std::min(tiles, kMaxBlocks)); }

int64_t tile_count(int64_t rows, int64_t cols) {
  return (rows + kTile - 1) / kTile * ((cols + kTile - 1) / kTile);
}

// The logvar of a side as the kernels read it: absent for l2, which never looks at it.
template <typename S>
Strided<const S> logvar_input(const MatrixView& v, Metric metric) {
  Strided<const S> s = strided<const S>(v);
  if (!metric_needs_logvar(metric)) s.data = nullptr;
  return s;
}

template <typename Term, typename S>
void launch_forward(const PairwiseForwardParams& p, cudaStream_t stream) {
  using Acc = typename Accumulate<S>::type;
  ForwardArgs<S, Acc> args;
  args.a_mu = strided<const S>(p.a_mean);
  args.a_lv = logvar_input<S>(p.a_logvar, p.metric);
  args.b_mu = strided<const S>(p.b_mean);
  args.b_lv = logvar_input<S>(p.b_logvar, p.metric);
  args.out = strided<Acc>(p.out);
  args.n = p.a_mean.rows;
  args.m = p.b_mean.rows;
  args.dim = p.a_mean.cols;
  const int64_t tiles = tile_count(args.n, args.m);
  if (tiles == 0) return;
  pairwise_forward_kernel<Term, S, Acc><<<grid_size(tiles), kThreads, 0, stream>>>(args);
  PCMEKIT_CUDA_LAUNCH_CHECK(stream);
}

// One side's gradients; skipped when neither is requested or there is nothing to write.
template <typename Term, bool kOwnIsB, typename S>
void launch_backward_side(const PairwiseBackwardParams& p, cudaStream_t stream) {
  using Acc = typename Accumulate<S>::type;
  const BackwardSide side = backward_side(p, kOwnIsB);
  if (!side.wanted()) return;

  BackwardArgs<S, Acc> args;
  const Strided<const Acc> g = strided<const Acc>(p.grad_out);
  args.g = kOwnIsB ? transposed(g) : g;
  args.own_mu = strided<const S>(side.own_mean);
  args.own_lv = logvar_input<S>(side.own_logvar, p.metric);
  args.other_mu = strided<const S>(side.other_mean);
  args.other_lv = logvar_input<S>(side.other_logvar, p.metric);
  args.grad_mu = strided<S>(side.grad_mean);
  args.grad_lv = strided<S>(side.grad_logvar);
  args.p = side.own_mean.rows;
  args.q = side.other_mean.rows;
  args.dim = side.own_mean.cols;
  const int64_t tiles = tile_count(args.p, args.dim);
  if (tiles == 0) return;  // P == 0 or D == 0: the gradients are empty
  pairwise_backward_kernel<Term, kOwnIsB, S, Acc>
      <<<grid_size(tiles), kThreads, 0, stream>>>(args);
  PCMEKIT_CUDA_LAUNCH_CHECK(stream);
}

template <typename Term, typename S>
void launch_backward(const PairwiseBackwardParams& p, cudaStream_t stream) {
  launch_backward_side<Term, false, S>(p, stream);
  launch_backward_side<Term, true, S>(p, stream);
}

// visit_metric is __host__ __device__, so the callbacks it runs only pick the launcher of the
// metric's term (a function pointer) and the host calls it afterwards: a callback that launched
// directly would be host code called from __host__ __device__ code, which nvcc warns about.
template <typename S>
struct PickForward {
  using Fn = void (*)(const PairwiseForwardParams&, cudaStream_t);
  template <typename Term>
  PCMEKIT_HD Fn operator()(Term) const { return &launch_forward<Term, S>; }
};

template <typename S>
struct PickBackward {
  using Fn = void (*)(const PairwiseBackwardParams&, cudaStream_t);
  template <typename Term>
  PCMEKIT_HD Fn operator()(Term) const { return &launch_backward<Term, S>; }
};

template <typename S>
struct TypeTag {
  using type = S;
};

// The one switch from the runtime dtype to the storage type; with visit_metric it spans the
// instantiation list: {float, double, __half, __nv_bfloat16} x {csd, w2, l2, kl, bhattacharyya,
// elk, inclusion} (x {a side, b side} for backward).
template <typename F>
void visit_storage(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: return f(TypeTag<float>{});
    case DType::Float64: return f(TypeTag<double>{});
    case DType::Float16: return f(TypeTag<__half>{});
    case DType::BFloat16: return f(TypeTag<__nv_bfloat16>{});
    case DType::Int64: break;
  }
  throw TypeError("pcmekit CUDA pairwise: unsupported dtype code " +
                  std::to_string(static_cast<int>(dtype)));
}

}  // namespace

void pairwise_forward(const PairwiseForwardParams& p) {
  // N == 0 or M == 0: nothing to write. D == 0 still launches: out = offset.
  if (p.a_mean.rows == 0 || p.b_mean.rows == 0) return;
  const DeviceGuard guard(p.a_mean.device_index);
  // csd/w2/l2/kl on tensor cores where the dtype and matmul precision allow (pairwise_tc.cu).
  if (pairwise_forward_tensor_cores(p)) return;
  const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  visit_storage(p.a_mean.dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    visit_metric(p.metric, PickForward<S>{})(p, stream);
  });
}

void pairwise_backward(const PairwiseBackwardParams& p) {
  const bool want_a = p.grad_a_mean.present() || p.grad_a_logvar.present();
  const bool want_b = p.grad_b_mean.present() || p.grad_b_logvar.present();
  if (!want_a && !want_b) return;
  const DeviceGuard guard(p.a_mean.device_index);
  // csd/w2/l2/kl on tensor cores where the dtype and matmul precision allow (pairwise_tc.cu).
  if (pairwise_backward_tensor_cores(p)) return;
  const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  visit_storage(p.a_mean.dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    visit_metric(p.metric, PickBackward<S>{})(p, stream);
  });
}

}  // namespace pcmekit::cuda
