// CUDA kernels of the distance BCE (pcmekit/bce.h): the pass over a distance matrix, the final
// sum of the per-block partials, and the dispatch of the fused pairwise form.
//
// distance_bce_kernel: 256 threads a block, a grid-stride loop over the N x M elements in
// row-major order (consecutive threads on consecutive columns); each element's gradient goes
// to `grad` (which may be the distance itself: every element is read and then written by the
// same thread), its loss, q and q d terms to the thread's three double sums. Each block adds
// its threads' sums in a fixed tree into its row of the `sums` workspace; the grid is fixed by
// N x M alone (at most kBceMaxPartials blocks), and bce_finalize_kernel (one block) adds the
// rows in a fixed order. Nothing depends on scheduling or atomics: the same bits every run.
//
// The per-element formulas are bce_math.h's, the CPU kernel's: float arithmetic for float32
// and 16-bit distances (loaded as float, the gradient rounded back to the 16-bit type when
// stored), double for float64.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "cuda/bce_math.h"
#include "cuda/cuda_check.h"
#include "cuda/pairwise_tc.h"
#include "pcmekit/bce.h"

namespace pcmekit::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kElementsPerThread = 8;  // sizes the grid: about this many elements a thread

template <typename C, typename S>
__device__ __forceinline__ C load_as(S x) {
  if constexpr (std::is_same_v<S, __half>) {
    return __half2float(x);
  } else if constexpr (std::is_same_v<S, __nv_bfloat16>) {
    return __bfloat162float(x);
  } else {
    return static_cast<C>(x);
  }
}

template <typename S, typename C>
__device__ __forceinline__ S store_as(C x) {
  if constexpr (std::is_same_v<S, __half>) {
    return __float2half_rn(x);
  } else if constexpr (std::is_same_v<S, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return static_cast<S>(x);
  }
}

template <typename S, typename C>
struct BceArgs {
  const S* d;
  int64_t d_row_stride, d_col_stride;
  const S* y;  // null: the identity
  int64_t y_row_stride, y_col_stride;
  S* g;  // columns contiguous
  int64_t g_row_stride;
  int64_t n, m;
  BceScalars<C> c;
  double* partials;  // rows of 3: this launch's block b writes partials[3 b .. 3 b + 2]
};

template <typename S, typename C>
__global__ void __launch_bounds__(kThreads) distance_bce_kernel(const BceArgs<S, C> a) {
  __shared__ double red[3][kThreads];
  BceSums s{0.0, 0.0, 0.0};
  const int64_t total = a.n * a.m;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  int64_t idx = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  // (i, j) of idx, advanced by the stride without a division per element.
  int64_t i = idx / a.m, j = idx - i * a.m;
  const int64_t di = stride / a.m, dj = stride - di * a.m;
  for (; idx < total; idx += stride) {
    const C d = load_as<C>(a.d[i * a.d_row_stride + j * a.d_col_stride]);
    const C y = a.y != nullptr ? load_as<C>(a.y[i * a.y_row_stride + j * a.y_col_stride]) : C(i == j ? 1 : 0);
    const C g = bce_element<C>(d, y, a.c.neg_scale, a.c.shift, a.c.grad_scale, s);
    a.g[i * a.g_row_stride + j] = store_as<S>(g);
    i += di;
    j += dj;
    if (j >= a.m) {
      j -= a.m;
      ++i;
    }
  }
  const int tid = static_cast<int>(threadIdx.x);
  red[0][tid] = s.loss;
  red[1][tid] = s.q;
  red[2][tid] = s.qd;
  block_reduce_sums<kThreads>(red, a.partials + 3 * int64_t(blockIdx.x));
}

// One block: thread t adds rows t, t + 256, ... in order, then the block's fixed tree.
__global__ void __launch_bounds__(kThreads)
    bce_finalize_kernel(double* sums, int64_t partials, double weight, bool mean, bool empty) {
  __shared__ double red[3][kThreads];
  __shared__ double total[3];
  const int tid = static_cast<int>(threadIdx.x);
  double part[3] = {0.0, 0.0, 0.0};
  for (int64_t b = tid; b < partials; b += kThreads) {
#pragma unroll
    for (int k = 0; k < 3; ++k) part[k] += sums[3 * (1 + b) + k];
  }
#pragma unroll
  for (int k = 0; k < 3; ++k) red[k][tid] = part[k];
  block_reduce_sums<kThreads>(red, total);
  __syncthreads();
  if (tid == 0) {
    if (empty) {  // a mean over no pairs is NaN (as torch's), its gradients zero
      sums[0] = mean ? __longlong_as_double(0x7ff8000000000000LL) : 0.0;
      sums[1] = 0.0;
      sums[2] = 0.0;
    } else {
      sums[0] = weight * total[0];
      sums[1] = -weight * total[2];
      sums[2] = weight * total[1];
    }
  }
}

template <typename S, typename C>
void run_distance_bce(const DistanceBceParams& p, cudaStream_t stream) {
  const int64_t n = p.distance.rows, m = p.distance.cols;
  double* sums = static_cast<double*>(p.sums.data);
  int64_t blocks = 0;
  if (n > 0 && m > 0) {
    BceArgs<S, C> a;
    a.d = static_cast<const S*>(p.distance.data);
    a.d_row_stride = p.distance.row_stride;
    a.d_col_stride = p.distance.col_stride;
    a.y = p.target.present() ? static_cast<const S*>(p.target.data) : nullptr;
    a.y_row_stride = p.target.row_stride;
    a.y_col_stride = p.target.col_stride;
    a.g = static_cast<S*>(p.grad.data);
    a.g_row_stride = p.grad.row_stride;
    a.n = n;
    a.m = m;
    a.c = bce_scalars<C>(p.scale, p.shift, p.mean, n, m);
    a.partials = sums + 3;
    const int64_t per_block = kThreads * kElementsPerThread;
    blocks = std::min((n * m + per_block - 1) / per_block, kBceMaxPartials);
    distance_bce_kernel<S, C><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
    PCMEKIT_CUDA_LAUNCH_CHECK(stream);
  }
  launch_bce_finalize(sums, blocks, p.mean, n, m, stream);
}

}  // namespace

void launch_bce_finalize(double* sums, int64_t partials, bool mean, int64_t n, int64_t m,
                         cudaStream_t stream) {
  const bool empty = n == 0 || m == 0;
  const double weight = mean && !empty ? 1.0 / (double(n) * double(m)) : 1.0;
  bce_finalize_kernel<<<1, kThreads, 0, stream>>>(sums, partials, weight, mean, empty);
  PCMEKIT_CUDA_LAUNCH_CHECK(stream);
}

void distance_bce(const DistanceBceParams& p) {
  const DeviceGuard guard(p.distance.device_index);
  const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  switch (p.distance.dtype) {
    case DType::Float32: return run_distance_bce<float, float>(p, stream);
    case DType::Float64: return run_distance_bce<double, double>(p, stream);
    case DType::Float16: return run_distance_bce<__half, float>(p, stream);
    case DType::BFloat16: return run_distance_bce<__nv_bfloat16, float>(p, stream);
    case DType::Int64: break;
  }
  throw TypeError("pcmekit CUDA distance_bce: unsupported dtype code " +
                  std::to_string(static_cast<int>(p.distance.dtype)));
}

void pairwise_bce(const PairwiseBceParams& p) {
  const DeviceGuard guard(p.forward.a_mean.device_index);
  // The tensor-core engine, where it applies, computes the BCE in its epilogue (pairwise_tc.cu).
  if (p.forward.a_mean.rows > 0 && p.forward.b_mean.rows > 0 && pairwise_bce_tensor_cores(p)) return;
  // Otherwise the distance kernel writes the buffer and the pass overwrites it with the gradient.
  cuda::pairwise_forward(p.forward);
  cuda::distance_bce(pcmekit::detail::bce_params_of(p));
}

}  // namespace pcmekit::cuda
