// cuemu's stand-in for <mma.h>: the nvcuda::wmma warp-matrix API on the emulator's warps.
//
// Shapes: TF32 m16n16k8 (precision::tf32 operands, float accumulator) and half / bfloat16
// m16n16k16 (float accumulator) -- the ones pcmekit's tensor-core kernels use.
//
// What it models:
//  * warp collectives: load_matrix_sync, store_matrix_sync and mma_sync are warp barriers, like
//    a shuffle (cuemu/runtime.h): every lane of a full warp must reach the same call (site and
//    op number), a missing or divergent lane is a deadlock or a divergence fault, and the memory
//    pointer must be the same in every lane. Pointers must be 256-bit aligned and ldm a multiple
//    of 16 bytes, as the PTX ISA requires; anything else faults the launch.
//  * opaque fragments: each lane holds num_elements values in x[] (8 floats of a 16 x 16
//    accumulator, 4 TF32 values of a 16 x 8 A fragment, 8 halves of a 16 x 16 one); which
//    matrix element lives where is a scramble, deliberately not the hardware's nor any natural
//    pattern, so code that relies on the layout (anything but element-wise ops on x[]) or reads
//    other lanes' stored elements without __syncwarp gives wrong results here.
//  * input rounding as the hardware does it: __float_to_tf32 rounds to nearest, ties away from
//    zero (cvt.rna.tf32.f32); mma_sync on TF32 operands that were not converted uses their top
//    19 bits only (the hardware ignores the low 13 mantissa bits); half and bfloat16 operands
//    are exact. Products of TF32/half/bfloat16 values are exact in float.
//  * accumulation: d = c + sum_k a[m,k] b[k,n], added in float in order of k (one rounding per
//    addition). The tensor cores' internal alignment/truncation is not modelled bit for bit.
// Stores after which other lanes read the stored tile need __syncwarp() (or __syncthreads()),
// as on the hardware: here a lane writes its elements when it leaves the barrier, so a missing
// __syncwarp reads the 0xFF fill or stale data.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace precision {
struct tf32 {};
}  // namespace precision

namespace detail {

// Rows x columns of the matrix a fragment use holds.
template <typename Use, int M, int N, int K>
struct Dims;
template <int M, int N, int K>
struct Dims<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct Dims<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct Dims<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <typename T>
struct Element {
  using type = T;
};
template <>
struct Element<precision::tf32> {
  using type = float;
};

template <typename Use, int M, int N, int K, typename T>
constexpr bool supported() {
  if constexpr (std::is_same_v<Use, accumulator>) {
    return std::is_same_v<T, float> && M == 16 && N == 16 && (K == 8 || K == 16);
  } else if constexpr (std::is_same_v<T, precision::tf32>) {
    return M == 16 && N == 16 && K == 8;
  } else {
    return (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>) && M == 16 && N == 16 &&
           K == 16;
  }
}

}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(detail::supported<Use, M, N, K, T>(),
                "cuemu's wmma supports TF32 m16n16k8 and half/bfloat16 m16n16k16 with float accumulators");
  static_assert(std::is_same_v<Use, accumulator> == std::is_same_v<Layout, void>,
                "matrix_a/matrix_b fragments take row_major or col_major, accumulators none");
  using element_type = typename detail::Element<T>::type;
  using storage_element_type = element_type;
  static constexpr int rows = detail::Dims<Use, M, N, K>::rows;
  static constexpr int cols = detail::Dims<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols / 32;
  element_type x[num_elements];
};

// Round a float to TF32 (10 explicit mantissa bits) to nearest, ties away from zero, as
// cvt.rna.tf32.f32 does; the result is a float whose low 13 bits are zero. NaN and Inf pass.
inline float __float_to_tf32(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) {
    u += 0x1000u;  // half of the dropped part: ties round away from zero (sign-magnitude)
    u &= 0xffffe000u;
  }
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

namespace detail {

using ::cuemu::detail::Site;
using ::cuemu::detail::Thread;

inline float operand(float v) {  // an unconverted TF32 operand: the hardware reads its top 19 bits
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u &= 0xffffe000u;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}
inline float operand(__half v) { return __half2float(v); }
inline float operand(__nv_bfloat16 v) { return __bfloat162float(v); }

// Which matrix element (row, col) element e of lane `lane` holds: a scramble (lane-major index
// times 7, modulo the element count) that is neither the hardware's layout nor a natural
// pattern such as "lane + 32 e" or "lane's row", so code that relies on any layout -- or reads
// other lanes' stored elements without __syncwarp -- fails here.
template <typename Frag>
constexpr int kTotal = Frag::rows * Frag::cols;

template <typename Frag>
constexpr int inverse_of_7() {
  for (int x = 1; x < kTotal<Frag>; ++x)
    if (7 * x % kTotal<Frag> == 1) return x;
  return 0;
}

template <typename Frag>
inline void position(int lane, int e, int& row, int& col) {
  const int q = (lane * Frag::num_elements + e) * 7 % kTotal<Frag>;
  row = q / Frag::cols;
  col = q % Frag::cols;
}

// The lane and element that hold row-major position q: position's inverse.
template <typename Frag>
inline void owner(int q, int& lane, int& e) {
  const int idx = q * inverse_of_7<Frag>() % kTotal<Frag>;
  lane = idx / Frag::num_elements;
  e = idx % Frag::num_elements;
}

inline Thread& lane_thread(const char* what) {
  Thread& t = ::cuemu::detail::current_thread(what);
  const auto& w = ::cuemu::detail::warp_of(t);
  if (w.lanes != 32) ::cuemu::detail::fault(std::string(what) + ": wmma needs a full warp of 32 lanes");
  return t;
}

// The warp barrier of a wmma op: deposits `mine`, waits for all 32 lanes at the same call, and
// returns everyone's deposit.
inline const std::uint64_t* collective(Thread& t, std::uint64_t mine, const char* what,
                                       const char* file, int line) {
  return ::cuemu::detail::warp_exchange(t, mine, Site{what, file, line});
}

inline void check_uniform_pointer(const std::uint64_t* all, const char* what) {
  for (int l = 1; l < 32; ++l)
    if (all[l] != all[0])
      ::cuemu::detail::fault(std::string(what) + ": lanes pass different pointers (the pointer must be warp-uniform)");
}

inline void check_memory(const void* ptr, unsigned ldm, std::size_t elem_bytes, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(ptr) % 32 != 0)
    ::cuemu::detail::fault(std::string(what) + ": the pointer is not 256-bit (32-byte) aligned");
  if ((ldm * elem_bytes) % 16 != 0)
    ::cuemu::detail::fault(std::string(what) + ": ldm = " + std::to_string(ldm) +
                           " elements is not a multiple of 16 bytes");
}

// The warp barrier of a load or store: checks the lane, the pointer's alignment and ldm, waits
// for all 32 lanes and checks that they passed the same pointer. Returns the calling lane.
inline Thread& memory_collective(const void* ptr, unsigned ldm, std::size_t elem_bytes, const char* what,
                                 const char* file, int line) {
  Thread& t = lane_thread(what);
  check_memory(ptr, ldm, elem_bytes, what);
  check_uniform_pointer(collective(t, reinterpret_cast<std::uintptr_t>(ptr), what, file, line), what);
  return t;
}

// Element offset of tile position (r, c) in memory with leading dimension ldm.
inline std::size_t offset(int r, int c, unsigned ldm, bool row_major_memory) {
  return row_major_memory ? std::size_t(r) * ldm + c : std::size_t(c) * ldm + r;
}

}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f,
                          const typename fragment<Use, M, N, K, T, Layout>::element_type& v) {
  for (auto& e : f.x) e = v;
}

// matrix_a / matrix_b: the layout is the fragment's.
template <typename Use, int M, int N, int K, typename T, typename Layout, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* ptr, unsigned ldm,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using Frag = fragment<Use, M, N, K, T, Layout>;
  static_assert(!std::is_same_v<Use, accumulator>, "an accumulator load takes a layout_t");
  static_assert(std::is_same_v<std::remove_cv_t<P>, typename Frag::element_type>,
                "load_matrix_sync: the pointer's type must be the fragment's element type");
  const detail::Thread& t = detail::memory_collective(ptr, ldm, sizeof(P), "wmma::load_matrix_sync", file, line);
  for (int e = 0; e < Frag::num_elements; ++e) {
    int r, c;
    detail::position<Frag>(t.lane, e, r, c);
    f.x[e] = ptr[detail::offset(r, c, ldm, std::is_same_v<Layout, row_major>)];
  }
}

template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* ptr, unsigned ldm,
                             layout_t layout, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using Frag = fragment<accumulator, M, N, K, float>;
  const detail::Thread& t = detail::memory_collective(ptr, ldm, sizeof(float), "wmma::load_matrix_sync", file, line);
  for (int e = 0; e < Frag::num_elements; ++e) {
    int r, c;
    detail::position<Frag>(t.lane, e, r, c);
    f.x[e] = ptr[detail::offset(r, c, ldm, layout == mem_row_major)];
  }
}

template <int M, int N, int K>
inline void store_matrix_sync(float* ptr, const fragment<accumulator, M, N, K, float>& f, unsigned ldm,
                              layout_t layout, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  using Frag = fragment<accumulator, M, N, K, float>;
  const detail::Thread& t = detail::memory_collective(ptr, ldm, sizeof(float), "wmma::store_matrix_sync", file, line);
  for (int e = 0; e < Frag::num_elements; ++e) {
    int r, c;
    detail::position<Frag>(t.lane, e, r, c);
    ptr[detail::offset(r, c, ldm, layout == mem_row_major)] = f.x[e];
  }
}

// d = a b + c. Two warp barriers: after the first every lane reads the others' a and b
// fragments (through their addresses), after the second nobody does, so a lane may then
// overwrite its fragments (d may alias c).
template <int M, int N, int K, typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using FA = fragment<matrix_a, M, N, K, T, LA>;
  using FB = fragment<matrix_b, M, N, K, T, LB>;
  using FC = fragment<accumulator, M, N, K, float>;
  constexpr const char* what = "wmma::mma_sync";
  detail::Thread& t = detail::lane_thread(what);
  const void* mine[2] = {&a, &b};
  const std::uint64_t* all = detail::collective(t, reinterpret_cast<std::uintptr_t>(&mine[0]), what, file, line);
  const FA* as[32];
  const FB* bs[32];
  for (int l = 0; l < 32; ++l) {
    const void* const* p = reinterpret_cast<const void* const*>(static_cast<std::uintptr_t>(all[l]));
    as[l] = static_cast<const FA*>(p[0]);
    bs[l] = static_cast<const FB*>(p[1]);
  }
  float result[FC::num_elements];
  for (int e = 0; e < FC::num_elements; ++e) {
    int m, n;
    detail::position<FC>(t.lane, e, m, n);
    float acc = c.x[e];
    for (int k = 0; k < K; ++k) {
      int la, ea, lb, eb;
      detail::owner<FA>(m * FA::cols + k, la, ea);  // row-major positions in A and B
      detail::owner<FB>(k * FB::cols + n, lb, eb);
      const float x = detail::operand(as[la]->x[ea]);
      const float y = detail::operand(bs[lb]->x[eb]);
      acc = fmaf(x, y, acc);  // the product is exact: one rounding, that of the addition
    }
    result[e] = acc;
  }
  detail::collective(t, 0, "wmma::mma_sync (operands read)", file, line);
  for (int e = 0; e < FC::num_elements; ++e) d.x[e] = result[e];
}

}  // namespace nvcuda::wmma
