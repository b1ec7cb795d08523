// Micro-kernels and packing routines for cpu/gemm.h, compiled once per instruction set with GCC
// target attributes (the library is built without -march so that one binary runs anywhere), and
// chosen once per process from the CPU's features.
//
// Micro-tiles: the MR x NR accumulator tile lives in vector registers, NR along the vectors:
//   AVX-512  float 12 x 32, double 12 x 16  (24 of 32 zmm for accumulators)
//   AVX2     float  6 x 16, double  6 x  8  (12 of 16 ymm: 2 for B, 1 for the broadcast of A)
//   generic  float  4 x  8, double  4 x  4  (16-byte vectors, 8 of the 16 SSE/NEON registers)
// Each k step loads NR/W vectors of B, broadcasts MR elements of A and issues MR * NR/W
// independent FMAs: enough to cover the FMA latency on two pipes, with loads to spare.
//
// The path comes from cpu/isa.h (PCMEKIT_CPU_CAPABILITY caps it).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/isa.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PCMEKIT_GEMM_X86 1
#endif

namespace pcmekit::cpu {
namespace detail {
namespace {

// One panel of `valid` <= W lanes (see GemmKernel::pack_a), in portable loops: the generic path's
// packing, and the edges and unusual strides of the vectorised one.
template <typename T, int W>
[[gnu::always_inline]] inline void pack_panel_portable(int64_t valid, int64_t kc, const T* src,
                                                       int64_t lane_stride, int64_t depth_stride,
                                                       T* dst) {
  if (valid == W && lane_stride == 1) {
    for (int64_t p = 0; p < kc; ++p)
      for (int l = 0; l < W; ++l) dst[p * W + l] = src[p * depth_stride + l];
  } else if (valid == W && depth_stride == 1) {
    for (int l = 0; l < W; ++l)
      for (int64_t p = 0; p < kc; ++p) dst[p * W + l] = src[l * lane_stride + p];
  } else {
    for (int64_t p = 0; p < kc; ++p)
      for (int l = 0; l < W; ++l)
        dst[p * W + l] = l < valid ? src[l * lane_stride + p * depth_stride] : T(0);
  }
}

template <typename T, int W>
void pack_generic(int64_t lanes, int64_t kc, const T* src, int64_t lane_stride,
                  int64_t depth_stride, T* dst) {
  for (int64_t l0 = 0; l0 < lanes; l0 += W, src += W * lane_stride, dst += kc * W)
    pack_panel_portable<T, W>(std::min<int64_t>(W, lanes - l0), kc, src, lane_stride,
                              depth_stride, dst);
}

// The micro-kernel (see GemmKernel::micro), written once over an `Ops` type that wraps one
// instruction set's vector intrinsics. It is a macro because GCC can only inline intrinsics into a
// function that carries their target attribute, and a template cannot take the attribute as a
// parameter; each instantiation below therefore gets its own copy of this function template.
// The constant loops are unrolled on request: GCC otherwise keeps acc[][] in memory as well as
// in registers and stores every accumulator on every k step.
#define PCMEKIT_UNROLL _Pragma("GCC unroll 32")
#define PCMEKIT_DEFINE_MICRO_KERNEL(NAME, ATTRIBUTES)                                     \
  template <typename Ops, int MR, int NV>                                                 \
  ATTRIBUTES void NAME(int64_t kc, const typename Ops::T* a, const typename Ops::T* b,    \
                       const typename Ops::T* c_in, typename Ops::T* c_out, int64_t ldc) { \
    using V = typename Ops::V;                                                            \
    constexpr int W = Ops::W, NR = NV * W;                                                \
    /* The sums to add come from a buffer too big for L1; fetch them while computing. */  \
    if (c_in)                                                                             \
      PCMEKIT_UNROLL for (int i = 0; i < MR; ++i)                                         \
        PCMEKIT_UNROLL for (int j = 0; j < NR; j += 64 / int(sizeof(*c_in)))              \
          __builtin_prefetch(c_in + i * ldc + j);                                         \
    V acc[MR][NV];                                                                        \
    PCMEKIT_UNROLL for (int i = 0; i < MR; ++i)                                           \
      PCMEKIT_UNROLL for (int j = 0; j < NV; ++j) acc[i][j] = Ops::zero();                \
    _Pragma("GCC unroll 4") for (int64_t p = 0; p < kc; ++p, a += MR, b += NR) {          \
      V bv[NV];                                                                           \
      PCMEKIT_UNROLL for (int j = 0; j < NV; ++j) bv[j] = Ops::load(b + j * W);           \
      PCMEKIT_UNROLL for (int i = 0; i < MR; ++i) {                                       \
        const V ai = Ops::broadcast(a + i);                                               \
        PCMEKIT_UNROLL for (int j = 0; j < NV; ++j) acc[i][j] = Ops::fma(ai, bv[j], acc[i][j]); \
      }                                                                                   \
    }                                                                                     \
    PCMEKIT_UNROLL for (int i = 0; i < MR; ++i)                                           \
      PCMEKIT_UNROLL for (int j = 0; j < NV; ++j) {                                       \
        const int64_t at = i * ldc + j * W;                                               \
        Ops::store(c_out + at, c_in ? Ops::add(Ops::load(c_in + at), acc[i][j]) : acc[i][j]); \
      }                                                                                   \
  }

// The same micro-kernel over P consecutive panels of B (b, b + panel_stride, ...; C columns
// j * NR on), for tiles of few rows: one row and two vectors are two chains of dependent FMAs,
// which leave the FMA pipes idle three cycles in four (4-cycle latency); P panels at once keep
// MR * NV * P chains in flight. Every sum is the same chain of FMAs as in the one-panel kernel,
// so the results are the same bit for bit.
#define PCMEKIT_DEFINE_WIDE_MICRO_KERNEL(NAME, ATTRIBUTES)                                \
  template <typename Ops, int MR, int NV, int P>                                          \
  ATTRIBUTES void NAME(int64_t kc, const typename Ops::T* a, const typename Ops::T* b,    \
                       int64_t panel_stride, const typename Ops::T* c_in,                 \
                       typename Ops::T* c_out, int64_t ldc) {                             \
    using V = typename Ops::V;                                                            \
    constexpr int W = Ops::W, NR = NV * W;                                                \
    V acc[P][MR][NV];                                                                     \
    PCMEKIT_UNROLL for (int q = 0; q < P; ++q)                                            \
      PCMEKIT_UNROLL for (int i = 0; i < MR; ++i)                                         \
        PCMEKIT_UNROLL for (int j = 0; j < NV; ++j) acc[q][i][j] = Ops::zero();           \
    _Pragma("GCC unroll 2") for (int64_t p = 0; p < kc; ++p, a += MR, b += NR) {          \
      PCMEKIT_UNROLL for (int i = 0; i < MR; ++i) {                                       \
        const V ai = Ops::broadcast(a + i);                                               \
        PCMEKIT_UNROLL for (int q = 0; q < P; ++q)                                        \
          PCMEKIT_UNROLL for (int j = 0; j < NV; ++j)                                     \
            acc[q][i][j] = Ops::fma(ai, Ops::load(b + q * panel_stride + j * W), acc[q][i][j]); \
      }                                                                                   \
    }                                                                                     \
    PCMEKIT_UNROLL for (int q = 0; q < P; ++q)                                            \
      PCMEKIT_UNROLL for (int i = 0; i < MR; ++i)                                         \
        PCMEKIT_UNROLL for (int j = 0; j < NV; ++j) {                                     \
          const int64_t at = i * ldc + q * NR + j * W;                                    \
          Ops::store(c_out + at,                                                          \
                     c_in ? Ops::add(Ops::load(c_in + at), acc[q][i][j]) : acc[q][i][j]); \
        }                                                                                 \
  }

// Portable 16-byte vectors (SSE2 on x86-64, NEON on AArch64). Without a fused multiply-add
// instruction the compiler may keep a * b + c as two operations; this path is a fallback.
template <typename Scalar>
struct GenericOps {
  using T = Scalar;
  typedef Scalar V __attribute__((vector_size(16)));
  static constexpr int W = 16 / sizeof(Scalar);
  static V zero() { return V{}; }
  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(T* p, V v) { std::memcpy(p, &v, sizeof v); }
  static V broadcast(const T* p) {
    V v;
    for (int l = 0; l < W; ++l) v[l] = *p;
    return v;
  }
  static V add(V x, V y) { return x + y; }
  static V fma(V x, V y, V z) { return x * y + z; }
};

PCMEKIT_DEFINE_MICRO_KERNEL(micro_generic, )
PCMEKIT_DEFINE_WIDE_MICRO_KERNEL(wide_generic, )

#ifdef PCMEKIT_GEMM_X86

#define PCMEKIT_AVX2 __attribute__((target("avx2,fma")))
#define PCMEKIT_AVX512 __attribute__((target("avx512f,avx512dq,fma")))
#define PCMEKIT_OPS(ATTR) ATTR __attribute__((always_inline)) static inline

struct Avx2Float {
  using T = float;
  using V = __m256;
  static constexpr int W = 8;
  PCMEKIT_OPS(PCMEKIT_AVX2) V zero() { return _mm256_setzero_ps(); }
  PCMEKIT_OPS(PCMEKIT_AVX2) V load(const T* p) { return _mm256_load_ps(p); }
  PCMEKIT_OPS(PCMEKIT_AVX2) void store(T* p, V v) { _mm256_store_ps(p, v); }
  PCMEKIT_OPS(PCMEKIT_AVX2) V broadcast(const T* p) { return _mm256_broadcast_ss(p); }
  PCMEKIT_OPS(PCMEKIT_AVX2) V add(V x, V y) { return _mm256_add_ps(x, y); }
  PCMEKIT_OPS(PCMEKIT_AVX2) V fma(V x, V y, V z) { return _mm256_fmadd_ps(x, y, z); }
};

struct Avx2Double {
  using T = double;
  using V = __m256d;
  static constexpr int W = 4;
  PCMEKIT_OPS(PCMEKIT_AVX2) V zero() { return _mm256_setzero_pd(); }
  PCMEKIT_OPS(PCMEKIT_AVX2) V load(const T* p) { return _mm256_load_pd(p); }
  PCMEKIT_OPS(PCMEKIT_AVX2) void store(T* p, V v) { _mm256_store_pd(p, v); }
  PCMEKIT_OPS(PCMEKIT_AVX2) V broadcast(const T* p) { return _mm256_broadcast_sd(p); }
  PCMEKIT_OPS(PCMEKIT_AVX2) V add(V x, V y) { return _mm256_add_pd(x, y); }
  PCMEKIT_OPS(PCMEKIT_AVX2) V fma(V x, V y, V z) { return _mm256_fmadd_pd(x, y, z); }
};

struct Avx512Float {
  using T = float;
  using V = __m512;
  static constexpr int W = 16;
  PCMEKIT_OPS(PCMEKIT_AVX512) V zero() { return _mm512_setzero_ps(); }
  PCMEKIT_OPS(PCMEKIT_AVX512) V load(const T* p) { return _mm512_load_ps(p); }
  PCMEKIT_OPS(PCMEKIT_AVX512) void store(T* p, V v) { _mm512_store_ps(p, v); }
  PCMEKIT_OPS(PCMEKIT_AVX512) V broadcast(const T* p) { return _mm512_set1_ps(*p); }
  PCMEKIT_OPS(PCMEKIT_AVX512) V add(V x, V y) { return _mm512_add_ps(x, y); }
  PCMEKIT_OPS(PCMEKIT_AVX512) V fma(V x, V y, V z) { return _mm512_fmadd_ps(x, y, z); }
};

struct Avx512Double {
  using T = double;
  using V = __m512d;
  static constexpr int W = 8;
  PCMEKIT_OPS(PCMEKIT_AVX512) V zero() { return _mm512_setzero_pd(); }
  PCMEKIT_OPS(PCMEKIT_AVX512) V load(const T* p) { return _mm512_load_pd(p); }
  PCMEKIT_OPS(PCMEKIT_AVX512) void store(T* p, V v) { _mm512_store_pd(p, v); }
  PCMEKIT_OPS(PCMEKIT_AVX512) V broadcast(const T* p) { return _mm512_set1_pd(*p); }
  PCMEKIT_OPS(PCMEKIT_AVX512) V add(V x, V y) { return _mm512_add_pd(x, y); }
  PCMEKIT_OPS(PCMEKIT_AVX512) V fma(V x, V y, V z) { return _mm512_fmadd_pd(x, y, z); }
};

PCMEKIT_DEFINE_MICRO_KERNEL(micro_avx2, PCMEKIT_AVX2)
PCMEKIT_DEFINE_MICRO_KERNEL(micro_avx512, PCMEKIT_AVX512)
PCMEKIT_DEFINE_WIDE_MICRO_KERNEL(wide_avx2, PCMEKIT_AVX2)
PCMEKIT_DEFINE_WIDE_MICRO_KERNEL(wide_avx512, PCMEKIT_AVX512)

// Packing with 256-bit vectors (AVX2, and AVX-512 too: it is not the bottleneck there). A whole
// panel whose lanes are each contiguous along depth (rows of a row-major A, columns of a
// transposed B: the common case) goes through register transposes of G lanes x G depths, G = 8
// floats or 4 doubles; lanes adjacent in memory are copied G at a time.
#define PCMEKIT_AVX2_INLINE PCMEKIT_AVX2 __attribute__((always_inline)) inline

// The first N lanes of a vector, touching no memory past them (N = 8, 6, 4 floats; 4, 2 doubles).
template <int N>
PCMEKIT_AVX2_INLINE __m256 load_first(const float* p) {
  if constexpr (N == 8) return _mm256_loadu_ps(p);
  if constexpr (N == 6)
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p)),
                                _mm_castsi128_ps(_mm_loadu_si64(p + 4)), 1);
  if constexpr (N == 4) return _mm256_castps128_ps256(_mm_loadu_ps(p));
}
template <int N>
PCMEKIT_AVX2_INLINE void store_first(float* p, __m256 v) {
  if constexpr (N == 8) _mm256_storeu_ps(p, v);
  if constexpr (N == 4 || N == 6) _mm_storeu_ps(p, _mm256_castps256_ps128(v));
  if constexpr (N == 6) _mm_storeu_si64(p + 4, _mm_castps_si128(_mm256_extractf128_ps(v, 1)));
}
template <int N>
PCMEKIT_AVX2_INLINE __m256d load_first(const double* p) {
  if constexpr (N == 4) return _mm256_loadu_pd(p);
  if constexpr (N == 2) return _mm256_castpd128_pd256(_mm_loadu_pd(p));
}
template <int N>
PCMEKIT_AVX2_INLINE void store_first(double* p, __m256d v) {
  if constexpr (N == 4) _mm256_storeu_pd(p, v);
  if constexpr (N == 2) _mm_storeu_pd(p, _mm256_castpd256_pd128(v));
}

// dst[q * W + l] = src[l * lane_stride + q] for l < N lanes, q < 8 depths.
template <int N, int W>
PCMEKIT_AVX2_INLINE void transpose_lanes(const float* src, int64_t lane_stride, float* dst) {
  __m256 r[8];
  for (int l = 0; l < 8; ++l)
    r[l] = l < N ? _mm256_loadu_ps(src + l * lane_stride) : _mm256_setzero_ps();
  __m256 t[8], u[8];
  for (int l = 0; l < 8; l += 2) {
    t[l] = _mm256_unpacklo_ps(r[l], r[l + 1]);
    t[l + 1] = _mm256_unpackhi_ps(r[l], r[l + 1]);
  }
  for (int l = 0; l < 8; l += 4) {
    u[l] = _mm256_shuffle_ps(t[l], t[l + 2], 0x44);
    u[l + 1] = _mm256_shuffle_ps(t[l], t[l + 2], 0xEE);
    u[l + 2] = _mm256_shuffle_ps(t[l + 1], t[l + 3], 0x44);
    u[l + 3] = _mm256_shuffle_ps(t[l + 1], t[l + 3], 0xEE);
  }
  for (int q = 0; q < 4; ++q) {
    store_first<N>(dst + q * W, _mm256_permute2f128_ps(u[q], u[q + 4], 0x20));
    store_first<N>(dst + (q + 4) * W, _mm256_permute2f128_ps(u[q], u[q + 4], 0x31));
  }
}

// dst[q * W + l] = src[l * lane_stride + q] for l < N lanes, q < 4 depths.
template <int N, int W>
PCMEKIT_AVX2_INLINE void transpose_lanes(const double* src, int64_t lane_stride, double* dst) {
  __m256d r[4];
  for (int l = 0; l < 4; ++l)
    r[l] = l < N ? _mm256_loadu_pd(src + l * lane_stride) : _mm256_setzero_pd();
  const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
  const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
  store_first<N>(dst, _mm256_permute2f128_pd(t0, t2, 0x20));
  store_first<N>(dst + W, _mm256_permute2f128_pd(t1, t3, 0x20));
  store_first<N>(dst + 2 * W, _mm256_permute2f128_pd(t0, t2, 0x31));
  store_first<N>(dst + 3 * W, _mm256_permute2f128_pd(t1, t3, 0x31));
}

template <typename T, int W>
PCMEKIT_AVX2_INLINE void pack_full_panel_x86(int64_t kc, const T* src, int64_t lane_stride,
                                             int64_t depth_stride, T* dst) {
  constexpr int G = 32 / sizeof(T), TAIL = W % G;
  if (depth_stride == 1) {
    int64_t p = 0;
    for (; p + G <= kc; p += G) {
      PCMEKIT_UNROLL for (int l = 0; l + G <= W; l += G)
        transpose_lanes<G, W>(src + l * lane_stride + p, lane_stride, dst + p * W + l);
      if constexpr (TAIL != 0)
        transpose_lanes<TAIL, W>(src + (W - TAIL) * lane_stride + p, lane_stride,
                                 dst + p * W + W - TAIL);
    }
    for (; p < kc; ++p)
      for (int l = 0; l < W; ++l) dst[p * W + l] = src[l * lane_stride + p];
  } else {
    pack_panel_portable<T, W>(W, kc, src, lane_stride, depth_stride, dst);
  }
}

// `panels` whole panels whose lanes are adjacent in memory (rows of a row-major B, columns of a
// transposed A), depth by depth: each depth is then one contiguous read, where going panel by
// panel would touch a new page on every depth (a TLB miss when rows are far apart).
template <typename T, int W>
PCMEKIT_AVX2_INLINE void pack_adjacent_lanes_x86(int64_t panels, int64_t kc, const T* src,
                                                 int64_t depth_stride, T* dst) {
  constexpr int G = 32 / sizeof(T), TAIL = W % G;
  // Depths are far apart in memory (a row of G, say, 4 KiB on): the hardware prefetcher does not
  // follow them, so the rows a few depths on are requested now.
  constexpr int64_t kAhead = 4;
  const int64_t row_bytes = panels * W * int64_t(sizeof(T));
  for (int64_t p = 0; p < kc; ++p, src += depth_stride, dst += W) {
    if (p + kAhead < kc) {
      const char* next = reinterpret_cast<const char*>(src + kAhead * depth_stride);
      for (int64_t b = 0; b < row_bytes; b += kCacheLine) __builtin_prefetch(next + b);
    }
    for (int64_t q = 0; q < panels; ++q) {
      const T* s = src + q * W;
      T* d = dst + q * kc * W;
      PCMEKIT_UNROLL for (int l = 0; l + G <= W; l += G)
        store_first<G>(d + l, load_first<G>(s + l));
      if constexpr (TAIL != 0) store_first<TAIL>(d + W - TAIL, load_first<TAIL>(s + W - TAIL));
    }
  }
}

template <typename T, int W>
PCMEKIT_AVX2_INLINE void pack_x86(int64_t lanes, int64_t kc, const T* src, int64_t lane_stride,
                                  int64_t depth_stride, T* dst) {
  int64_t l0 = 0;
  if (lane_stride == 1) {
    // A pass reads whole cache lines of every depth (a 6-float panel is 24 bytes: 16 of them
    // make 6 lines), at least 256 bytes; few enough panels that the lines written stay in L1.
    constexpr int64_t kBytes = W * int64_t(sizeof(T));
    constexpr int64_t kUnit = kCacheLine / std::gcd(kBytes, kCacheLine);  // panels per whole lines
    constexpr int64_t kPanelsPerPass = kUnit * ((256 + kUnit * kBytes - 1) / (kUnit * kBytes));
    for (; l0 + W <= lanes; l0 += kPanelsPerPass * W) {
      const int64_t panels = std::min(kPanelsPerPass, (lanes - l0) / W);
      pack_adjacent_lanes_x86<T, W>(panels, kc, src + l0, depth_stride, dst + l0 * kc);
    }
    l0 = lanes / W * W;
  }
  for (; l0 < lanes; l0 += W) {
    const T* s = src + l0 * lane_stride;
    T* d = dst + l0 * kc;
    if (lanes - l0 >= W)
      pack_full_panel_x86<T, W>(kc, s, lane_stride, depth_stride, d);
    else
      pack_panel_portable<T, W>(lanes - l0, kc, s, lane_stride, depth_stride, d);
  }
}

template <typename T, int W>
PCMEKIT_AVX2 void pack_avx2(int64_t lanes, int64_t kc, const T* src, int64_t lane_stride,
                            int64_t depth_stride, T* dst) {
  pack_x86<T, W>(lanes, kc, src, lane_stride, depth_stride, dst);
}

template <typename T, int W>
PCMEKIT_AVX512 void pack_avx512(int64_t lanes, int64_t kc, const T* src, int64_t lane_stride,
                                int64_t depth_stride, T* dst) {
  pack_x86<T, W>(lanes, kc, src, lane_stride, depth_stride, dst);
}

#endif  // PCMEKIT_GEMM_X86

// Block sizes come from byte budgets, so that float and double (and every tile shape) load the
// caches alike: one kc x nr panel of B (reused from L1 by every micro-kernel call of a column
// panel) takes PanelBytes, and the packed mc x kc block of A (streamed from L2) at most
// BlockBytes. AVX2: 16 KiB of a 32 KiB L1 and 144 KiB of a 512 KiB L2, as BLIS uses on Zen
// (kc 256, mc 144 floats or 72 doubles), measured best here too. AVX-512 parts have 32-48 KiB
// of L1 and 1-2 MiB of L2.
template <typename Ops, int MR, int NV, int64_t PanelBytes, int64_t BlockBytes>
GemmKernel<typename Ops::T> make_kernel(
    decltype(GemmKernel<typename Ops::T>::micro) micro,
    decltype(GemmKernel<typename Ops::T>::pack_a) pack_a,
    decltype(GemmKernel<typename Ops::T>::pack_b) pack_b) {
  using T = typename Ops::T;
  constexpr int NR = NV * Ops::W;
  constexpr int64_t kc = PanelBytes / (NR * int64_t(sizeof(T)));
  constexpr int64_t mc = BlockBytes / (kc * int64_t(sizeof(T))) / MR * MR;
  return GemmKernel<T>{MR, NR, mc, kc, micro, pack_a, pack_b};
}

// The byte budgets of each path, shared by its main kernel and its few-row kernels
// (select_row_kernels): equal budgets give equal kc, which the few-row kernels' bit identity
// with the main one rests on.
constexpr int64_t kAvx512Panel = 24 << 10, kAvx512Block = 288 << 10;
constexpr int64_t kAvx2Panel = 16 << 10, kAvx2Block = 144 << 10;
constexpr int64_t kGenericPanel = 16 << 10, kGenericBlock = 144 << 10;

template <typename T>
GemmKernel<T> select_kernel() {
  constexpr bool f32 = std::is_same_v<T, float>;
  switch (cpu_isa()) {
#ifdef PCMEKIT_GEMM_X86
    case Isa::avx512: {
      using Ops = std::conditional_t<f32, Avx512Float, Avx512Double>;
      return make_kernel<Ops, 12, 2, kAvx512Panel, kAvx512Block>(
          micro_avx512<Ops, 12, 2>, pack_avx512<T, 12>, pack_avx512<T, 2 * Ops::W>);
    }
    case Isa::avx2: {
      using Ops = std::conditional_t<f32, Avx2Float, Avx2Double>;
      return make_kernel<Ops, 6, 2, kAvx2Panel, kAvx2Block>(micro_avx2<Ops, 6, 2>, pack_avx2<T, 6>,
                                                         pack_avx2<T, 2 * Ops::W>);
    }
#endif
    default: {
      using Ops = GenericOps<T>;
      return make_kernel<Ops, 4, 2, kGenericPanel, kGenericBlock>(
          micro_generic<Ops, 4, 2>, pack_generic<T, 4>, pack_generic<T, 2 * Ops::W>);
    }
  }
}

// Kernels for a GEMM with fewer rows than the main kernel's tile: MR in {1, 2, 4, 8} (the smallest
// that holds the rows), the main kernel's NR, kc and packing of B. With the same kc the K blocks
// are the same, and each sum is the same chain of FMAs whatever MR is, so the result is bit for
// bit the main kernel's (docs/design.md, "Tolerances"); only the padding rows' work is saved
// (11 of 12 rows of every tile for a single query). A is packed by the portable loops: it is a few
// rows, and the vectorised packing handles only the main kernels' panel widths.
template <typename T>
std::vector<GemmKernel<T>> select_row_kernels() {
  constexpr bool f32 = std::is_same_v<T, float>;
  std::vector<GemmKernel<T>> out;
  // with(kernel, wide, panels): the kernel with its P-panel variant.
  auto with = [](GemmKernel<T> k, decltype(GemmKernel<T>::wide) wide, int panels) {
    k.wide = wide;
    k.wide_panels = panels;
    return k;
  };
  switch (cpu_isa()) {
#ifdef PCMEKIT_GEMM_X86
    case Isa::avx512: {
      using Ops = std::conditional_t<f32, Avx512Float, Avx512Double>;
      constexpr int64_t kPanel = kAvx512Panel, kBlock = kAvx512Block;
      out.push_back(with(make_kernel<Ops, 1, 2, kPanel, kBlock>(micro_avx512<Ops, 1, 2>, pack_generic<T, 1>, pack_avx512<T, 2 * Ops::W>), wide_avx512<Ops, 1, 2, 4>, 4));
      out.push_back(with(make_kernel<Ops, 2, 2, kPanel, kBlock>(micro_avx512<Ops, 2, 2>, pack_generic<T, 2>, pack_avx512<T, 2 * Ops::W>), wide_avx512<Ops, 2, 2, 2>, 2));
      out.push_back(make_kernel<Ops, 4, 2, kPanel, kBlock>(micro_avx512<Ops, 4, 2>, pack_generic<T, 4>, pack_avx512<T, 2 * Ops::W>));
      out.push_back(make_kernel<Ops, 8, 2, kPanel, kBlock>(micro_avx512<Ops, 8, 2>, pack_generic<T, 8>, pack_avx512<T, 2 * Ops::W>));
      break;
    }
    case Isa::avx2: {
      using Ops = std::conditional_t<f32, Avx2Float, Avx2Double>;
      constexpr int64_t kPanel = kAvx2Panel, kBlock = kAvx2Block;
      out.push_back(with(make_kernel<Ops, 1, 2, kPanel, kBlock>(micro_avx2<Ops, 1, 2>, pack_generic<T, 1>, pack_avx2<T, 2 * Ops::W>), wide_avx2<Ops, 1, 2, 4>, 4));
      out.push_back(with(make_kernel<Ops, 2, 2, kPanel, kBlock>(micro_avx2<Ops, 2, 2>, pack_generic<T, 2>, pack_avx2<T, 2 * Ops::W>), wide_avx2<Ops, 2, 2, 2>, 2));
      out.push_back(make_kernel<Ops, 4, 2, kPanel, kBlock>(micro_avx2<Ops, 4, 2>, pack_generic<T, 4>, pack_avx2<T, 2 * Ops::W>));
      break;
    }
#endif
    default: {
      using Ops = GenericOps<T>;
      out.push_back(with(make_kernel<Ops, 1, 2, kGenericPanel, kGenericBlock>(micro_generic<Ops, 1, 2>, pack_generic<T, 1>, pack_generic<T, 2 * Ops::W>), wide_generic<Ops, 1, 2, 2>, 2));
      out.push_back(make_kernel<Ops, 2, 2, kGenericPanel, kGenericBlock>(micro_generic<Ops, 2, 2>, pack_generic<T, 2>, pack_generic<T, 2 * Ops::W>));
      break;
    }
  }
  return out;
}

template <typename T>
const GemmKernel<T>& kernel_for(int64_t rows, const GemmKernel<T>& main) {
  static const std::vector<GemmKernel<T>> small = select_row_kernels<T>();
  for (const GemmKernel<T>& k : small)
    if (rows <= k.mr) return k;
  return main;
}

}  // namespace

template <>
const GemmKernel<float>& gemm_kernel_for_rows<float>(int64_t rows) {
  return kernel_for<float>(rows, gemm_kernel<float>());
}

template <>
const GemmKernel<double>& gemm_kernel_for_rows<double>(int64_t rows) {
  return kernel_for<double>(rows, gemm_kernel<double>());
}

template <>
const GemmKernel<float>& gemm_kernel<float>() {
  static const GemmKernel<float> kernel = select_kernel<float>();
  return kernel;
}

template <>
const GemmKernel<double>& gemm_kernel<double>() {
  static const GemmKernel<double> kernel = select_kernel<double>();
  return kernel;
}

}  // namespace detail

const char* simd_path() { return isa_name(cpu_isa()); }

}  // namespace pcmekit::cpu
