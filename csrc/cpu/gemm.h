// A register-blocked GEMM with a caller-supplied epilogue, the CPU engine under every
// inner-product-form kernel (csd, w2, l2, kl, and the Monte-Carlo sample distances).
//
//   C[r, c] = epilogue(r, c, sum_k A[r, k] * B[k, c])      0 <= r < m, 0 <= c < n
//
// A and B are read through strides (so transposed and non-contiguous operands need no copy:
// packing absorbs the layout). The full K-sum for an output element is finished before the
// epilogue sees it. The micro-kernel is chosen at run time from the CPU's features
// (AVX-512 / AVX2+FMA / generic); the build machine's CPU is never assumed.
#pragma once

#include <cstdint>

namespace pcmekit::cpu {

template <typename T>
struct GemmOperand {
  const T* data;
  int64_t row_stride;  // elements
  int64_t col_stride;  // elements
};

// Called with runs of consecutive columns of one row:
//   epilogue(r, c0, count, acc)   where acc[t] = sum_k A[r, k] * B[k, c0 + t],  t < count.
// It may be called from several threads at once, for disjoint (r, c) ranges.
template <typename T, typename Epilogue>
void gemm(int64_t m, int64_t n, int64_t k, GemmOperand<T> a, GemmOperand<T> b,
          const Epilogue& epilogue, int num_threads);

// Name of the micro-kernel the running CPU gets: "avx512", "avx2" or "generic".
const char* simd_path();

}  // namespace pcmekit::cpu

#include "gemm_impl.h"  // template definitions
