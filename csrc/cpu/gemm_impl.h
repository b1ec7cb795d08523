// Template definitions for gemm.h (included from there, not on its own).
//
// GotoBLAS/BLIS structure:
//
//   jc over column blocks of NC   all threads pack B[:, jc-block] for the whole K into NR-column
//                                 panels, then each computes its rectangle of the block:
//     ic over row blocks of MC    (the packed A block stays in L2)
//       pc over K blocks of KC    pack A[ic-block, pc-block] into MR-row panels
//         jr over NR panels       (the KC x NR panel of B stays in L1 across ir)
//           ir over MR panels     micro-kernel: one MR x NR tile
//
// K is innermost of the block loops (rather than outermost, as in BLIS) so that the epilogue can
// see each finished sum: the micro-kernel writes and accumulates the thread's current block of
// C (MC rows) in a per-thread buffer, and once the last K block is in, the epilogue gets each
// of its rows as one run of columns (long runs vectorise well in the caller's code). The buffer
// costs little: each element is read and written once per K block of some thousand
// multiply-adds. Packing absorbs the operands' strides and zero-pads the edges, so the
// micro-kernel always computes a full tile.
//
// The micro-kernel and packing routines are plain function pointers chosen once per process
// from the CPU's features (gemm_kernels.cpp); everything here, the epilogue included, is
// ordinary portable code.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#include "isa.h"
#include "parallel.h"

namespace pcmekit::cpu {
namespace detail {

template <typename T>
struct GemmKernel {
  int mr;       // micro-tile rows
  int nr;       // micro-tile columns
  int64_t mc;   // rows of A per packed block (multiple of mr; the block is meant to sit in L2)
  int64_t kc;   // depth of a K block (a kc x nr panel of B is meant to sit in L1)
  //   c_out[i * ldc + j] = (c_in ? c_in[i * ldc + j] : 0) + sum_p a[p * mr + i] * b[p * nr + j]
  // for i < mr, j < nr, p < kc; a and b are packed panels; c_in may equal c_out. a, b, c_in and
  // c_out are aligned to nr * sizeof(T) bytes or 64, whichever is less, and ldc * sizeof(T) is a
  // multiple of 64: the kernels use aligned vector loads and stores.
  void (*micro)(int64_t kc, const T* a, const T* b, const T* c_in, T* c_out, int64_t ldc);
  // Packs `lanes` lanes (rows of A for pack_a, columns of B for pack_b) of depth kc into
  // ceil(lanes / width) panels of kc * width elements (width = mr or nr), lane index fastest,
  // zero-padding the last panel. Lane l, depth p is src[l * lane_stride + p * depth_stride].
  void (*pack_a)(int64_t lanes, int64_t kc, const T* src, int64_t lane_stride,
                 int64_t depth_stride, T* dst);
  void (*pack_b)(int64_t lanes, int64_t kc, const T* src, int64_t lane_stride,
                 int64_t depth_stride, T* dst);
  // Optional (few-row kernels): micro over wide_panels consecutive panels of B, panel q at
  // b + q * panel_stride and C columns q * nr on; the same sums as micro, panel by panel.
  void (*wide)(int64_t kc, const T* a, const T* b, int64_t panel_stride, const T* c_in, T* c_out,
               int64_t ldc) = nullptr;
  int wide_panels = 1;
};

// The kernels for the running CPU, chosen on first use (gemm_kernels.cpp).
template <typename T>
const GemmKernel<T>& gemm_kernel();
template <>
const GemmKernel<float>& gemm_kernel<float>();
template <>
const GemmKernel<double>& gemm_kernel<double>();
// The kernel for a product of `rows` rows: a smaller tile where that saves padding rows, with the
// same results bit for bit (gemm_kernels.cpp).
template <typename T>
const GemmKernel<T>& gemm_kernel_for_rows(int64_t rows);
template <>
const GemmKernel<float>& gemm_kernel_for_rows<float>(int64_t rows);
template <>
const GemmKernel<double>& gemm_kernel_for_rows<double>(int64_t rows);

// Packed B for the whole K of a column block is shared by all threads, so the block width NC is
// bounded by bytes. It is re-read once per MC rows, at a few bytes per thousand multiply-adds, so
// it need not stay in any cache; wider blocks mean fewer re-packs of A. NC is also capped in
// columns, which bounds the per-thread buffer of sums (MC x NC) and the epilogue's runs: 2048
// measured a few percent faster than 4096 on 4096 x 4096 x 512.
inline constexpr int64_t kPackedBBytes = int64_t{8} << 20;
inline constexpr int64_t kMaxColumnBlock = 2048;

// Work (in multiply-adds) below which another thread costs more than it saves: handing a region
// to a sleeping worker (OpenMP's or the pool's, cpu/parallel.h) and waiting for it takes up to
// tens of microseconds, about a million multiply-adds of this kernel (an awake one, less).
inline constexpr double kThreadCostFma = double(1 << 20);

// Row blocks per thread when rows are handed out dynamically (gemm below): enough that the last
// block to finish is a small part of the whole, few enough that each keeps a packed A block's
// reuse of B.
inline constexpr int64_t kChunksPerThread = 6;

// Packing an element costs about as much as this many multiply-adds: ~0.25 ns (vectorised, from
// L2/L3) against ~16 multiply-adds per cycle of the AVX2 kernel, more for strided operands.
inline constexpr double kPackCostFma = 16.0;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

inline constexpr int64_t kCacheLine = 64;

// Releases a buffer from std::aligned_alloc.
struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

template <typename T>
std::unique_ptr<T[], FreeDeleter> aligned_buffer(int64_t elements) {
  constexpr size_t kAlign = kCacheLine;  // also the widest vector
  // aligned_alloc wants a non-zero multiple of the alignment.
  const size_t lines = (static_cast<size_t>(elements) * sizeof(T) + kAlign - 1) / kAlign;
  void* p = std::aligned_alloc(kAlign, std::max<size_t>(lines, 1) * kAlign);
  if (p == nullptr) throw std::bad_alloc();
  return std::unique_ptr<T[], FreeDeleter>(static_cast<T*>(p));
}

// Scratch memory (packed operands, sums) that one thread reuses from call to call: fresh pages
// cost a fault each (~200 per 1024 x 1024 x 512 product, a few percent of it). Buffers up to
// kMaxCachedBytes stay with the thread (two per element type); larger ones are allocated per call.
// Not re-entrant: an epilogue must not call gemm on the same thread.
inline constexpr size_t kMaxCachedBytes = size_t{64} << 20;

template <typename T>
class Workspace {
 public:
  Workspace(int slot, int64_t elements) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(elements, 1)) * sizeof(T);
    if (bytes > kMaxCachedBytes) {
      owned_ = aligned_buffer<T>(elements);
      data_ = owned_.get();
      return;
    }
    thread_local Cached cache[2];
    Cached& c = cache[slot];
    if (c.bytes < bytes) {
      c.buffer.reset();
      c.buffer = aligned_buffer<T>(elements);
      c.bytes = bytes;
    }
    data_ = c.buffer.get();
  }
  T* get() const { return data_; }

 private:
  struct Cached {
    std::unique_ptr<T[], FreeDeleter> buffer;
    size_t bytes = 0;
  };
  std::unique_ptr<T[], FreeDeleter> owned_;
  T* data_ = nullptr;
};

// How the work is cut: C in column blocks of nc columns, one after another; for each, B is
// packed once by all threads together, then a tm x tn grid of threads computes it, each
// rectangle a whole number of micro-tiles (counts differing by at most one).
struct GemmPlan {
  int64_t tm = 1, tn = 1;
  int64_t k_blocks = 1;  // K split into this many near-equal blocks of at most kc
  int64_t nc = 0;        // column-block width (multiple of nr)
};

inline GemmPlan plan_gemm(int64_t m, int64_t n, int64_t k, int64_t mr, int64_t nr, int64_t kc,
                          size_t elem_bytes, int num_threads) {
  GemmPlan plan;
  plan.k_blocks = ceil_div(k, kc);
  // As wide as the packed-B budget allows, then evened out so the last block is not a sliver.
  const int64_t cap = std::max<int64_t>(
      nr, std::min(kMaxColumnBlock, kPackedBBytes / (k * int64_t(elem_bytes))) / nr * nr);
  const int64_t tiles_n = ceil_div(n, nr);
  const int64_t col_blocks = ceil_div(tiles_n * nr, cap);
  plan.nc = ceil_div(tiles_n, col_blocks) * nr;

  // Estimated time of the slowest thread per column block, in multiply-adds: its tiles, the A
  // rows it packs, its share of B, and starting threads (twice per block).
  const int64_t tiles_m = ceil_div(m, mr), block_tiles = plan.nc / nr;
  auto cost = [&](int64_t tm, int64_t tn) {
    const double rows = double(ceil_div(tiles_m, tm) * mr);
    const double cols = double(ceil_div(block_tiles, tn) * nr);
    const double packed = double(k) * (rows + double(plan.nc) / double(tm * tn));
    return rows * cols * double(k) + kPackCostFma * packed +
           2 * kThreadCostFma * double(tm * tn - 1);
  };
  double best = cost(1, 1);
  const int64_t threads = resolve_threads(num_threads);
  for (int64_t t = 2; t <= threads; ++t) {
    for (int64_t tm = 1; tm <= t; ++tm) {
      if (t % tm != 0) continue;
      const int64_t tn = t / tm;
      if (tm > tiles_m || tn > block_tiles) continue;
      const double c = cost(tm, tn);
      if (c < best) {
        best = c;
        plan.tm = tm;
        plan.tn = tn;
      }
    }
  }
  return plan;
}

// Packs panels [first, last) of B[:, jc : jc + nb] for the whole K into `packed_b`: for each K
// block starting at depth p, nc / nr panels of its depth, at offset p * nc.
template <typename T>
void pack_b_panels(const GemmKernel<T>& kern, const GemmPlan& plan, int64_t k,
                   const GemmOperand<T>& b, int64_t jc, int64_t nb, int64_t first, int64_t last,
                   T* packed_b) {
  const int64_t nr = kern.nr, lanes = std::min(last * nr, nb) - first * nr;
  for (int64_t kb = 0; kb < plan.k_blocks; ++kb) {
    const int64_t p0 = k * kb / plan.k_blocks, p1 = k * (kb + 1) / plan.k_blocks;
    kern.pack_b(lanes, p1 - p0, b.data + (jc + first * nr) * b.col_stride + p0 * b.row_stride,
                b.col_stride, b.row_stride, packed_b + p0 * plan.nc + first * nr * (p1 - p0));
  }
}

// Per-thread scratch: a packed block of A and the sums of an mc x (nc / tn) block of C.
struct GemmScratch {
  int64_t mc = 0, ldc = 0, a_elems = 0, total = 0;
};

template <typename T>
GemmScratch scratch_layout(const GemmKernel<T>& kern, const GemmPlan& plan, int64_t m, int64_t k) {
  GemmScratch s;
  const int64_t line = kCacheLine / int64_t(sizeof(T));
  s.mc = std::min(kern.mc, ceil_div(ceil_div(m, kern.mr), plan.tm) * kern.mr);
  // Rows of the sums are padded by a cache line so that the rows of one tile do not all map to
  // the same L1 set when the block width is a multiple of 4 KiB.
  s.ldc = round_up(ceil_div(plan.nc / kern.nr, plan.tn) * kern.nr, line) + line;
  s.a_elems = round_up(s.mc * ceil_div(k, plan.k_blocks), line);
  s.total = s.a_elems + s.mc * s.ldc;
  return s;
}

// Computes rows [m0, m1) x columns [jc + n0, jc + n1) of C, B's column block at jc being packed,
// and hands each finished row of it to the epilogue.
// The packed B holds, for the K block at depth p0 (depth kcb), its panels at
// packed_b + p0 * b_cols + c * kcb for column c (a multiple of nr) counted from b_col0: b_cols is
// the width of the packed column block (plan.nc, or all columns for a B packed by pack_b).
template <typename T, typename Epilogue>
void gemm_rectangle(const GemmKernel<T>& kern, const GemmPlan& plan, const GemmScratch& layout,
                    int64_t m0, int64_t m1, int64_t jc, int64_t n0, int64_t n1, int64_t k,
                    const GemmOperand<T>& a, const T* packed_b, int64_t b_cols, int64_t b_col0,
                    T* scratch, const Epilogue& epilogue) {
  const int64_t mr = kern.mr, nr = kern.nr, ldc = layout.ldc;
  T* packed_a = scratch;
  T* sums = scratch + layout.a_elems;
  for (int64_t ic = m0; ic < m1; ic += layout.mc) {
    const int64_t mb = std::min(layout.mc, m1 - ic);
    for (int64_t kb = 0; kb < plan.k_blocks; ++kb) {
      const int64_t p0 = k * kb / plan.k_blocks, p1 = k * (kb + 1) / plan.k_blocks;
      const int64_t kcb = p1 - p0;
      kern.pack_a(mb, kcb, a.data + ic * a.row_stride + p0 * a.col_stride, a.row_stride,
                  a.col_stride, packed_a);
      const T* b_block = packed_b + p0 * b_cols + b_col0 * kcb;
      // The next panel of B is prefetched a slice per micro-kernel call: the hardware
      // prefetcher alone leaves the first calls on each panel waiting for it (~10% slower).
      // With a single micro-kernel call per panel (a few rows) the panels are one sequential
      // stream, which the hardware prefetcher follows; prefetching a whole panel at once there
      // stalls on the fill buffers (21% of a one-query search).
      const int64_t row_tiles = ceil_div(mb, mr);
      const int64_t b_panel_lines = row_tiles > 1 ? kcb * nr * int64_t(sizeof(T)) / kCacheLine : 0;
      const int64_t prefetch_lines = ceil_div(b_panel_lines, row_tiles);
      int64_t jr = n0;
      if (kern.wide && row_tiles == 1) {
        // One row tile: its panels go wide_panels at a time (the prefetch is off, see above).
        const int64_t step = kern.wide_panels * nr;
        for (; jr + step <= round_up(n1 - n0, nr) + n0; jr += step) {
          T* c = sums + (jr - n0);
          kern.wide(kcb, packed_a, b_block + jr * kcb, nr * kcb, kb == 0 ? nullptr : c, c, ldc);
        }
      }
      for (; jr < n1; jr += nr) {
        const T* b_panel = b_block + jr * kcb;
        const char* b_next = reinterpret_cast<const char*>(b_panel + nr * kcb);
        int64_t next_line = jr + nr < n1 ? 0 : b_panel_lines;  // none after the last panel
        for (int64_t ir = 0; ir < mb; ir += mr) {
          const int64_t end = std::min(b_panel_lines, next_line + prefetch_lines);
          for (; next_line < end; ++next_line)
            __builtin_prefetch(b_next + next_line * kCacheLine, 0, 2);
          T* c = sums + ir * ldc + (jr - n0);
          kern.micro(kcb, packed_a + ir * kcb, b_panel, kb == 0 ? nullptr : c, c, ldc);
        }
      }
    }
    for (int64_t i = 0; i < mb; ++i)
      epilogue(ic + i, jc + n0, n1 - n0, static_cast<const T*>(sums + i * ldc));
  }
}

// k == 0: every sum is empty, but the epilogue still sees every element.
template <typename T, typename Epilogue>
void gemm_empty_k(int64_t m, int64_t n, const Epilogue& epilogue) {
  const int64_t run = std::min<int64_t>(n, 4096);
  const std::vector<T> zeros(static_cast<size_t>(run), T(0));
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c0 = 0; c0 < n; c0 += run) epilogue(r, c0, std::min(run, n - c0), zeros.data());
}

}  // namespace detail

namespace detail {

// gemm and gemm_packed: B is packed here per column block (prepacked == nullptr) or read from a
// pack_b packing of prepacked_cols columns, from column c0 on.
template <typename T, typename Epilogue>
void gemm_driver(int64_t m, int64_t n, int64_t k, const GemmOperand<T>& a, const GemmOperand<T>* b,
                 const T* prepacked, int64_t prepacked_cols, int64_t c0, const Epilogue& epilogue,
                 int num_threads) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "gemm has micro-kernels for float and double only");
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    gemm_empty_k<T>(m, n, epilogue);
    return;
  }
  const GemmKernel<T>& kern = gemm_kernel_for_rows<T>(m);
  const GemmPlan plan = plan_gemm(m, n, k, kern.mr, kern.nr, kern.kc, sizeof(T), num_threads);
  const int threads = static_cast<int>(plan.tm * plan.tn);
  const GemmScratch layout = scratch_layout(kern, plan, m, k);
  const Workspace<T> packed_b(0, prepacked ? 0 : k * plan.nc);
  const Workspace<T> scratch(1, threads * layout.total);
  const int64_t tiles_m = ceil_div(m, kern.mr);
  // Row blocks handed out one at a time when the threads split rows only: the cores of a shared
  // machine run at different speeds from one millisecond to the next (72-97 GFLOP/s measured on
  // one vCPU), and with fixed halves the slower one sets the time (busy times 6.3-7.0 against
  // 7.4-7.7 ms, 1024 x 1024 x 512). Each block is a whole number of packed A blocks' worth of
  // rows, so nothing is packed twice; the sums are the same whichever thread computes them.
  const int64_t chunk_tiles = std::max<int64_t>(
      1, std::min(layout.mc / kern.mr, ceil_div(tiles_m, threads * kChunksPerThread)));
  const bool dynamic = threads > 1 && plan.tn == 1 && tiles_m >= 2 * threads * chunk_tiles;
  for (int64_t jc = 0; jc < n; jc += plan.nc) {
    const int64_t nb = std::min(plan.nc, n - jc), panels = ceil_div(nb, kern.nr);
    const T* bp = prepacked;
    int64_t b_cols = prepacked_cols, b_col0 = c0 + jc;
    if (!prepacked) {
      parallel_for(0, panels, 1, threads, [&](int64_t first, int64_t last, int) {
        pack_b_panels(kern, plan, k, *b, jc, nb, first, last, packed_b.get());
      });
      bp = packed_b.get();
      b_cols = plan.nc;
      b_col0 = 0;
    }
    if (dynamic) {
      const int64_t chunks = ceil_div(tiles_m, chunk_tiles);
      std::atomic<int64_t> next{0};
      parallel_for(0, threads, 1, threads, [&](int64_t worker, int64_t, int) {
        T* own = scratch.get() + worker * layout.total;
        for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks;
             c = next.fetch_add(1, std::memory_order_relaxed)) {
          const int64_t m0 = c * chunk_tiles * kern.mr;
          const int64_t m1 = std::min(m, m0 + chunk_tiles * kern.mr);
          gemm_rectangle(kern, plan, layout, m0, m1, jc, 0, nb, k, a, bp, b_cols, b_col0, own,
                         epilogue);
        }
      });
      continue;
    }
    parallel_for(0, threads, 1, threads, [&](int64_t lo, int64_t hi, int) {
      for (int64_t block = lo; block < hi; ++block) {
        const int64_t bi = block / plan.tn, bj = block % plan.tn;
        const int64_t m0 = std::min(m, tiles_m * bi / plan.tm * kern.mr);
        const int64_t m1 = std::min(m, tiles_m * (bi + 1) / plan.tm * kern.mr);
        const int64_t n0 = std::min(nb, panels * bj / plan.tn * kern.nr);
        const int64_t n1 = std::min(nb, panels * (bj + 1) / plan.tn * kern.nr);
        if (m0 < m1 && n0 < n1)
          gemm_rectangle(kern, plan, layout, m0, m1, jc, n0, n1, k, a, bp, b_cols, b_col0,
                         scratch.get() + block * layout.total, epilogue);
      }
    });
  }
}

}  // namespace detail

template <typename T, typename Epilogue>
void gemm(int64_t m, int64_t n, int64_t k, GemmOperand<T> a, GemmOperand<T> b,
          const Epilogue& epilogue, int num_threads) {
  detail::gemm_driver<T>(m, n, k, a, &b, nullptr, 0, 0, epilogue, num_threads);
}

template <typename T>
PackedBLayout packed_b_layout(int64_t n, int64_t k) {
  const detail::GemmKernel<T>& kern = detail::gemm_kernel<T>();
  PackedBLayout l;
  l.nr = kern.nr;
  l.kc = kern.kc;
  l.cols = detail::round_up(std::max<int64_t>(n, 0), kern.nr);
  l.elements = l.cols * std::max<int64_t>(k, 0);
  // Distinct for every (instruction set, element size, nr, kc) the kernels have.
  l.tag = ((static_cast<int64_t>(cpu_isa()) * 16 + int64_t(sizeof(T))) * 1024 + kern.nr) * 65536 +
          kern.kc;
  return l;
}

template <typename T>
void pack_b(int64_t n, int64_t k, GemmOperand<T> b, T* dst, int num_threads) {
  if (n <= 0 || k <= 0) return;
  const detail::GemmKernel<T>& kern = detail::gemm_kernel<T>();
  detail::GemmPlan whole;  // one column block of every column: the layout gemm_packed reads
  whole.k_blocks = detail::ceil_div(k, kern.kc);
  whole.nc = packed_b_layout<T>(n, k).cols;
  const int64_t panels = whole.nc / kern.nr;
  // Packing streams memory; a few hundred panels per thread keep the hand-out cost small.
  parallel_for(0, panels, 64, num_threads, [&](int64_t first, int64_t last, int) {
    detail::pack_b_panels(kern, whole, k, b, 0, n, first, last, dst);
  });
}

template <typename T, typename Epilogue>
void gemm_packed(int64_t m, int64_t n, int64_t k, GemmOperand<T> a, const T* packed_b,
                 int64_t packed_cols, int64_t c0, const Epilogue& epilogue, int num_threads) {
  detail::gemm_driver<T>(m, n, k, a, nullptr, packed_b, packed_cols, c0, epilogue, num_threads);
}

}  // namespace pcmekit::cpu
