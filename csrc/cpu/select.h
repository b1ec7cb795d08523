// The scan of the top-k epilogue (cpu/topk.cpp), vectorised for the running CPU like the GEMM
// micro-kernels. After the GEMM has finished a run of dot products acc[t] of one query row,
//
//   key[t] = max(col[t] + alpha * acc[t], floor)
//
// is the ranking key of gallery item t (the distance less the row's constant, clamped at the
// floor that stands for zero), and nearly every key loses against the row's current k-th best.
// The scan computes the keys a vector at a time and stops only at one that wins.
//
// Rounding: the product and the sum are rounded separately (never fused into an FMA; this file
// and topk.cpp are compiled with -ffp-contract=off), so every path, scalar or SIMD, gives the
// same key bits and the key reported for a hit is the one that was compared.
#pragma once

#include <cstdint>

namespace pcmekit::cpu {

// The first t in [0, count) whose key is < worst, its key in *key; count when there is none. A NaN
// key never qualifies.
int64_t first_key_below(const float* col, const float* acc, float alpha, float floor, float worst,
                        int64_t count, float* key);
int64_t first_key_below(const double* col, const double* acc, double alpha, double floor,
                        double worst, int64_t count, double* key);

// The key of one item, as the scan computes it.
template <typename T>
inline T topk_key(T col, T acc, T alpha, T floor) {
  const T x = col + alpha * acc;
  return x < floor ? floor : x;  // x when NaN, as the SIMD max(floor, x) gives
}

}  // namespace pcmekit::cpu
