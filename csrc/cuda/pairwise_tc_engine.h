// The forward engine of the tensor-core kernels (pairwise_tc.cu's forward and fused BCE,
// topk_tc.cu's fused top-k): the inner-product form of csd / w2 / l2 / kl per metric (Form), the
// inputs (Input, load_run) and the main loop of one 64 x 64 output tile (tile_products): the
// features computed while staging, double-buffered shared memory, wmma products. What a kernel
// does with the finished accumulators (its epilogue) is its own. The design is pairwise_tc.cu's
// header comment and docs/design.md, "The engine".
//
// pairwise_forward_tc_kernel keeps its own inline copy of tile_products' loop: called through
// the function, its csd float32 instantiation spills 8 bytes at the 255-register limit (254
// registers and no spill inline; scripts/cuda_resources.py fails on any spill). The two copies
// must stay the same arithmetic: tests/test_cuda_emu_topk.py asserts the fused top-k is bit for
// bit a stable sort of the pairwise tensor-core matrix.
#pragma once

#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <cstring>

#include "cuda/tc_ops.h"
#include "pcmekit/metrics.h"
#include "pcmekit/view.h"

namespace pcmekit::cuda::tc {

constexpr int kTile = 64;        // output rows and columns per block
constexpr int kWarps = 4;        // 2 x 2 warps, 32 x 32 outputs each
constexpr int kThreads = kWarps * 32;
constexpr int kFeatures = 32;    // features per staged chunk
constexpr int kScratchLd = 20;   // per-warp 16 x 16 epilogue tile, padded (80-byte rows)
static_assert(kThreads == 2 * kTile, "two staging threads per row");

// ---------------------------------------------------------------------------------------------
// The features and row terms of one dimension (mu, lv) of a row, per metric and side.

template <Metric kMetric>
struct Form {
  static constexpr int width = (kMetric == Metric::W2 || kMetric == Metric::KL) ? 2 : 1;
  static constexpr bool needs_logvar = kMetric != Metric::L2;
  static constexpr float alpha = kMetric == Metric::KL ? 1.0f : -2.0f;

  // Writes the dimension's features to f and returns its contribution to the row term.
  template <bool kSideB>
  __device__ __forceinline__ static float features(float mu, float lv, float (&f)[width]) {
    if constexpr (kMetric == Metric::L2) {
      f[0] = mu;
      return mu * mu;
    } else if constexpr (kMetric == Metric::CSD) {
      f[0] = mu;
      return mu * mu + expf(lv);
    } else if constexpr (kMetric == Metric::W2) {
      const float var = expf(lv);
      f[0] = mu;
      f[width - 1] = sqrtf(var);
      return mu * mu + var;
    } else if constexpr (!kSideB) {  // kl, a side
      const float var = expf(lv);
      f[0] = var + mu * mu;
      f[width - 1] = mu;
      return -0.5f * lv - 0.5f;
    } else {  // kl, b side
      const float inv = 1.0f / expf(lv);
      f[0] = 0.5f * inv;
      f[width - 1] = -mu * inv;
      return 0.5f * (mu * mu * inv + lv);
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Inputs.

template <typename S>
struct Input {
  const S* data;   // null: absent (l2's logvar)
  int64_t row_stride, col_stride;
  bool vec;        // row-contiguous, 16-byte aligned base and row stride: 16-byte loads allowed
};

// Loads kN consecutive dimensions [d0, d0 + kN) of a row as floats; dimensions past `dim`
// read as 0. 16-byte vector loads when the input allows and the run is whole.
template <int kN, typename S>
__device__ __forceinline__ void load_run(const Input<S>& in, int64_t row, int64_t d0, int64_t dim,
                                         float (&out)[kN]) {
  const S* base = in.data + row * in.row_stride;
  constexpr int kPer = 16 / static_cast<int>(sizeof(S));
  static_assert(kN % kPer == 0, "whole 16-byte vectors");
  if (in.vec && d0 + kN <= dim) {
#pragma unroll
    for (int v = 0; v < kN / kPer; ++v) {
      const uint4 w = *reinterpret_cast<const uint4*>(base + d0 + v * kPer);
      S e[kPer];
      memcpy(e, &w, sizeof w);
#pragma unroll
      for (int u = 0; u < kPer; ++u) out[v * kPer + u] = to_float(e[u]);
    }
  } else {
#pragma unroll
    for (int u = 0; u < kN; ++u)
      out[u] = d0 + u < dim ? to_float(base[(d0 + u) * in.col_stride]) : 0.0f;
  }
}

// The Input of view `v` (absent when !present): 16-byte loads where its layout allows them.
template <typename S>
Input<S> input(const MatrixView& v, bool present) {
  Input<S> in{present ? static_cast<const S*>(v.data) : nullptr, v.row_stride, v.col_stride, false};
  in.vec = present && v.col_stride == 1 && (v.row_stride * int64_t(sizeof(S))) % 16 == 0 &&
           reinterpret_cast<std::uintptr_t>(v.data) % 16 == 0;
  return in;
}

// Shared-memory row length of a staged chunk: kFeatures plus 16 bytes, so rows stay 16-byte
// aligned and consecutive rows start on other banks.
template <typename Op>
constexpr int stage_ld() {
  return kFeatures + 16 / static_cast<int>(sizeof(typename Op::smem));
}

#ifdef PCMEKIT_TC_ARCH
template <typename Op>
using TileAcc = tc_wmma::fragment<tc_wmma::accumulator, 16, 16, Op::k, float>;

// Feature chunks of a row of `dim` dimensions (tile_products' `chunks`, computed once a kernel).
template <Metric kMetric>
__host__ __device__ constexpr int64_t feature_chunks(int64_t dim) {
  constexpr int kDims = kFeatures / Form<kMetric>::width;
  return (dim + kDims - 1) / kDims;
}

// The main loop of output tile (i0, j0) of the kernel arguments `args` (the kernel's own
// parameter: Input<S> a_mu, a_lv, b_mu, b_lv and int64_t n, m, dim; read in place rather than
// copied, as the kernel would): a = rows [i0, i0 + 64) of (a_mu, a_lv) (n rows in all), b =
// rows [j0, j0 + 64) of (b_mu, b_lv) (m rows), chunks = feature_chunks<kMetric>(dim); acc[fi][fj] gets the products of warp
// (wm, wn)'s fragment (32 wm + 16 fi, 32 wn + 16 fj), and row[r] / col[c] the row terms of a row
// i0 + r / b row j0 + c (0 past n / m), visible to the whole block on return (the last statement
// is a __syncthreads). Called by all kThreads threads; sa / sb are the double-buffered staging
// arrays, free again on return.
template <Metric kMetric, typename S, typename Op, int kLd, typename Args>
__device__ __forceinline__ void tile_products(const Args& args, int64_t chunks, int64_t i0, int64_t j0,
                                              typename Op::smem (&sa)[2][kTile][kLd],
                                              typename Op::smem (&sb)[2][kTile][kLd],
                                              float (&row)[kTile], float (&col)[kTile],
                                              TileAcc<Op> (&acc)[2][2]) {
  using F = Form<kMetric>;
  constexpr int kW = F::width;
  constexpr int kDims = kFeatures / kW;  // dimensions per chunk
  constexpr int kRun = kDims / 2;        // dimensions per staging thread
  using FragA = tc_wmma::fragment<tc_wmma::matrix_a, 16, 16, Op::k, typename Op::tag, tc_wmma::row_major>;
  using FragB = tc_wmma::fragment<tc_wmma::matrix_b, 16, 16, Op::k, typename Op::tag, tc_wmma::col_major>;

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int wm = warp / 2, wn = warp % 2;
  const int srow = tid / 2;        // the staging thread's row of A and of B
  const int shalf = tid % 2;       // and its half of the chunk's dimensions
  const bool a_valid = i0 + srow < args.n;
  const bool b_valid = j0 + srow < args.m;

#pragma unroll
  for (int fi = 0; fi < 2; ++fi)
#pragma unroll
    for (int fj = 0; fj < 2; ++fj) tc_wmma::fill_fragment(acc[fi][fj], 0.0f);

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
        sa[buf][srow][k] = Op::from(in_dim ? fa[w] : 0.0f);
        sb[buf][srow][k] = Op::from(in_dim ? fb[w] : 0.0f);
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
        tc_wmma::load_matrix_sync(fa[f], &sa[buf][wm * 32 + 16 * f][ks * Op::k], kLd);
        tc_wmma::load_matrix_sync(fb[f], &sb[buf][wn * 32 + 16 * f][ks * Op::k], kLd);
      }
#pragma unroll
      for (int fi = 0; fi < 2; ++fi)
#pragma unroll
        for (int fj = 0; fj < 2; ++fj) tc_wmma::mma_sync(acc[fi][fj], fa[fi], fb[fj], acc[fi][fj]);
    }
    if (c + 1 < chunks) put(c + 1, buf ^ 1);
    __syncthreads();
  }

  // Row terms: the two staging threads of a row are lanes 2r and 2r + 1 of one warp.
  a_term += __shfl_xor_sync(0xffffffffu, a_term, 1);
  b_term += __shfl_xor_sync(0xffffffffu, b_term, 1);
  if (shalf == 0) {
    row[srow] = a_term;
    col[srow] = b_term;
  }
  __syncthreads();
}
#endif  // PCMEKIT_TC_ARCH

}  // namespace pcmekit::cuda::tc
