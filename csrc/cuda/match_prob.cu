// CUDA kernels of the Monte-Carlo match probability op (pcmekit/match_prob.h).
//
// Direct form, one thread per (query, gallery item) pair:
//  * a block is 256 threads, 8 warps; warp w owns query i0 + w, lane l owns gallery item j0 + l,
//    so a block covers an 8 x 32 tile of pairs; blocks walk the tiles with a grid-stride loop;
//  * the J x J sample pairs are taken in sub-blocks of at most 8 x 8 (forward) or 8 x 4
//    (backward) samples (s0.., t0..), whose squared distances a thread keeps in registers while
//    the dimensions stream through
//    shared memory in chunks of kChunk: the samples z = mu + exp(lv / 2) eps of the tile's 8
//    queries and 32 gallery items are computed once per chunk when staged;
//  * forward: each distance goes into an online log-sum-exp of log sigmoid(l) and one of
//    log sigmoid(-l) held in registers; nothing of size (N J) x (M J) is ever stored;
//  * backward: the same distances give the weights w_st = dL/dx_st in registers, then a second
//    pass over the dimensions forms dL/dz and folds it into the mean and log-variance gradients:
//    the query side is summed over the warp with shuffles (one atomic per warp and dimension),
//    the gallery side over the warps in shared memory (one atomic per item and dimension).
//
// The arithmetic per sample pair (distance, logit, log-sigmoids) is the definition in
// match_prob.h; float32 inputs compute in float, float64 in double. The CPU kernel computes the
// same quantities in inner-product form, so the two agree to rounding for the same eps.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cuda/cuda_check.h"
#include "cuda/match_prob_tc.h"
#include "pcmekit/match_prob.h"

namespace pcmekit::cuda {
namespace {

constexpr int kWarps = 8;                  // queries per tile (one warp each)
constexpr int kLanes = 32;                 // gallery items per tile (one lane each)
constexpr int kThreads = kWarps * kLanes;  // 256
constexpr int kSub = 8;   // query samples in a register sub-block (and gallery samples, forward)
// Gallery samples per sub-block in the backward pass: its weights w[kSub][kSubB] and gradient
// sums stay in registers across a whole pass over the dimensions, and at 8 x 8 the kernel needed
// 240-248 registers at 256 threads (one block per SM, 12% occupancy, no room left); 8 x 4
// halves them, at the price of recomputing the query side's staging once more per sub-block.
constexpr int kSubB = 4;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

// Dimensions staged per step: 16 (float) or 8 (double), so that the backward pass's four staged
// arrays take about 40 KB of shared memory either way.
template <typename T>
constexpr int kChunk = sizeof(T) == 8 ? 8 : 16;

__device__ __forceinline__ float exp_t(float x) { return expf(x); }
__device__ __forceinline__ double exp_t(double x) { return exp(x); }
__device__ __forceinline__ float log_t(float x) { return logf(x); }
__device__ __forceinline__ double log_t(double x) { return log(x); }
__device__ __forceinline__ float log1p_t(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_t(double x) { return log1p(x); }
__device__ __forceinline__ float sqrt_t(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_t(double x) { return sqrt(x); }

template <typename T>
__device__ __forceinline__ T log_sigmoid(T l) {
  return fmin(l, T(0)) - log1p_t(exp_t(-fabs(l)));
}

template <typename T>
struct LogSumExp {
  T max, sum;
  __device__ void init() {
    max = -INFINITY;
    sum = T(0);
  }
  __device__ void add(T v) {
    if (v > max) {
      sum = sum * exp_t(max - v) + T(1);
      max = v;
    } else {
      sum += exp_t(v - max);
    }
  }
  __device__ T value() const { return max + log_t(sum); }
};

template <typename T>
struct Strided {
  T* data;
  int64_t row_stride;  // elements
  int64_t col_stride;  // elements
  __device__ __forceinline__ T& operator()(int64_t r, int64_t c) const {
    return data[r * row_stride + c * col_stride];
  }
};

template <typename T>
Strided<T> strided(const MatrixView& v) {
  return {static_cast<T*>(v.data), v.row_stride, v.col_stride};
}

// One side of the problem as the kernels read it.
template <typename T>
struct SideArgs {
  Strided<const T> mean, logvar;  // [rows, D]
  Strided<const T> eps;           // [rows * J, D]
  int64_t rows;
};

template <typename T>
struct Problem {
  SideArgs<T> a, b;
  int64_t dim, samples;
  T scale, shift, log_j2;
  bool squared;
};

// Shared memory of one block: samples (and, for the backward pass, their noise sigma * eps) of
// the tile's queries and gallery items for one chunk of dimensions and one sub-block of samples.
// Gallery rows are padded by one element so that the 32 lanes read 32 different banks.
template <typename T, int kSA, int kSB>
struct Stage {
  T za[kWarps][kSA][kChunk<T>];
  T zb[kLanes][kSB * kChunk<T> + 1];
};

template <typename T, int kSA, int kSB>
struct NoiseStage {
  T na[kWarps][kSA][kChunk<T>];
  T nb[kLanes][kSB * kChunk<T> + 1];
};

// Stages z (and sigma * eps when `noise` is given) of items [i0, i0 + kItems), samples
// [s0, s0 + kS), dims [d0, d0 + kChunk) of one side; out-of-range entries are 0. Consecutive
// threads take consecutive dimensions, so the loads of row-major inputs coalesce.
template <int kItems, int kS, typename T, typename Put>
__device__ __forceinline__ void stage_side(const SideArgs<T>& side, int64_t samples, int64_t dim,
                                           int64_t i0, int64_t s0, int64_t d0, Put put) {
  constexpr int kC = kChunk<T>;
  for (int e = threadIdx.x; e < kItems * kS * kC; e += kThreads) {
    const int item = e / (kS * kC);
    const int s = (e / kC) % kS;
    const int dd = e % kC;
    const int64_t i = i0 + item, k = s0 + s, d = d0 + dd;
    T z = T(0), noise = T(0);
    if (i < side.rows && k < samples && d < dim) {
      const T sigma = exp_t(T(0.5) * side.logvar(i, d));
      noise = sigma * side.eps(i * samples + k, d);
      z = side.mean(i, d) + noise;
    }
    put(item, s, dd, z, noise);
  }
}

// acc[s][t] = ||z_a(s0 + s) - z_b(t0 + t)||^2 for this thread's pair (query i0 + warp, gallery
// item j0 + lane), s < kSA, t < kSB. Every thread of the block must call it (it synchronises).
template <typename T, int kSA, int kSB>
__device__ __forceinline__ void sub_block_distances(const Problem<T>& pb, Stage<T, kSA, kSB>& sh, int64_t i0,
                                                    int64_t j0, int64_t s0, int64_t t0,
                                                    T (&acc)[kSA][kSB]) {
  constexpr int kC = kChunk<T>;
  const int warp = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
#pragma unroll
  for (int s = 0; s < kSA; ++s)
#pragma unroll
    for (int t = 0; t < kSB; ++t) acc[s][t] = T(0);
  for (int64_t d0 = 0; d0 < pb.dim; d0 += kC) {
    __syncthreads();  // the previous chunk has been read
    stage_side<kWarps, kSA>(pb.a, pb.samples, pb.dim, i0, s0, d0,
                            [&](int q, int s, int dd, T z, T) { sh.za[q][s][dd] = z; });
    stage_side<kLanes, kSB>(pb.b, pb.samples, pb.dim, j0, t0, d0,
                            [&](int g, int t, int dd, T z, T) { sh.zb[g][t * kC + dd] = z; });
    __syncthreads();
#pragma unroll 4
    for (int dd = 0; dd < kC; ++dd) {
      T b[kSB];
#pragma unroll
      for (int t = 0; t < kSB; ++t) b[t] = sh.zb[lane][t * kC + dd];
#pragma unroll
      for (int s = 0; s < kSA; ++s) {
        const T a = sh.za[warp][s][dd];
#pragma unroll
        for (int t = 0; t < kSB; ++t) {
          const T diff = a - b[t];
          acc[s][t] = fma(diff, diff, acc[s][t]);
        }
      }
    }
  }
}

template <typename T>
__device__ __forceinline__ T sample_distance(const Problem<T>& pb, T x) {
  return pb.squared ? x : sqrt_t(x + T(kMatchDistanceEps));
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename T>
struct ForwardArgs {
  Problem<T> pb;
  Strided<T> log_p, log_q;  // [N, M]
};

template <typename T>
__global__ void __launch_bounds__(kThreads) match_forward_kernel(const ForwardArgs<T> args) {
  __shared__ Stage<T, kSub, kSub> sh;
  const Problem<T>& pb = args.pb;
  const int warp = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int64_t tiles_m = (pb.b.rows + kLanes - 1) / kLanes;
  const int64_t tiles = (pb.a.rows + kWarps - 1) / kWarps * tiles_m;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t i0 = tile / tiles_m * kWarps, j0 = tile % tiles_m * kLanes;
    LogSumExp<T> lse_p, lse_q;
    lse_p.init();
    lse_q.init();
    for (int64_t s0 = 0; s0 < pb.samples; s0 += kSub)
      for (int64_t t0 = 0; t0 < pb.samples; t0 += kSub) {
        T acc[kSub][kSub];
        sub_block_distances(pb, sh, i0, j0, s0, t0, acc);
#pragma unroll
        for (int s = 0; s < kSub; ++s)
#pragma unroll
          for (int t = 0; t < kSub; ++t) {
            if (s0 + s >= pb.samples || t0 + t >= pb.samples) continue;
            const T l = pb.shift - pb.scale * sample_distance(pb, acc[s][t]);
            const T e = log1p_t(exp_t(-fabs(l)));
            lse_p.add(fmin(l, T(0)) - e);   // log sigmoid(l)
            lse_q.add(fmin(-l, T(0)) - e);  // log sigmoid(-l)
          }
      }
    const int64_t i = i0 + warp, j = j0 + lane;
    if (i < pb.a.rows && j < pb.b.rows) {
      T log_p = lse_p.value() - pb.log_j2, log_q = lse_q.value() - pb.log_j2;
      // The larger of p, q from the smaller: log(1 - x) keeps its relative accuracy when the
      // larger rounds to 1 (log q ~ -p for p ~ 1e-30).
      if (log_p <= log_q)
        log_q = log1p_t(-exp_t(log_p));
      else
        log_p = log1p_t(-exp_t(log_q));
      args.log_p(i, j) = log_p;
      args.log_q(i, j) = log_q;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.

template <typename T>
struct BackwardArgs {
  Problem<T> pb;
  Strided<const T> grad_log_p, grad_log_q;  // [N, M]; data null = zeros
  Strided<const T> log_p, log_q;            // [N, M]
  Strided<T> grad_a_mean, grad_a_logvar;    // [N, D]; data null = not needed
  Strided<T> grad_b_mean, grad_b_logvar;    // [M, D]
  Strided<T> grad_scale_shift;              // [1, 2]; data null = not needed
};

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) match_backward_kernel(const BackwardArgs<T> args) {
  constexpr int kC = kChunk<T>;
  __shared__ Stage<T, kSub, kSubB> sh;
  __shared__ NoiseStage<T, kSub, kSubB> noise;
  __shared__ T red_mu[kLanes][kC], red_lv[kLanes][kC];  // gallery side, summed over warps
  __shared__ T red_scalars[2][kWarps];
  const Problem<T>& pb = args.pb;
  const int warp = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int64_t tiles_m = (pb.b.rows + kLanes - 1) / kLanes;
  const int64_t tiles = (pb.a.rows + kWarps - 1) / kWarps * tiles_m;
  const bool need_a = args.grad_a_mean.data != nullptr || args.grad_a_logvar.data != nullptr;
  const bool need_b = args.grad_b_mean.data != nullptr || args.grad_b_logvar.data != nullptr;
  T grad_scale = T(0), grad_shift = T(0);

  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t i0 = tile / tiles_m * kWarps, j0 = tile % tiles_m * kLanes;
    const int64_t i = i0 + warp, j = j0 + lane;
    // Out-of-range pairs get g = 0, so all their weights are 0.
    T gp = T(0), gq = T(0), log_sp = T(0), log_sq = T(0);
    if (i < pb.a.rows && j < pb.b.rows) {
      if (args.grad_log_p.data != nullptr) gp = args.grad_log_p(i, j);
      if (args.grad_log_q.data != nullptr) gq = args.grad_log_q(i, j);
      log_sp = args.log_p(i, j) + pb.log_j2;
      log_sq = args.log_q(i, j) + pb.log_j2;
    }
    for (int64_t s0 = 0; s0 < pb.samples; s0 += kSub)
      for (int64_t t0 = 0; t0 < pb.samples; t0 += kSubB) {
        T w[kSub][kSubB];
        sub_block_distances(pb, sh, i0, j0, s0, t0, w);
        // Weights w_st = dL/dx_st, from dL/dl = sigmoid(l) sigmoid(-l) (g_p / S_p - g_q / S_q)
        // in log space (log sigmoid(l) sigmoid(-l) <= log S of either side: no overflow).
#pragma unroll
        for (int s = 0; s < kSub; ++s)
#pragma unroll
          for (int t = 0; t < kSubB; ++t) {
            if (s0 + s >= pb.samples || t0 + t >= pb.samples) {
              w[s][t] = T(0);
              continue;
            }
            const T dist = sample_distance(pb, w[s][t]);
            const T l = pb.shift - pb.scale * dist;
            const T log_ss = -fabs(l) - T(2) * log1p_t(exp_t(-fabs(l)));
            const T dl = gp * exp_t(log_ss - log_sp) - gq * exp_t(log_ss - log_sq);
            grad_shift += dl;
            grad_scale -= dl * dist;
            w[s][t] = pb.squared ? -pb.scale * dl : dl * (-pb.scale / (T(2) * dist));
          }
        if (!need_a && !need_b) continue;
        // dL/dz_as = 2 sum_t w_st (z_as - z_bt),  dL/dz_bt = -2 sum_s w_st (z_as - z_bt), folded
        // through dz/dmu = 1, dz/dlv = sigma eps / 2.
        for (int64_t d0 = 0; d0 < pb.dim; d0 += kC) {
          __syncthreads();
          stage_side<kWarps, kSub>(pb.a, pb.samples, pb.dim, i0, s0, d0, [&](int q, int s, int dd, T z, T n) {
            sh.za[q][s][dd] = z;
            noise.na[q][s][dd] = n;
          });
          stage_side<kLanes, kSubB>(pb.b, pb.samples, pb.dim, j0, t0, d0, [&](int g, int t, int dd, T z, T n) {
            sh.zb[g][t * kC + dd] = z;
            noise.nb[g][t * kC + dd] = n;
          });
          for (int e = threadIdx.x; e < kLanes * kC; e += kThreads) {
            red_mu[e / kC][e % kC] = T(0);
            red_lv[e / kC][e % kC] = T(0);
          }
          __syncthreads();
          for (int dd = 0; dd < kC; ++dd) {
            T b[kSubB], gb[kSubB];
#pragma unroll
            for (int t = 0; t < kSubB; ++t) {
              b[t] = sh.zb[lane][t * kC + dd];
              gb[t] = T(0);
            }
            T ga_mu = T(0), ga_lv = T(0);
#pragma unroll
            for (int s = 0; s < kSub; ++s) {
              const T a = sh.za[warp][s][dd];
              T gs = T(0);
#pragma unroll
              for (int t = 0; t < kSubB; ++t) {
                const T c = T(2) * w[s][t] * (a - b[t]);
                gs += c;
                gb[t] -= c;
              }
              ga_mu += gs;
              ga_lv += gs * noise.na[warp][s][dd];
            }
            if (need_a) {
              ga_mu = warp_sum(ga_mu);
              ga_lv = warp_sum(ga_lv);
              const int64_t d = d0 + dd;
              if (lane == 0 && i < pb.a.rows && d < pb.dim) {
                if (args.grad_a_mean.data != nullptr) atomicAdd(&args.grad_a_mean(i, d), ga_mu);
                if (args.grad_a_logvar.data != nullptr)
                  atomicAdd(&args.grad_a_logvar(i, d), T(0.5) * ga_lv);
              }
            }
            if (need_b) {
              T gb_mu = T(0), gb_lv = T(0);
#pragma unroll
              for (int t = 0; t < kSubB; ++t) {
                gb_mu += gb[t];
                gb_lv += gb[t] * noise.nb[lane][t * kC + dd];
              }
              atomicAdd(&red_mu[lane][dd], gb_mu);
              atomicAdd(&red_lv[lane][dd], gb_lv);
            }
          }
          if (need_b) {
            __syncthreads();
            for (int e = threadIdx.x; e < kLanes * kC; e += kThreads) {
              const int g = e / kC, dd = e % kC;
              const int64_t jj = j0 + g, d = d0 + dd;
              if (jj >= pb.b.rows || d >= pb.dim) continue;
              if (args.grad_b_mean.data != nullptr) atomicAdd(&args.grad_b_mean(jj, d), red_mu[g][dd]);
              if (args.grad_b_logvar.data != nullptr)
                atomicAdd(&args.grad_b_logvar(jj, d), T(0.5) * red_lv[g][dd]);
            }
          }
        }
      }
  }

  if (args.grad_scale_shift.data != nullptr) {
    grad_scale = warp_sum(grad_scale);
    grad_shift = warp_sum(grad_shift);
    if (lane == 0) {
      red_scalars[0][warp] = grad_scale;
      red_scalars[1][warp] = grad_shift;
    }
    __syncthreads();
    if (threadIdx.x < 2) {
      T total = T(0);
      for (int w = 0; w < kWarps; ++w) total += red_scalars[threadIdx.x][w];
      atomicAdd(&args.grad_scale_shift(0, threadIdx.x), total);
    }
  }
}

constexpr int kZeroThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kZeroThreads) zero_kernel(const Strided<T> out, int64_t rows, int64_t cols) {
  const int64_t total = rows * cols;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x)
    out(e / cols, e % cols) = T(0);
}

// ---------------------------------------------------------------------------------------------
// Host side.

template <typename T>
SideArgs<T> side_args(const MatrixView& mean, const MatrixView& logvar, const MatrixView& eps) {
  return {strided<const T>(mean), strided<const T>(logvar), strided<const T>(eps), mean.rows};
}

template <typename Params, typename T>
Problem<T> problem(const Params& p) {
  Problem<T> pb;
  pb.a = side_args<T>(p.a_mean, p.a_logvar, p.eps_a);
  pb.b = side_args<T>(p.b_mean, p.b_logvar, p.eps_b);
  pb.dim = p.a_mean.cols;
  pb.samples = p.num_samples;
  pb.scale = static_cast<T>(p.scale);
  pb.shift = static_cast<T>(p.shift);
  pb.log_j2 = static_cast<T>(2.0 * std::log(double(p.num_samples)));
  pb.squared = p.squared;
  return pb;
}

int grid_for(int64_t n, int64_t m) {
  const int64_t tiles = (n + kWarps - 1) / kWarps * ((m + kLanes - 1) / kLanes);
  return static_cast<int>(std::max<int64_t>(1, std::min(tiles, kMaxBlocks)));
}

template <typename T>
void zero(const MatrixView& v, cudaStream_t stream) {
  if (!v.present() || v.empty()) return;
  const int64_t total = v.rows * v.cols;
  const int blocks = static_cast<int>(std::min<int64_t>((total + kZeroThreads - 1) / kZeroThreads, kMaxBlocks));
  zero_kernel<T><<<blocks, kZeroThreads, 0, stream>>>(strided<T>(v), v.rows, v.cols);
  PCMEKIT_CUDA_LAUNCH_CHECK(stream);
}

template <typename T>
void forward_typed(const MatchProbForwardParams& p) {
  const DeviceGuard guard(p.a_mean.device_index);
  const auto stream = static_cast<cudaStream_t>(p.stream);
  ForwardArgs<T> args{problem<MatchProbForwardParams, T>(p), strided<T>(p.log_p), strided<T>(p.log_q)};
  match_forward_kernel<T><<<grid_for(p.a_mean.rows, p.b_mean.rows), kThreads, 0, stream>>>(args);
  PCMEKIT_CUDA_LAUNCH_CHECK(stream);
}

template <typename T>
void backward_typed(const MatchProbBackwardParams& p) {
  const DeviceGuard guard(p.a_mean.device_index);
  const auto stream = static_cast<cudaStream_t>(p.stream);
  for (const MatrixView* v : {&p.grad_a_mean, &p.grad_a_logvar, &p.grad_b_mean, &p.grad_b_logvar,
                              &p.grad_scale_shift})
    zero<T>(*v, stream);
  if (p.a_mean.rows == 0 || p.b_mean.rows == 0) return;
  auto optional = [](const MatrixView& v) {
    return v.present() ? strided<T>(v) : Strided<T>{nullptr, 0, 0};
  };
  auto optional_in = [](const MatrixView& v) {
    return v.present() ? strided<const T>(v) : Strided<const T>{nullptr, 0, 0};
  };
  BackwardArgs<T> args{problem<MatchProbBackwardParams, T>(p),
                       optional_in(p.grad_log_p),
                       optional_in(p.grad_log_q),
                       strided<const T>(p.log_p),
                       strided<const T>(p.log_q),
                       optional(p.grad_a_mean),
                       optional(p.grad_a_logvar),
                       optional(p.grad_b_mean),
                       optional(p.grad_b_logvar),
                       optional(p.grad_scale_shift)};
  match_backward_kernel<T><<<grid_for(p.a_mean.rows, p.b_mean.rows), kThreads, 0, stream>>>(args);
  PCMEKIT_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace

void match_prob_forward(const MatchProbForwardParams& p) {
  if (p.log_p.empty()) return;
  // High / Medium float32 on sm_80+: the sample GEMM on TF32 tensor cores (match_prob_tc.cu).
  if (match_prob_forward_tensor_cores(p)) return;
  if (p.a_mean.dtype == DType::Float64) return forward_typed<double>(p);
  forward_typed<float>(p);
}

void match_prob_backward(const MatchProbBackwardParams& p) {
  if (p.a_mean.dtype == DType::Float64) return backward_typed<double>(p);
  backward_typed<float>(p);
}

}  // namespace pcmekit::cuda
