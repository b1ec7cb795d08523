// The match probability's forward (pcmekit/match_prob.h) with its sample GEMM on TF32 tensor
// cores: used under the matmul precisions High and Medium for float32 (the Python layer's
// float32 copies of 16-bit inputs included: the samples are computed values, so they are
// float32 products like w2 / kl's features in pairwise_tc.cu); Highest, float64, J > 64 and
// devices below sm_80 stay on the direct kernel (match_prob.cu).
//
// The squared sample distances come from the GEMM form  |z_as|^2 + |z_bt|^2 - 2 <z_as, z_bt>
// (the CPU kernel's, cpu/match_prob.cpp), over the (N J) x (M J) sample rows, J rows an item:
//  * a block is 4 warps (128 threads) and owns a 64 x 64 tile of sample rows, whole items on
//    each side: kItems = 64 / J items, rows r < kItems J (the rest are zero rows, wasted work
//    when J does not divide 64); warp (wm, wn) owns 32 x 32, 2 x 2 TF32 m16n16k8 accumulators;
//  * the dimensions go in chunks of kDims = 16 (2 k-steps), double buffered through registers
//    with one __syncthreads a chunk (the loads of chunk c + 1 are issued before the mma's of
//    chunk c and turned into samples after them). The samples z = mu + exp(lv / 2) eps are
//    computed while staging and rounded to TF32 there; nothing of size [rows J, D] reaches
//    global memory. Each staging thread owns one dimension of 8 rows of each side (consecutive
//    threads on consecutive dimensions: coalesced for row-major inputs);
//  * the row norms |z|^2 are summed by the staging threads from the same rounded samples, so the
//    expansion is the distance between the rounded samples (up to float32 cancellation): its
//    error is 2 (z_a - z_b) . (dz_a - dz_b), small where the samples are close, rather than
//    the 4 z_a . dz_b of norms taken from unrounded samples;
//  * epilogue: the accumulators go to a 64 x 64 shared tile (store_matrix_sync), and each item
//    pair's J x J block is folded into the two log-sum-exps of match_prob.cu (log sigmoid(l),
//    log sigmoid(-l)) by a group of G lanes (G a power of two, so that about 128 lanes work
//    at once: G = 1 for J <= 7, 32 for J >= 22), merged with xor shuffles; the group's first
//    lane writes log p and log q with the same finishing step as the direct kernel.
// The backward runs on the direct kernel in every mode (match_prob.cu).
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cuda/cuda_check.h"
#include "cuda/match_prob_tc.h"
#include "cuda/tc_ops.h"

namespace pcmekit::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kTile = 64;      // sample rows of each side per block
constexpr int kWarps = 4;      // 2 x 2 warps, 32 x 32 sample pairs each
constexpr int kThreads = kWarps * 32;
constexpr int kDims = 16;      // dimensions per staged chunk (two TF32 k-steps of 8)
constexpr int kLd = kDims + 4; // staged rows of 80 bytes (wmma: a multiple of 16)
constexpr int kDistLd = kTile + 4;
constexpr int kRowsPerThread = kTile * kDims / kThreads;  // 8 rows, one dimension, a side
constexpr int kRowStep = kThreads / kDims;                // rows between a thread's rows
constexpr int64_t kMaxBlocks = int64_t(1) << 20;
static_assert(kMatchTcMaxSamples <= kTile, "at least one whole item a tile");
static_assert(kThreads % kDims == 0 && kRowStep * kRowsPerThread == kTile, "staging covers the tile");

template <typename T>
struct Strided {
  const T* data;
  int64_t row_stride, col_stride;  // elements
  __device__ __forceinline__ T operator()(int64_t r, int64_t c) const { return data[r * row_stride + c * col_stride]; }
};

struct Side {
  Strided<float> mean, logvar, eps;  // [items, D], [items, D], [items J, D]
  int64_t items;
};

struct TcArgs {
  Side a, b;
  float* log_p;
  float* log_q;
  int64_t lp_row_stride, lp_col_stride, lq_row_stride, lq_col_stride;
  int64_t dim;
  int samples;    // J
  int items;      // kItems = 64 / J
  int group_log;  // log2 G, the lanes that fold one item pair
  float scale, shift, log_j2;
  bool squared;
};

struct alignas(128) MpSmem {
  float a[2][kTile][kLd];        // samples of the a side's rows, TF32, [row][dim]
  float b[2][kTile][kLd];        // and of the b side's (read as a col_major matrix_b)
  float dot[kTile][kDistLd];     // <z_a, z_b> of the tile
  float norm_a[kTile], norm_b[kTile];
};

// A log-sum-exp held as (max, sum of exp(v - max)); empty = (-inf, 0).
struct Lse {
  float max, sum;
  __device__ __forceinline__ void add(float v) {
    if (v > max) {
      sum = sum * expf(max - v) + 1.0f;
      max = v;
    } else {
      sum += expf(v - max);
    }
  }
  __device__ __forceinline__ void merge(float other_max, float other_sum) {
    const float m = fmaxf(max, other_max);
    if (m == -INFINITY) return;  // both empty
    sum = sum * expf(max - m) + other_sum * expf(other_max - m);
    max = m;
  }
  __device__ __forceinline__ void merge_lanes(int group) {
    for (int offset = group / 2; offset > 0; offset /= 2) {
      const float m = __shfl_xor_sync(0xffffffffu, max, offset);
      const float s = __shfl_xor_sync(0xffffffffu, sum, offset);
      merge(m, s);
    }
  }
};

__global__ void __launch_bounds__(kThreads) match_forward_tc_kernel(const TcArgs args) {
#ifndef PCMEKIT_TC_ARCH
  (void)Tf32Op::from(0.0f);
  (void)&Lse::add;
  (void)&Lse::merge_lanes;
  __trap();  // the host never launches it there (match_prob_forward_tensor_cores)
#else
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
  using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

  __shared__ MpSmem s;

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int wm = warp / 2, wn = warp % 2;
  const int sdim = tid % kDims;   // the staging thread's dimension in a chunk
  const int srow = tid / kDims;   // and its first row (rows srow + kRowStep u)
  const int J = args.samples, kItems = args.items;
  const int used_rows = kItems * J;
  const int64_t tiles_m = (args.b.items + kItems - 1) / kItems;
  const int64_t tiles = (args.a.items + kItems - 1) / kItems * tiles_m;
  const int64_t chunks = (args.dim + kDims - 1) / kDims;

  // Item of each of the thread's rows within a tile (the same for every tile and both sides);
  // -1 for the padding rows past kItems J.
  int row_item[kRowsPerThread];
#pragma unroll
  for (int u = 0; u < kRowsPerThread; ++u) {
    const int r = srow + kRowStep * u;
    row_item[u] = r < used_rows ? r / J : -1;
  }

  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t ia = tile / tiles_m * kItems;  // first item of each side
    const int64_t ib = tile % tiles_m * kItems;

    FragC acc[2][2];
#pragma unroll
    for (int fi = 0; fi < 2; ++fi)
#pragma unroll
      for (int fj = 0; fj < 2; ++fj) wmma::fill_fragment(acc[fi][fj], 0.0f);

    // The next chunk's inputs (mean, logvar, eps of 8 rows, one dimension, each side), and the
    // running norms of the rows.
    float a_mu[kRowsPerThread], a_lv[kRowsPerThread], a_eps[kRowsPerThread];
    float b_mu[kRowsPerThread], b_lv[kRowsPerThread], b_eps[kRowsPerThread];
    float a_norm[kRowsPerThread], b_norm[kRowsPerThread];
#pragma unroll
    for (int u = 0; u < kRowsPerThread; ++u) a_norm[u] = b_norm[u] = 0.0f;

    auto fetch_side = [&](const Side& side, int64_t i0, int64_t d, float (&mu)[kRowsPerThread],
                          float (&lv)[kRowsPerThread], float (&eps)[kRowsPerThread]) {
#pragma unroll
      for (int u = 0; u < kRowsPerThread; ++u) {
        const int64_t item = i0 + row_item[u];
        mu[u] = lv[u] = eps[u] = 0.0f;
        if (row_item[u] >= 0 && item < side.items && d < args.dim) {
          mu[u] = side.mean(item, d);
          lv[u] = side.logvar(item, d);
          // Row (i0 + item) J + sample = i0 J + r: the tile's eps rows are consecutive.
          eps[u] = side.eps(i0 * J + srow + kRowStep * u, d);
        }
      }
    };
    auto fetch = [&](int64_t c) {
      const int64_t d = c * kDims + sdim;
      fetch_side(args.a, ia, d, a_mu, a_lv, a_eps);
      fetch_side(args.b, ib, d, b_mu, b_lv, b_eps);
    };
    // Samples of the fetched chunk into buffer `buf`, TF32; padding rows and dimensions hold
    // mu = lv = eps = 0, so their samples are 0.
    auto put = [&](int buf) {
#pragma unroll
      for (int u = 0; u < kRowsPerThread; ++u) {
        const int r = srow + kRowStep * u;
        const float za = Tf32Op::from(a_mu[u] + expf(0.5f * a_lv[u]) * a_eps[u]);
        const float zb = Tf32Op::from(b_mu[u] + expf(0.5f * b_lv[u]) * b_eps[u]);
        s.a[buf][r][sdim] = za;
        s.b[buf][r][sdim] = zb;
        a_norm[u] += za * za;
        b_norm[u] += zb * zb;
      }
    };

    if (chunks > 0) {
      fetch(0);
      put(0);
    }
    // Also orders the previous tile's epilogue reads of s.dot / s.norm_* before this tile's
    // writes of them.
    __syncthreads();
    for (int64_t c = 0; c < chunks; ++c) {
      const int buf = static_cast<int>(c & 1);
      if (c + 1 < chunks) fetch(c + 1);  // in flight during the mma's
#pragma unroll
      for (int ks = 0; ks < kDims / 8; ++ks) {
        FragA fa[2];
        FragB fb[2];
#pragma unroll
        for (int f = 0; f < 2; ++f) {
          wmma::load_matrix_sync(fa[f], &s.a[buf][wm * 32 + 16 * f][ks * 8], kLd);
          wmma::load_matrix_sync(fb[f], &s.b[buf][wn * 32 + 16 * f][ks * 8], kLd);
        }
#pragma unroll
        for (int fi = 0; fi < 2; ++fi)
#pragma unroll
          for (int fj = 0; fj < 2; ++fj) wmma::mma_sync(acc[fi][fj], fa[fi], fb[fj], acc[fi][fj]);
      }
      if (c + 1 < chunks) put(buf ^ 1);
      __syncthreads();
    }

    // Norms: a row's 16 staging threads are 16 consecutive lanes of one warp.
#pragma unroll
    for (int u = 0; u < kRowsPerThread; ++u) {
#pragma unroll
      for (int offset = kDims / 2; offset > 0; offset /= 2) {
        a_norm[u] += __shfl_xor_sync(0xffffffffu, a_norm[u], offset);
        b_norm[u] += __shfl_xor_sync(0xffffffffu, b_norm[u], offset);
      }
      if (sdim == 0) {
        s.norm_a[srow + kRowStep * u] = a_norm[u];
        s.norm_b[srow + kRowStep * u] = b_norm[u];
      }
    }
#pragma unroll
    for (int fi = 0; fi < 2; ++fi)
#pragma unroll
      for (int fj = 0; fj < 2; ++fj)
        wmma::store_matrix_sync(&s.dot[wm * 32 + 16 * fi][wn * 32 + 16 * fj], acc[fi][fj], kDistLd,
                                wmma::mem_row_major);
    __syncthreads();

    // Epilogue: group g of G lanes folds item pair g's J x J block; every lane runs the same
    // number of rounds, so the shuffles see whole warps.
    const int group = 1 << args.group_log;
    const int pairs = kItems * kItems;
    for (int base = 0; base < pairs * group; base += kThreads) {
      const int task = base + tid;
      const int pair = task >> args.group_log, lane_in_group = task & (group - 1);
      const int pi = pair / kItems, pj = pair % kItems;
      const int64_t i = ia + pi, j = ib + pj;
      const bool valid = pair < pairs && i < args.a.items && j < args.b.items;
      Lse lse_p{-INFINITY, 0.0f}, lse_q{-INFINITY, 0.0f};
      if (valid) {
        for (int e = lane_in_group; e < J * J; e += group) {
          const int ra = pi * J + e / J, rb = pj * J + e % J;
          const float x = s.norm_a[ra] + s.norm_b[rb] - 2.0f * s.dot[ra][rb];
          const float x0 = x < 0.0f ? 0.0f : x;  // the expansion may dip below 0 (NaN passes)
          const float dist = args.squared ? x0 : sqrtf(x0 + static_cast<float>(kMatchDistanceEps));
          const float l = args.shift - args.scale * dist;
          const float e1 = log1pf(expf(-fabsf(l)));
          lse_p.add(fminf(l, 0.0f) - e1);   // log sigmoid(l)
          lse_q.add(fminf(-l, 0.0f) - e1);  // log sigmoid(-l)
        }
      }
      lse_p.merge_lanes(group);
      lse_q.merge_lanes(group);
      if (valid && lane_in_group == 0) {
        float log_p = lse_p.max + logf(lse_p.sum) - args.log_j2;
        float log_q = lse_q.max + logf(lse_q.sum) - args.log_j2;
        // As match_prob.cu: the larger of p, q from the smaller, log1p keeps its accuracy.
        if (log_p <= log_q)
          log_q = log1pf(-expf(log_p));
        else
          log_p = log1pf(-expf(log_q));
        args.log_p[i * args.lp_row_stride + j * args.lp_col_stride] = log_p;
        args.log_q[i * args.lq_row_stride + j * args.lq_col_stride] = log_q;
      }
    }
  }
#endif
}

Strided<float> strided(const MatrixView& v) {
  return {static_cast<const float*>(v.data), v.row_stride, v.col_stride};
}

}  // namespace

bool match_prob_forward_tensor_cores(const MatchProbForwardParams& p) {
  if (p.a_mean.dtype != DType::Float32 || p.precision == MatmulPrecision::Highest ||
      p.num_samples > kMatchTcMaxSamples || !device_has_tensor_cores(p.a_mean.device_index))
    return false;
  TcArgs args;
  args.a = {strided(p.a_mean), strided(p.a_logvar), strided(p.eps_a), p.a_mean.rows};
  args.b = {strided(p.b_mean), strided(p.b_logvar), strided(p.eps_b), p.b_mean.rows};
  args.log_p = static_cast<float*>(p.log_p.data);
  args.log_q = static_cast<float*>(p.log_q.data);
  args.lp_row_stride = p.log_p.row_stride;
  args.lp_col_stride = p.log_p.col_stride;
  args.lq_row_stride = p.log_q.row_stride;
  args.lq_col_stride = p.log_q.col_stride;
  args.dim = p.a_mean.cols;
  args.samples = static_cast<int>(p.num_samples);
  args.items = kTile / args.samples;
  // G: the largest power of two <= 32 with pairs G <= 128 (at least 1).
  const int pairs = args.items * args.items;
  args.group_log = 0;
  while (args.group_log < 5 && (pairs << (args.group_log + 1)) <= kThreads) ++args.group_log;
  args.scale = static_cast<float>(p.scale);
  args.shift = static_cast<float>(p.shift);
  args.log_j2 = static_cast<float>(2.0 * std::log(double(p.num_samples)));
  args.squared = p.squared;
  const int64_t tiles =
      (p.a_mean.rows + args.items - 1) / args.items * ((p.b_mean.rows + args.items - 1) / args.items);
  if (tiles == 0) return true;  // N or M is 0: nothing to write
  const DeviceGuard guard(p.a_mean.device_index);
  const auto stream = static_cast<cudaStream_t>(p.stream);
  const unsigned grid = static_cast<unsigned>(std::min(tiles, kMaxBlocks));
  match_forward_tc_kernel<<<grid, kThreads, 0, stream>>>(args);
  PCMEKIT_CUDA_LAUNCH_CHECK(stream);
  return true;
}

}  // namespace pcmekit::cuda
