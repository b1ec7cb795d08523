// The tensor-core engine of the pairwise distance op (csd, w2, l2, kl): the forward here, the
// backward (g @ F_b and g^T @ F_a, pairwise_backward_tc_kernel) further down.
//
// Each of these metrics is  row term + column term + alpha <f_a, f_b>  (cpu/inner_product.h):
//   l2:   f = mu                      row = |mu|^2                          alpha = -2
//   csd:  f = mu                      row = |mu|^2 + sum var                alpha = -2
//   w2:   f = (mu, sigma)             row = |mu|^2 + sum var                alpha = -2
//   kl:   f_a = (var_a + mu_a^2, mu_a)   row_a = -1/2 sum lv_a - D/2        alpha = 1
//         f_b = (1/(2 var_b), -mu_b/var_b)  row_b = 1/2 sum (mu_b^2/var_b + lv_b)
// with the two features of a dimension interleaved (feature 2d, 2d + 1) for w2 and kl. The
// kernel computes the features while it stages the inputs into shared memory, so nothing of
// size [rows, features] is written to global memory; the row terms are summed by the staging
// threads on the way; the product runs on wmma; the epilogue adds the terms and clamps at 0
// (the expanded form can dip below zero by rounding where the distance is ~0).
//
// Tiling: a block is 4 warps (128 threads) and owns a 64 x 64 output tile; warp (wm, wn) owns
// a 32 x 32 quarter, 2 x 2 accumulator fragments of 16 x 16. The feature axis is walked in
// chunks of kFeatures = 32 (4 TF32 k-steps of 8, or 2 half/bfloat16 k-steps of 16), staged as
// [64 rows][32 + pad] row-major arrays for A and B (B read as a col_major matrix_b), double
// buffered: the global loads of chunk c + 1 are issued into registers before the mma's of chunk
// c, stored into the other buffer after them, with one __syncthreads per chunk. Each staging
// thread owns one row of A and one of B and half of the chunk's dimensions (16 for csd/l2, 8 for
// w2/kl), loaded with 16-byte vector loads when the view is row-contiguous and 16-byte aligned
// (row stride and base), else element by element through the strides.
//
// Operand types: TF32 (m16n16k8, features rounded with __float_to_tf32) for float32 inputs and
// for w2/kl on 16-bit inputs (their features are computed values, not the inputs; a 16-bit
// input itself is exact in TF32); half / bfloat16 m16n16k16 for csd and l2 on half / bfloat16
// inputs (the features are the inputs, exact). Accumulation is float.
//
// When it runs (pairwise_forward_tensor_cores): float64 never; float32 only when the matmul
// precision is High or Medium (torch's "high"/"medium": TF32 allowed); under Highest (torch's
// default) float32 stays on the direct FP32 engine (pairwise.cu), which keeps full float32
// accuracy. On 16-bit inputs csd and l2 always run here; w2 and kl only under High/Medium,
// since their features would be rounded to TF32. Devices below sm_80 (no TF32/bfloat16 wmma)
// use the direct engine. The backward follows the same rule (tensor_cores_apply).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda/bce_math.h"
#include "cuda/cuda_check.h"
#include "cuda/pairwise_tc.h"
#include "cuda/pairwise_tc_engine.h"
#include "cuda/tc_ops.h"
#include "pcmekit/bce.h"

namespace pcmekit::cuda {
namespace {

namespace wmma = nvcuda::wmma;
using namespace tc;  // the forward engine (pairwise_tc_engine.h)

constexpr int64_t kMaxBlocks = int64_t(1) << 20;

// ---------------------------------------------------------------------------------------------
// Arguments and shared memory.

// The fused BCE of pairwise_bce (bce_math.h): the epilogue writes dloss/ddistance to `out`
// instead of the distance, and each block its (loss, q, qd) sums to partials[3 blockIdx.x ..].
struct BceFuse {
  const float* target;  // null: the identity
  int64_t t_row_stride, t_col_stride;
  BceScalars<float> c;
  double* partials;
};

template <typename S>
struct TcArgs {
  Input<S> a_mu, a_lv, b_mu, b_lv;
  float* out;
  int64_t out_row_stride, out_col_stride;
  int64_t n, m, dim;
  BceFuse bce;  // kBce kernels only
};

template <typename Op, bool kBce>
struct alignas(128) TcSmem {
  using T = typename Op::smem;
  static constexpr int ld = kFeatures + 16 / static_cast<int>(sizeof(T));  // rows stay 16-byte aligned
  T a[2][kTile][ld];
  T b[2][kTile][ld];
  float scratch[kWarps][16][kScratchLd];
  float row[kTile];
  float col[kTile];
  // kBce: each thread's running BCE sums over its tiles, here rather than in registers (the
  // main loop already holds the prefetch registers), then the block's tree over them.
  double bce[kBce ? 3 : 1][kBce ? kThreads : 1];
};

// ---------------------------------------------------------------------------------------------
// The kernel.

template <Metric kMetric, typename S, typename Op, bool kBce>
__global__ void __launch_bounds__(kThreads) pairwise_forward_tc_kernel(const TcArgs<S> args) {
#ifndef PCMEKIT_TC_ARCH
  (void)Form<kMetric>::alpha;
  (void)Op::k;
  (void)Op::from(0.0f);
  __trap();  // the host never launches it there (pairwise_forward_tensor_cores)
#else
  using F = Form<kMetric>;
  using T = typename Op::smem;
  constexpr int kW = F::width;
  constexpr int kDims = kFeatures / kW;  // dimensions per chunk
  constexpr int kRun = kDims / 2;        // dimensions per staging thread
  constexpr int kLd = TcSmem<Op, kBce>::ld;
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, Op::k, typename Op::tag, wmma::row_major>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, Op::k, typename Op::tag, wmma::col_major>;
  using FragC = wmma::fragment<wmma::accumulator, 16, 16, Op::k, float>;

  __shared__ TcSmem<Op, kBce> s;

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int wm = warp / 2, wn = warp % 2;
  const int srow = tid / 2;        // the staging thread's row of A and of B
  const int shalf = tid % 2;       // and its half of the chunk's dimensions
  const int64_t tiles_m = (args.m + kTile - 1) / kTile;
  const int64_t tiles = (args.n + kTile - 1) / kTile * tiles_m;
  const int64_t chunks = (args.dim + kDims - 1) / kDims;
  if constexpr (kBce) {
#pragma unroll
    for (int k = 0; k < 3; ++k) s.bce[k][tid] = 0.0;
  }

  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t i0 = tile / tiles_m * kTile;
    const int64_t j0 = tile % tiles_m * kTile;
    const bool a_valid = i0 + srow < args.n;
    const bool b_valid = j0 + srow < args.m;

    FragC acc[2][2];
#pragma unroll
    for (int fi = 0; fi < 2; ++fi)
#pragma unroll
      for (int fj = 0; fj < 2; ++fj) wmma::fill_fragment(acc[fi][fj], 0.0f);

    // The staging thread's registers: the next chunk's inputs, and its row-term sums.
    float a_mu[kRun], a_lv[kRun], b_mu[kRun], b_lv[kRun];
    float a_term = 0.0f, b_term = 0.0f;

    auto fetch = [&](int64_t c) {
      const int64_t d0 = c * kDims + shalf * kRun;
#pragma unroll
      for (int u = 0; u < kRun; ++u) a_mu[u] = a_lv[u] = b_mu[u] = b_lv[u] = 0.0f;
      if (a_valid) {
        load_run(args.a_mu, i0 + srow, d0, args.dim, a_mu);
        if constexpr (F::needs_logvar) load_run(args.a_lv, i0 + srow, d0, args.dim, a_lv);
      }
      if (b_valid) {
        load_run(args.b_mu, j0 + srow, d0, args.dim, b_mu);
        if constexpr (F::needs_logvar) load_run(args.b_lv, j0 + srow, d0, args.dim, b_lv);
      }
    };
    // Features of the fetched chunk into buffer `buf`; padding dimensions give zero features.
    auto put = [&](int64_t c, int buf) {
      const int64_t d0 = c * kDims + shalf * kRun;
      float a_part = 0.0f, b_part = 0.0f;
#pragma unroll
      for (int u = 0; u < kRun; ++u) {
        const bool in_dim = d0 + u < args.dim;
        float fa[kW], fb[kW];
        const float ta = F::template features<false>(a_mu[u], a_lv[u], fa);
        const float tb = F::template features<true>(b_mu[u], b_lv[u], fb);
        if (in_dim) {
          a_part += ta;
          b_part += tb;
        }
#pragma unroll
        for (int w = 0; w < kW; ++w) {
          const int k = (shalf * kRun + u) * kW + w;
          s.a[buf][srow][k] = Op::from(in_dim ? fa[w] : 0.0f);
          s.b[buf][srow][k] = Op::from(in_dim ? fb[w] : 0.0f);
        }
      }
      a_term += a_part;  // two-level sums: the chunk's terms, then the running sum
      b_term += b_part;
    };

    if (chunks > 0) {
      fetch(0);
      put(0, 0);
    }
    __syncthreads();
    for (int64_t c = 0; c < chunks; ++c) {
      const int buf = static_cast<int>(c & 1);
      if (c + 1 < chunks) fetch(c + 1);  // in flight during the mma's
#pragma unroll
      for (int ks = 0; ks < kFeatures / Op::k; ++ks) {
        FragA fa[2];
        FragB fb[2];
#pragma unroll
        for (int f = 0; f < 2; ++f) {
          wmma::load_matrix_sync(fa[f], &s.a[buf][wm * 32 + 16 * f][ks * Op::k], kLd);
          wmma::load_matrix_sync(fb[f], &s.b[buf][wn * 32 + 16 * f][ks * Op::k], kLd);
        }
#pragma unroll
        for (int fi = 0; fi < 2; ++fi)
#pragma unroll
          for (int fj = 0; fj < 2; ++fj) wmma::mma_sync(acc[fi][fj], fa[fi], fb[fj], acc[fi][fj]);
      }
      if (c + 1 < chunks) put(c + 1, buf ^ 1);
      __syncthreads();
    }

    // Row terms: the two staging threads of a row are lanes 2r and 2r + 1 of one warp.
    a_term += __shfl_xor_sync(0xffffffffu, a_term, 1);
    b_term += __shfl_xor_sync(0xffffffffu, b_term, 1);
    if (shalf == 0) {
      s.row[srow] = a_term;
      s.col[srow] = b_term;
    }
    __syncthreads();

    // Epilogue: each accumulator fragment through the warp's scratch tile (the fragment layout
    // is opaque), then row + col + alpha acc, clamped at 0 (NaN passes), to global memory; with
    // kBce the distance goes through the BCE instead and its gradient is written.
    float(&scratch)[16][kScratchLd] = s.scratch[warp];
    BceSums sums{0.0, 0.0, 0.0};
#pragma unroll
    for (int fi = 0; fi < 2; ++fi)
#pragma unroll
      for (int fj = 0; fj < 2; ++fj) {
        wmma::store_matrix_sync(&scratch[0][0], acc[fi][fj], kScratchLd, wmma::mem_row_major);
        __syncwarp();
#pragma unroll
        for (int u = 0; u < 8; ++u) {
          const int e = lane + 32 * u;
          const int r = wm * 32 + 16 * fi + e / 16, cc = wn * 32 + 16 * fj + e % 16;
          const int64_t i = i0 + r, j = j0 + cc;
          if (i < args.n && j < args.m) {
            const float v = s.row[r] + s.col[cc] + F::alpha * scratch[e / 16][e % 16];
            const float dist = v < 0.0f ? 0.0f : v;
            if constexpr (kBce) {
              const BceFuse& b = args.bce;
              const float y = b.target != nullptr ? b.target[i * b.t_row_stride + j * b.t_col_stride]
                                                  : (i == j ? 1.0f : 0.0f);
              args.out[i * args.out_row_stride + j * args.out_col_stride] =
                  bce_element<float>(dist, y, b.c.neg_scale, b.c.shift, b.c.grad_scale, sums);
            } else {
              args.out[i * args.out_row_stride + j * args.out_col_stride] = dist;
            }
          }
        }
        __syncwarp();  // before the next fragment overwrites the scratch tile
      }
    if constexpr (kBce) {  // the thread's own slot: no barrier needed until the final tree
      s.bce[0][tid] += sums.loss;
      s.bce[1][tid] += sums.q;
      s.bce[2][tid] += sums.qd;
    } else {
      (void)sums;
    }
  }
  if constexpr (kBce) block_reduce_sums<kThreads>(s.bce, args.bce.partials + 3 * int64_t(blockIdx.x));
#endif
}

// ---------------------------------------------------------------------------------------------
// Backward: one kernel per side. The "own" side is the one whose gradients are written (P rows),
// the "other" side is summed over (Q rows), and g is grad_out seen as [P, Q] (its transpose for
// the b side). The product Prod = g @ F_other ([P, Q] x [Q, W]) runs on wmma, with F_other the
// other side's backward features (two a dimension for w2 / kl, interleaved as 2d, 2d + 1):
//   csd, l2:       F = mu                         (cpu/pairwise.cpp, backward_means_in_place)
//   w2:            F = (mu, sigma)
//   kl, own a:     F_b = (1/var_b, mu_b/var_b)
//   kl, own b:     F_a = (mu_a, var_a + mu_a^2)   (cpu/pairwise.cpp, backward_features)
// and the epilogue applies the chain rule with the own side's (mu, var) and s = the row sums of
// g (cpu/pairwise.cpp, combine_gradients):
//   csd, l2:  d mu = 2 (mu s - p0);  d lv = var s (csd; l2 writes 0)
//   w2:       d mu = 2 (mu s - p0);  d lv = sigma (sigma s - p1)
//   kl, a:    d mu = mu p0 - p1;     d lv = (var p0 - s) / 2
//   kl, b:    d mu = (mu s - p0) / var;  d lv = (s - (p1 - 2 mu p0 + mu^2 s) / var) / 2
//
// Tiling: a block is 4 warps and owns 64 own rows x 64 features (64 dimensions for csd / l2, 32
// for w2 / kl); warp (wm, wn) owns 32 x 32, 2 x 2 accumulator fragments. The summed axis Q goes
// in chunks of kBwQ = 32 rows: g[64 rows][32] (float, unrounded) and F[32][64 features] (rounded
// to TF32 when staged) in shared memory, double buffered through registers like the forward.
// g is rounded to TF32 on the fragment after the load; where the features are exact in TF32
// (csd / l2 on 16-bit inputs) g is split into two TF32 parts, hi = tf32(g), lo = tf32(g - hi),
// and both are multiplied (2xTF32): the product then has about 21 of g's 24 bits, float32's
// accuracy, which is why those run on tensor cores in every precision mode. The row sums s are
// added in float from the unrounded g tile in shared memory (two threads a row, two-level sum).
// All loads go element by element through the strides, coalesced along whichever axis is
// contiguous (no 16-byte loads yet).

constexpr int kBwQ = 32;          // other-side rows per staged chunk (4 TF32 k-steps)
constexpr int kBwLdA = kBwQ + 4;  // g tile row: 144 bytes
constexpr int kBwLdB = kTile + 4; // feature tile row: 272 bytes
constexpr int kBwGPerThread = kTile * kBwQ / kThreads;  // 16 g values a thread and chunk

struct alignas(128) BwSmem {
  float a[2][kTile][kBwLdA];   // g[own row][q]
  float b[2][kBwQ][kBwLdB];    // F[q][feature]
  float scratch[kWarps][16][kScratchLd];
  float sum[kTile];            // row sums of g
};

template <typename S>
struct BwArgs {
  const float* g;
  int64_t g_row_stride, g_col_stride;  // g as [P, Q]
  Input<S> own_mu, own_lv, other_mu, other_lv;
  S* grad_mu;                          // null: not requested
  int64_t gm_row_stride, gm_col_stride;
  S* grad_lv;                          // null: not requested
  int64_t gl_row_stride, gl_col_stride;
  int64_t p, q, dim;
};

template <Metric kMetric, bool kOwnIsB>
struct BwForm {
  static constexpr int width = (kMetric == Metric::W2 || kMetric == Metric::KL) ? 2 : 1;
  static constexpr bool other_needs_logvar = width == 2;  // csd / l2: F = mu

  // The other side's backward features of one dimension.
  __device__ __forceinline__ static void features(float mu, float lv, float (&f)[width]) {
    if constexpr (width == 1) {
      f[0] = mu;
    } else if constexpr (kMetric == Metric::W2) {
      f[0] = mu;
      f[width - 1] = sqrtf(expf(lv));
    } else if constexpr (!kOwnIsB) {  // kl, own a: the b side's features
      const float inv = 1.0f / expf(lv);
      f[0] = inv;
      f[width - 1] = mu * inv;
    } else {  // kl, own b: the a side's features
      const float var = expf(lv);
      f[0] = mu;
      f[width - 1] = var + mu * mu;
    }
  }

  // The own side's gradients of one dimension from its products p[] and the row sum s.
  __device__ __forceinline__ static void chain(float mu, float lv, float s, const float (&p)[width],
                                               float& gm, float& gl) {
    if constexpr (kMetric == Metric::L2) {
      gm = 2.0f * (mu * s - p[0]);
      gl = 0.0f;
    } else if constexpr (kMetric == Metric::CSD) {
      gm = 2.0f * (mu * s - p[0]);
      gl = expf(lv) * s;
    } else if constexpr (kMetric == Metric::W2) {
      const float sigma = sqrtf(expf(lv));
      gm = 2.0f * (mu * s - p[0]);
      gl = sigma * (sigma * s - p[width - 1]);
    } else if constexpr (!kOwnIsB) {
      gm = mu * p[0] - p[width - 1];
      gl = 0.5f * (expf(lv) * p[0] - s);
    } else {
      const float inv = 1.0f / expf(lv);
      gm = (mu * s - p[0]) * inv;
      gl = 0.5f * (s - (p[width - 1] - 2.0f * mu * p[0] + mu * mu * s) * inv);
    }
  }
};

template <typename S>
__device__ __forceinline__ float load_at(const Input<S>& in, int64_t row, int64_t col) {
  return to_float(in.data[row * in.row_stride + col * in.col_stride]);
}

template <typename S>
__device__ __forceinline__ S from_float(float x) {
  if constexpr (std::is_same_v<S, float>) {
    return x;
  } else if constexpr (std::is_same_v<S, __half>) {
    return __float2half_rn(x);
  } else {
    return __float2bfloat16_rn(x);
  }
}

template <Metric kMetric, bool kOwnIsB, typename S, bool kSplit>
__global__ void __launch_bounds__(kThreads) pairwise_backward_tc_kernel(const BwArgs<S> args) {
#ifndef PCMEKIT_TC_ARCH
  (void)BwForm<kMetric, kOwnIsB>::width;
  __trap();  // the host never launches it there (pairwise_backward_tensor_cores)
#else
  using F = BwForm<kMetric, kOwnIsB>;
  constexpr int kW = F::width;
  constexpr int kDims = kTile / kW;                          // dimensions per block tile
  constexpr int kFPerThread = kBwQ * kDims / kThreads;       // (q, dim) pairs a thread stages
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
  using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

  __shared__ BwSmem s;

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int wm = warp / 2, wn = warp % 2;
  const int srow = tid / 2, shalf = tid % 2;  // the thread's row of g for the row sums
  const int64_t tiles_d = (args.dim + kDims - 1) / kDims;
  const int64_t tiles = (args.p + kTile - 1) / kTile * tiles_d;
  const int64_t chunks = (args.q + kBwQ - 1) / kBwQ;
  // Coalescing: consecutive threads along q where g's q axis is contiguous, else along rows;
  // along dimensions where the other side's rows are contiguous, else along q.
  const bool g_q_fastest = args.g_col_stride == 1;
  const bool f_dim_fastest = args.other_mu.col_stride == 1;

  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t r0 = tile / tiles_d * kTile;
    const int64_t d0 = tile % tiles_d * kDims;

    FragC acc[2][2];
#pragma unroll
    for (int fi = 0; fi < 2; ++fi)
#pragma unroll
      for (int fj = 0; fj < 2; ++fj) wmma::fill_fragment(acc[fi][fj], 0.0f);

    float gv[kBwGPerThread], fmu[kFPerThread], flv[kFPerThread];
    float sum = 0.0f;

    auto fetch = [&](int64_t c) {
      const int64_t q0 = c * kBwQ;
#pragma unroll
      for (int u = 0; u < kBwGPerThread; ++u) {
        const int e = tid + kThreads * u;
        const int r = g_q_fastest ? e / kBwQ : e % kTile;
        const int k = g_q_fastest ? e % kBwQ : e / kTile;
        const int64_t row = r0 + r, q = q0 + k;
        gv[u] = row < args.p && q < args.q ? args.g[row * args.g_row_stride + q * args.g_col_stride] : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < kFPerThread; ++u) {
        const int e = tid + kThreads * u;
        const int k = f_dim_fastest ? e / kDims : e % kBwQ;
        const int d = f_dim_fastest ? e % kDims : e / kBwQ;
        const int64_t q = q0 + k, dim = d0 + d;
        const bool valid = q < args.q && dim < args.dim;
        fmu[u] = valid ? load_at(args.other_mu, q, dim) : 0.0f;
        if constexpr (F::other_needs_logvar) flv[u] = valid ? load_at(args.other_lv, q, dim) : 0.0f;
      }
    };
    auto put = [&](int64_t c, int buf) {
      const int64_t q0 = c * kBwQ;
#pragma unroll
      for (int u = 0; u < kBwGPerThread; ++u) {
        const int e = tid + kThreads * u;
        const int r = g_q_fastest ? e / kBwQ : e % kTile;
        const int k = g_q_fastest ? e % kBwQ : e / kTile;
        s.a[buf][r][k] = gv[u];
      }
#pragma unroll
      for (int u = 0; u < kFPerThread; ++u) {
        const int e = tid + kThreads * u;
        const int k = f_dim_fastest ? e / kDims : e % kBwQ;
        const int d = f_dim_fastest ? e % kDims : e / kBwQ;
        const bool valid = q0 + k < args.q && d0 + d < args.dim;
        float lv = 0.0f;
        if constexpr (F::other_needs_logvar) lv = flv[u];
        float f[kW];
        F::features(fmu[u], lv, f);
#pragma unroll
        for (int w = 0; w < kW; ++w) s.b[buf][k][d * kW + w] = Tf32Op::from(valid ? f[w] : 0.0f);
      }
    };

    if (chunks > 0) {
      fetch(0);
      put(0, 0);
    }
    __syncthreads();
    for (int64_t c = 0; c < chunks; ++c) {
      const int buf = static_cast<int>(c & 1);
      if (c + 1 < chunks) fetch(c + 1);  // in flight during the mma's
#pragma unroll
      for (int ks = 0; ks < kBwQ / 8; ++ks) {
        FragA fa[2];
        FragB fb[2];
#pragma unroll
        for (int f = 0; f < 2; ++f) {
          wmma::load_matrix_sync(fa[f], &s.a[buf][wm * 32 + 16 * f][ks * 8], kBwLdA);
          wmma::load_matrix_sync(fb[f], &s.b[buf][ks * 8][wn * 32 + 16 * f], kBwLdB);
        }
        if constexpr (kSplit) {
          FragA lo[2];
#pragma unroll
          for (int f = 0; f < 2; ++f)
#pragma unroll
            for (int t = 0; t < fa[f].num_elements; ++t) {
              const float hi = wmma::__float_to_tf32(fa[f].x[t]);
              lo[f].x[t] = wmma::__float_to_tf32(fa[f].x[t] - hi);
              fa[f].x[t] = hi;
            }
#pragma unroll
          for (int fi = 0; fi < 2; ++fi)
#pragma unroll
            for (int fj = 0; fj < 2; ++fj) wmma::mma_sync(acc[fi][fj], lo[fi], fb[fj], acc[fi][fj]);
        } else {
#pragma unroll
          for (int f = 0; f < 2; ++f)
#pragma unroll
            for (int t = 0; t < fa[f].num_elements; ++t) fa[f].x[t] = wmma::__float_to_tf32(fa[f].x[t]);
        }
#pragma unroll
        for (int fi = 0; fi < 2; ++fi)
#pragma unroll
          for (int fj = 0; fj < 2; ++fj) wmma::mma_sync(acc[fi][fj], fa[fi], fb[fj], acc[fi][fj]);
      }
      {  // the row sums of g from the unrounded tile: two threads a row, 16 values each
        float part = 0.0f;
#pragma unroll
        for (int k = 0; k < kBwQ / 2; ++k) part += s.a[buf][srow][shalf * (kBwQ / 2) + k];
        sum += part;
      }
      if (c + 1 < chunks) put(c + 1, buf ^ 1);
      __syncthreads();
    }

    // The two threads of a row are lanes 2r and 2r + 1 of one warp.
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    if (shalf == 0) s.sum[srow] = sum;
    __syncthreads();

    // Epilogue: each accumulator fragment through the warp's scratch tile, then the chain rule
    // per (row, dimension) with the own side's inputs, written through the gradients' strides.
    float(&scratch)[16][kScratchLd] = s.scratch[warp];
    constexpr int kPairs = 16 * 16 / kW;  // (row, dimension) pairs of a fragment
#pragma unroll
    for (int fi = 0; fi < 2; ++fi)
#pragma unroll
      for (int fj = 0; fj < 2; ++fj) {
        wmma::store_matrix_sync(&scratch[0][0], acc[fi][fj], kScratchLd, wmma::mem_row_major);
        __syncwarp();
#pragma unroll
        for (int u = 0; u < kPairs / 32; ++u) {
          const int e = lane + 32 * u;
          const int r = e / (16 / kW), cd = e % (16 / kW);
          const int lr = wm * 32 + 16 * fi + r;
          const int64_t row = r0 + lr;
          const int64_t dim = d0 + (wn * 32 + 16 * fj) / kW + cd;
          if (row < args.p && dim < args.dim) {
            float p[kW];
#pragma unroll
            for (int w = 0; w < kW; ++w) p[w] = scratch[r][cd * kW + w];
            const float mu = load_at(args.own_mu, row, dim);
            const float lv = args.own_lv.data != nullptr ? load_at(args.own_lv, row, dim) : 0.0f;
            float gm, gl;
            F::chain(mu, lv, s.sum[lr], p, gm, gl);
            if (args.grad_mu != nullptr)
              args.grad_mu[row * args.gm_row_stride + dim * args.gm_col_stride] = from_float<S>(gm);
            if (args.grad_lv != nullptr)
              args.grad_lv[row * args.gl_row_stride + dim * args.gl_col_stride] = from_float<S>(gl);
          }
        }
        __syncwarp();  // before the next fragment overwrites the scratch tile
      }
    // The next tile writes s.sum only after its first __syncthreads.
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// Host side.

// bce == nullptr: the plain forward; else the fused BCE of pairwise_bce (p = bce->forward).
template <Metric kMetric, typename S, typename Op>
void launch(const PairwiseForwardParams& p, const PairwiseBceParams* bce, cudaStream_t stream) {
  TcArgs<S> args;
  args.bce = BceFuse{};
  const bool lv = Form<kMetric>::needs_logvar;
  args.a_mu = input<S>(p.a_mean, true);
  args.a_lv = input<S>(p.a_logvar, lv);
  args.b_mu = input<S>(p.b_mean, true);
  args.b_lv = input<S>(p.b_logvar, lv);
  args.out = static_cast<float*>(p.out.data);
  args.out_row_stride = p.out.row_stride;
  args.out_col_stride = p.out.col_stride;
  args.n = p.a_mean.rows;
  args.m = p.b_mean.rows;
  args.dim = p.a_mean.cols;
  const int64_t tiles = (args.n + kTile - 1) / kTile * ((args.m + kTile - 1) / kTile);
  if (bce == nullptr) {
    if (tiles == 0) return;
    const unsigned grid = static_cast<unsigned>(std::min(tiles, kMaxBlocks));
    pairwise_forward_tc_kernel<kMetric, S, Op, false><<<grid, kThreads, 0, stream>>>(args);
    PCMEKIT_CUDA_LAUNCH_CHECK(stream);
    return;
  }
  // The fused BCE: a grid fixed by the shapes alone (at most kBceMaxPartials blocks, one partial
  // row each), so the sums are added in the same order on every run.
  double* sums = static_cast<double*>(bce->sums.data);
  const int64_t blocks = std::min(tiles, kBceMaxPartials);
  if (blocks > 0) {
    args.bce.target = bce->target.present() ? static_cast<const float*>(bce->target.data) : nullptr;
    args.bce.t_row_stride = bce->target.row_stride;
    args.bce.t_col_stride = bce->target.col_stride;
    args.bce.c = bce_scalars<float>(bce->scale, bce->shift, bce->mean, args.n, args.m);
    args.bce.partials = sums + 3;
    pairwise_forward_tc_kernel<kMetric, S, Op, true><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(args);
    PCMEKIT_CUDA_LAUNCH_CHECK(stream);
  }
  launch_bce_finalize(sums, blocks, bce->mean, args.n, args.m, stream);
}

template <Metric kMetric, typename S>
void launch_metric(const PairwiseForwardParams& p, const PairwiseBceParams* bce, cudaStream_t stream) {
  constexpr bool kInputFeatures = Form<kMetric>::width == 1;  // csd, l2: the features are the means
  if constexpr (std::is_same_v<S, __half> && kInputFeatures) {
    launch<kMetric, S, HalfOp>(p, bce, stream);
  } else if constexpr (std::is_same_v<S, __nv_bfloat16> && kInputFeatures) {
    launch<kMetric, S, Bf16Op>(p, bce, stream);
  } else {
    launch<kMetric, S, Tf32Op>(p, bce, stream);
  }
}

template <typename S>
void launch_storage(const PairwiseForwardParams& p, const PairwiseBceParams* bce, cudaStream_t stream) {
  switch (p.metric) {
    case Metric::CSD: return launch_metric<Metric::CSD, S>(p, bce, stream);
    case Metric::L2: return launch_metric<Metric::L2, S>(p, bce, stream);
    case Metric::W2: return launch_metric<Metric::W2, S>(p, bce, stream);
    case Metric::KL: return launch_metric<Metric::KL, S>(p, bce, stream);
    default: return;
  }
}

template <Metric kMetric, bool kOwnIsB, typename S, bool kSplit>
void launch_backward_side(const PairwiseBackwardParams& p, cudaStream_t stream) {
  const BackwardSide side = backward_side(p, kOwnIsB);
  if (!side.wanted()) return;
  const bool lv = Form<kMetric>::needs_logvar;
  BwArgs<S> args;
  args.g = static_cast<const float*>(p.grad_out.data);
  args.g_row_stride = kOwnIsB ? p.grad_out.col_stride : p.grad_out.row_stride;
  args.g_col_stride = kOwnIsB ? p.grad_out.row_stride : p.grad_out.col_stride;
  args.own_mu = input<S>(side.own_mean, true);
  args.own_lv = input<S>(side.own_logvar, lv);
  args.other_mu = input<S>(side.other_mean, true);
  args.other_lv = input<S>(side.other_logvar, lv);
  args.grad_mu = side.grad_mean.present() ? static_cast<S*>(side.grad_mean.data) : nullptr;
  args.gm_row_stride = side.grad_mean.row_stride;
  args.gm_col_stride = side.grad_mean.col_stride;
  args.grad_lv = side.grad_logvar.present() ? static_cast<S*>(side.grad_logvar.data) : nullptr;
  args.gl_row_stride = side.grad_logvar.row_stride;
  args.gl_col_stride = side.grad_logvar.col_stride;
  args.p = side.own_mean.rows;
  args.q = side.other_mean.rows;
  args.dim = side.own_mean.cols;
  constexpr int64_t kDims = kTile / BwForm<kMetric, kOwnIsB>::width;
  const int64_t tiles = (args.p + kTile - 1) / kTile * ((args.dim + kDims - 1) / kDims);
  if (tiles == 0) return;  // P == 0 or D == 0: the gradients are empty
  const unsigned grid = static_cast<unsigned>(std::min(tiles, kMaxBlocks));
  pairwise_backward_tc_kernel<kMetric, kOwnIsB, S, kSplit><<<grid, kThreads, 0, stream>>>(args);
  PCMEKIT_CUDA_LAUNCH_CHECK(stream);
}

template <Metric kMetric, typename S>
void launch_backward_metric(const PairwiseBackwardParams& p, cudaStream_t stream) {
  // csd / l2 on 16-bit inputs: the features are exact in TF32, so g is split (2xTF32).
  constexpr bool kSplit = Form<kMetric>::width == 1 && !std::is_same_v<S, float>;
  launch_backward_side<kMetric, false, S, kSplit>(p, stream);
  launch_backward_side<kMetric, true, S, kSplit>(p, stream);
}

template <typename S>
void launch_backward_storage(const PairwiseBackwardParams& p, cudaStream_t stream) {
  switch (p.metric) {
    case Metric::CSD: return launch_backward_metric<Metric::CSD, S>(p, stream);
    case Metric::L2: return launch_backward_metric<Metric::L2, S>(p, stream);
    case Metric::W2: return launch_backward_metric<Metric::W2, S>(p, stream);
    case Metric::KL: return launch_backward_metric<Metric::KL, S>(p, stream);
    default: return;
  }
}

}  // namespace

// The rule of docs/design.md's precision table, the same for forward and backward: float32 on
// tensor cores only when TF32 is allowed; 16-bit csd / l2 always (exact features); 16-bit w2 / kl
// as float32; never float64, bhattacharyya, elk, inclusion, or below sm_80.
bool tensor_cores_apply(Metric metric, DType dtype, MatmulPrecision precision, int device) {
  if (metric != Metric::CSD && metric != Metric::L2 && metric != Metric::W2 && metric != Metric::KL)
    return false;
  const bool tf32_allowed = precision != MatmulPrecision::Highest;
  const bool input_features = metric == Metric::CSD || metric == Metric::L2;
  switch (dtype) {
    case DType::Float32:
      if (!tf32_allowed) return false;
      break;
    case DType::Float16:
    case DType::BFloat16:
      if (!input_features && !tf32_allowed) return false;
      break;
    default: return false;
  }
  return device_has_tensor_cores(device);
}

bool device_has_tensor_cores(int device) {
  static int major[64] = {};
  if (device < 0 || device >= 64) return false;
  if (major[device] == 0) {
    int value = 0;
    if (cudaDeviceGetAttribute(&value, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    major[device] = value;
  }
  return major[device] >= 8;
}

namespace {

template <typename S>
struct StorageTag {
  using type = S;
};

// Calls launch(StorageTag<S>{}) for the storage type of p's inputs when the tensor cores apply to
// p (tensor_cores_apply); false, having done nothing, otherwise.
template <typename Params, typename Launch>
bool run_on_tensor_cores(const Params& p, Launch launch) {
  const DType dtype = p.a_mean.dtype;
  if (!tensor_cores_apply(p.metric, dtype, p.precision, p.a_mean.device_index)) return false;
  switch (dtype) {
    case DType::Float32: launch(StorageTag<float>{}); break;
    case DType::Float16: launch(StorageTag<__half>{}); break;
    default: launch(StorageTag<__nv_bfloat16>{}); break;
  }
  return true;
}

}  // namespace

bool pairwise_forward_tensor_cores(const PairwiseForwardParams& p) {
  const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  return run_on_tensor_cores(
      p, [&](auto tag) { launch_storage<typename decltype(tag)::type>(p, nullptr, stream); });
}

bool pairwise_bce_tensor_cores(const PairwiseBceParams& p) {
  const cudaStream_t stream = static_cast<cudaStream_t>(p.forward.stream);
  return run_on_tensor_cores(
      p.forward, [&](auto tag) { launch_storage<typename decltype(tag)::type>(p.forward, &p, stream); });
}

bool pairwise_backward_tensor_cores(const PairwiseBackwardParams& p) {
  const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  return run_on_tensor_cores(
      p, [&](auto tag) { launch_backward_storage<typename decltype(tag)::type>(p, stream); });
}

}  // namespace pcmekit::cuda
