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

// B packed once for all its columns, for many products with it (a gallery searched again and
// again): the panels gemm would pack per call, laid out as one column block of all n columns, so
// that gemm_packed reads any run of whole panels of it and gives gemm's results bit for bit.
struct PackedBLayout {
  int64_t nr = 0, kc = 0;   // the micro-kernels' panel width and K-block depth
  int64_t cols = 0;         // n rounded up to whole panels
  int64_t elements = 0;     // cols * k
  int64_t tag = 0;          // identifies (instruction set, nr, kc): a packing is valid only for
                            // the kernels that made it
};
template <typename T>
PackedBLayout packed_b_layout(int64_t n, int64_t k);

// Packs B [k, n] into dst (packed_b_layout(n, k).elements elements, 64-byte aligned).
template <typename T>
void pack_b(int64_t n, int64_t k, GemmOperand<T> b, T* dst, int num_threads);

// gemm of A against columns [c0, c0 + n) of a B packed by pack_b (packed_cols = its layout's
// cols; c0 a multiple of the layout's nr).
template <typename T, typename Epilogue>
void gemm_packed(int64_t m, int64_t n, int64_t k, GemmOperand<T> a, const T* packed_b,
                 int64_t packed_cols, int64_t c0, const Epilogue& epilogue, int num_threads);

// Name of the micro-kernel the running CPU gets: "avx512", "avx2" or "generic".
const char* simd_path();

}  // namespace pcmekit::cpu

#include "gemm_impl.h"  // template definitions
