// The per-element formulas of the distance BCE (pcmekit/bce.h) in device code, shared by the BCE
// pass (bce.cu) and the tensor-core engine's fused epilogue (pairwise_tc.cu). CUDA translation
// units only.
//
// They are the CPU kernel's (cpu/vec_math.cpp, bce_block / bce_row_scalar), in C = float for
// float32 and 16-bit distances and C = double for float64:
//   x       = (neg_scale * d) + shift            two roundings, as torch computes -scale * d + shift
//                                                (__fmul_rn / __fadd_rn: nvcc must not fuse them)
//   e       = exp(-|x|), for float held at exp(-87) ~ 1.6e-38 where -|x| < -87 (no subnormals)
//   sigmoid = 1 / (1 + e) for x >= 0, e / (1 + e) below; for float 0 where x < -87
//   term    = fma(-x, y, max(x, 0)) + log1p(e)   (float; the AVX2 path's fnmadd)
//           = (max(x, 0) - x y) + log1p(e)       (double, as the CPU's scalar double path)
//   q       = sigmoid - y,   grad = q * grad_scale
// and the sums in double: loss += term, q += q, qd += q * d. A NaN logit gives NaN throughout.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

namespace pcmekit::cuda {

struct BceSums {
  double loss, q, qd;
};

// Below this logit, exp(x) is not a normal float: the float path holds exp(-|x|) at exp(kBceLow).
constexpr float kBceLow = -87.0f;

// One element: returns the gradient entry and adds the element's terms to `sums`.
template <typename C>
__device__ __forceinline__ C bce_element(C d, C y, C neg_scale, C shift, C grad_scale, BceSums& sums) {
  C x, e, sigmoid, term;
  if constexpr (std::is_same_v<C, float>) {
    x = __fadd_rn(__fmul_rn(neg_scale, d), shift);
    const float nx = -fabsf(x);
    e = expf(nx < kBceLow ? kBceLow : nx);  // NaN compares false: exp(NaN) = NaN
    const float u = 1.0f + e;
    sigmoid = x < kBceLow ? 0.0f : (x >= 0.0f ? 1.0f / u : e / u);
    term = fmaf(-x, y, x > 0.0f ? x : 0.0f) + log1pf(e);
  } else {
    x = __dadd_rn(__dmul_rn(neg_scale, d), shift);
    e = exp(-fabs(x));
    const double u = 1.0 + e;
    sigmoid = x >= 0.0 ? 1.0 / u : e / u;
    term = __dadd_rn(__dadd_rn(x > 0.0 ? x : 0.0, -__dmul_rn(x, y)), log1p(e));
  }
  const C q = sigmoid - y;
  sums.loss += double(term);
  sums.q += double(q);
  sums.qd += double(q) * double(d);
  return q * grad_scale;
}

}  // namespace pcmekit::cuda

namespace pcmekit::cuda {

// The three sums of a block, each thread's in red[k][tid] (written by the caller), added in a
// fixed tree (the same bits on every run) into out[0..2]. Every thread of the block must call it.
template <int kN>
__device__ __forceinline__ void block_reduce_sums(double (*red)[kN], double* out) {
  static_assert((kN & (kN - 1)) == 0, "a power of two threads");
  const int tid = static_cast<int>(threadIdx.x);
  __syncthreads();
#pragma unroll 1
  for (int w = kN / 2; w > 0; w /= 2) {
    if (tid < w) {
#pragma unroll
      for (int k = 0; k < 3; ++k) red[k][tid] += red[k][tid + w];
    }
    __syncthreads();
  }
  if (tid == 0) {
#pragma unroll
    for (int k = 0; k < 3; ++k) out[k] = red[k][0];
  }
}

// The scalars of the pass, rounded as the CPU kernel rounds them (cpu/bce.cpp): the scale and
// shift to C, grad_scale = C(-scale * w).
template <typename C>
struct BceScalars {
  C neg_scale, shift, grad_scale;
};

template <typename C>
inline BceScalars<C> bce_scalars(double scale, double shift, bool mean, int64_t n, int64_t m) {
  const double weight = mean ? 1.0 / (double(n) * double(m)) : 1.0;
  const C s = static_cast<C>(scale);
  return {static_cast<C>(-s), static_cast<C>(shift), static_cast<C>(-double(s) * weight)};
}

// Sums the `partials` per-block rows of `sums` (rows 1..partials, each (loss, q, qd)) in a fixed
// order and writes row 0 = (loss, grad_scale, grad_shift) with the weight of mean / sum; with no
// pairs, loss = NaN for a mean (as torch), 0 for a sum, and both gradients 0. Defined in bce.cu.
void launch_bce_finalize(double* sums, int64_t partials, bool mean, int64_t n, int64_t m,
                         cudaStream_t stream);

}  // namespace pcmekit::cuda
