// CPU kernels of the top-k op (pcmekit/topk.h).
//
// Ranking happens on a key per (query, gallery item), smaller first: the distance, or -log p for
// the match probability. Every query row keeps its best k (key, index) pairs in a bounded
// max-heap whose top is the worst survivor; a candidate enters only if it beats the top, which
// after the first few thousand gallery items is rare, so the selection costs a load, a compare
// and a predicted branch per pair. Ties are broken by the lower gallery index: within one stream
// the gallery arrives in increasing order, so a candidate equal to the top never enters, and
// streams are merged on (key, index).
//
// Two producers of keys, both streaming the gallery and never holding more than a tile:
//  * inner-product metrics (csd, w2, l2, kl): the GEMM engine (cpu/gemm.h) with the selection in
//    its epilogue, on each run of finished dot products while it is in L1. The per-query scalar
//    of the inner-product form cannot change a row's ranking, so the key leaves it out,
//      key = max(col[j] + alpha * <f_q, f_g>, -row[q])       (the max is the clamp at zero)
//    and it is added to the k survivors only: value = key + row[q].
//  * bhattacharyya, elk and match_prob: the pairwise / match-probability CPU kernels fill a tile
//    of kTileRows x kTileCols scores (single-threaded), and the selection reads it.
//
// Threads: a grid of row blocks x gallery shards, one cell per thread, each with its own heaps.
// The gallery is split into shards, every cell taking all rows, and each row's shard lists are
// merged at the end: each cell then packs only its shard. Only a gallery too small to shard
// (under kTileCols items a thread) with many queries splits the rows instead.
// Extra memory: threads x Q x k heap entries plus per-thread GEMM scratch or tiles; none of it
// grows with N.
//
// NaN inputs are an error here (docs/design.md, "Validation"): a NaN score has no rank. The
// kernel looks where it reads the data anyway: the row and column terms of csd and l2 (sums of
// squares and variances) are NaN exactly when an input of their row is, so for them the check is
// a scan of Q + N scalars; the other metrics scan their inputs once. Only a NaN found that way
// leads to a search of the tensors for the first NaN row, which the message names.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/inner_product.h"
#include "cpu/parallel.h"
#include "cpu/select.h"
#include "cpu/strided.h"
#include "pcmekit/match_prob.h"
#include "pcmekit/pairwise.h"
#include "pcmekit/topk.h"

namespace pcmekit::cpu {
namespace {

// Rows per cell below which splitting the queries between threads stops paying (each cell packs
// the whole gallery once).
constexpr int64_t kMinRowsPerCell = 48;
// Tile of the tiled producer: small enough to stay in L2, wide enough that per-call set-up (the
// kernels copy both sides' rows and take exp of the log-variances) is a few percent.
constexpr int64_t kTileRows = 32;
constexpr int64_t kTileCols = 512;
// Keys per step of a row whose distances are all infinite (a stack buffer).
constexpr int64_t kKeyRun = 256;

// A NaN key ranks after every number (it is canonicalised to +inf, then the index decides), so
// the orderings below are total and the heaps stay valid whatever the inputs hold.
template <typename T>
T canonical(T key) {
  return std::isnan(key) ? std::numeric_limits<T>::infinity() : key;
}

// (key, index) pairs, best first: smaller key, then smaller index.
template <typename T>
struct Entry {
  T key;
  int64_t index;
};
template <typename T>
bool ranks_before(const Entry<T>& a, const Entry<T>& b) {
  return a.key < b.key || (a.key == b.key && a.index < b.index);
}

// The running best k of a block of rows: per row a max-heap (worst on top) in a flat array.
template <typename T>
class RowHeaps {
 public:
  RowHeaps(int64_t rows, int64_t k)
      : k_(k), size_(static_cast<size_t>(rows), 0),
        entries_(static_cast<size_t>(rows * k)) {}

  // The key a candidate must beat to enter row r (+inf while the row is not full).
  bool full(int64_t r) const { return size_[static_cast<size_t>(r)] == k_; }
  T worst_key(int64_t r) const { return entries_[static_cast<size_t>(r * k_)].key; }

  // Candidates of row r with increasing indices in this stream, keys already canonical.
  void offer(int64_t r, T key, int64_t index) {
    Entry<T>* heap = entries_.data() + r * k_;
    int64_t& size = size_[static_cast<size_t>(r)];
    if (size < k_) {
      sift_up(heap, size, Entry<T>{key, index});
      ++size;
    } else if (ranks_before(Entry<T>{key, index}, heap[0])) {
      sift_down(heap, k_, Entry<T>{key, index});
    }
  }

  // Row r's survivors, best first (the heap is consumed).
  const Entry<T>* sorted(int64_t r) {
    Entry<T>* heap = entries_.data() + r * k_;
    std::sort(heap, heap + size_[static_cast<size_t>(r)], ranks_before<T>);
    return heap;
  }
  int64_t size(int64_t r) const { return size_[static_cast<size_t>(r)]; }

 private:
  // Worst on top: parent ranks after (or equals) its children.
  static void sift_up(Entry<T>* heap, int64_t hole, Entry<T> e) {
    while (hole > 0) {
      const int64_t parent = (hole - 1) / 2;
      if (!ranks_before(heap[parent], e)) break;
      heap[hole] = heap[parent];
      hole = parent;
    }
    heap[hole] = e;
  }
  static void sift_down(Entry<T>* heap, int64_t size, Entry<T> e) {
    int64_t hole = 0;
    for (;;) {
      int64_t child = 2 * hole + 1;
      if (child >= size) break;
      if (child + 1 < size && ranks_before(heap[child], heap[child + 1])) ++child;
      if (!ranks_before(e, heap[child])) break;
      heap[hole] = heap[child];
      hole = child;
    }
    heap[hole] = e;
  }

  int64_t k_;
  std::vector<int64_t> size_;
  std::vector<Entry<T>> entries_;
};

// Offers a run of keys of one row (gallery indices first, first + 1, ...). While the row is full
// (nearly always) a candidate must beat the worst survivor's key; equal keys lose, their index
// being larger than every survivor's of this stream.
template <typename T>
inline void offer_run(RowHeaps<T>& heaps, int64_t r, int64_t first, int64_t count, const T* keys) {
  int64_t t = 0;
  for (; t < count && !heaps.full(r); ++t) heaps.offer(r, canonical(keys[t]), first + t);
  if (t == count) return;
  T worst = heaps.worst_key(r);
  // Usually nothing in the run beats the worst survivor: a branch-free (vectorised) count says
  // so at a fraction of a cycle per key, and the scalar loop below runs only when it does not.
  int64_t hits = 0;
  for (int64_t u = t; u < count; ++u) hits += keys[u] < worst;
  if (hits == 0) return;
  for (; t < count; ++t) {
    if (keys[t] < worst) {  // false for NaN
      heaps.offer(r, keys[t], first + t);
      worst = heaps.worst_key(r);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// NaN checks.

// The first row of `v` (counted in items of `rows_per_item` rows: the noise holds J rows per
// embedding) holding a NaN, or -1. Rows are scanned in parallel blocks; the lowest hit wins.
template <typename T>
int64_t first_nan_row(const MatrixView& v, int64_t rows_per_item, int num_threads) {
  if (!v.present() || v.empty()) return -1;
  std::atomic<int64_t> first{std::numeric_limits<int64_t>::max()};
  parallel_for(0, v.rows, 1024, num_threads, [&](int64_t lo, int64_t hi, int) {
    for (int64_t r = lo; r < hi && r < first.load(std::memory_order_relaxed); ++r) {
      const T* x = static_cast<const T*>(v.data) + r * v.row_stride;
      bool nan = false;
      if (v.col_stride == 1) {
        for (int64_t c = 0; c < v.cols; ++c) nan |= x[c] != x[c];  // vectorises, unlike isnan
      } else {
        for (int64_t c = 0; c < v.cols; ++c) nan |= x[c * v.col_stride] != x[c * v.col_stride];
      }
      if (nan) {
        int64_t seen = first.load();
        while (r < seen && !first.compare_exchange_weak(seen, r)) {
        }
        return;
      }
    }
  });
  const int64_t r = first.load();
  return r == std::numeric_limits<int64_t>::max() ? -1 : r / rows_per_item;
}

// Throws for the first of `inputs` (in order) that holds a NaN.
struct NamedInput {
  const char* name;
  const MatrixView* view;
  int64_t rows_per_item;
};

template <typename T>
void reject_nan(std::initializer_list<NamedInput> inputs, int num_threads) {
  for (const NamedInput& in : inputs) {
    const int64_t row = first_nan_row<T>(*in.view, in.rows_per_item, num_threads);
    if (row >= 0)
      throw std::invalid_argument(std::string(in.name) + " contains NaN (first in row " +
                                  std::to_string(row) +
                                  "); top-k needs comparable scores (drop or fix those rows)");
  }
}

template <typename T>
bool any_nan(const T* terms, int64_t count) {
  bool nan = false;
  for (int64_t i = 0; i < count; ++i) nan |= terms[i] != terms[i];  // vectorises, unlike isnan
  return nan;
}
template <typename T>
bool any_nan(const std::vector<T>& terms) {
  return any_nan(terms.data(), static_cast<int64_t>(terms.size()));
}

// How the (rows x gallery) work is cut into cells, one per thread.
struct Grid {
  int64_t row_blocks = 1, shards = 1;
};

// `work`: the search's cost in multiply-adds; threads are added only while each gets at least
// what starting it costs (detail::kThreadCostFma, tens of microseconds).
Grid plan_grid(int64_t q, int64_t n, int num_threads, double work) {
  const double useful = std::min(work / detail::kThreadCostFma, 1e9);  // work may be infinite
  const int64_t threads =
      std::min<int64_t>(resolve_threads(num_threads), std::max<int64_t>(1, static_cast<int64_t>(useful)));
  Grid g;
  if (threads <= 1) return g;
  // Shards first: a cell packs only its shard of the gallery, where a row block packs all of it
  // (packing costs ~16 multiply-adds an element, 16 / Q of the work against 16 threads / Q).
  const int64_t shards = std::min<int64_t>(threads, n / kTileCols);
  if (shards < threads && q >= kMinRowsPerCell * threads) {
    g.row_blocks = threads;  // a small gallery: the queries are split instead
  } else {
    g.shards = std::max<int64_t>(1, shards);
  }
  return g;
}

// A view of rows [r0, r1) of v (absent stays absent).
MatrixView row_slice(const MatrixView& v, int64_t r0, int64_t r1, int64_t elem_size) {
  MatrixView s = v;
  if (!v.present()) return s;
  s.data = static_cast<char*>(v.data) + r0 * v.row_stride * elem_size;
  s.rows = r1 - r0;
  return s;
}

// Writes the k survivors of every row of every shard, merged, to values / indices. `finish`
// turns a key into the value reported for row r.
template <typename T, typename Finish>
void write_results(const TopkParams& p, std::vector<RowHeaps<T>>& cells, const Grid& grid,
                   const std::vector<int64_t>& row_start, const Finish& finish) {
  const int64_t q = p.q_mean.rows, k = p.k;
  parallel_for(0, q, 64, p.num_threads, [&](int64_t lo, int64_t hi, int) {
    std::vector<Entry<T>> merged;
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t block = std::upper_bound(row_start.begin(), row_start.end(), r) - row_start.begin() - 1;
      const int64_t local = r - row_start[static_cast<size_t>(block)];
      merged.clear();
      for (int64_t s = 0; s < grid.shards; ++s) {
        RowHeaps<T>& h = cells[static_cast<size_t>(block * grid.shards + s)];
        const Entry<T>* e = h.sorted(local);
        merged.insert(merged.end(), e, e + h.size(local));
      }
      if (grid.shards > 1) std::sort(merged.begin(), merged.end(), ranks_before<T>);
      for (int64_t i = 0; i < k; ++i) {
        const Entry<T>& e = merged[static_cast<size_t>(i)];
        at<T>(p.values, r, i) = finish(r, e.key);
        at<int64_t>(p.indices, r, i) = e.index;
      }
    }
  });
}

// Runs body(cell, row0, row1, gal0, gal1, heaps) for every cell of the grid, one thread each.
// Shard bounds are multiples of `align` (a prepared gallery is read in whole panels), the last
// shard ending at N.
template <typename T, typename Body>
void for_each_cell(const TopkParams& p, const Grid& grid, std::vector<RowHeaps<T>>& cells,
                   std::vector<int64_t>& row_start, const Body& body, int64_t align = 1) {
  const int64_t q = p.q_mean.rows, n = p.g_mean.rows;
  row_start.clear();
  for (int64_t b = 0; b < grid.row_blocks; ++b) row_start.push_back(q * b / grid.row_blocks);
  cells.clear();
  for (int64_t b = 0; b < grid.row_blocks; ++b) {
    const int64_t rows = q * (b + 1) / grid.row_blocks - q * b / grid.row_blocks;
    for (int64_t s = 0; s < grid.shards; ++s) cells.emplace_back(rows, p.k);
  }
  const int64_t count = grid.row_blocks * grid.shards;
  parallel_for(0, count, 1, static_cast<int>(count), [&](int64_t lo, int64_t hi, int) {
    for (int64_t c = lo; c < hi; ++c) {
      const int64_t b = c / grid.shards, s = c % grid.shards;
      const int64_t r0 = q * b / grid.row_blocks, r1 = q * (b + 1) / grid.row_blocks;
      const int64_t g0 = n * s / grid.shards / align * align;
      const int64_t g1 = s + 1 == grid.shards ? n : n * (s + 1) / grid.shards / align * align;
      if (r0 < r1 && g0 < g1) body(r0, r1, g0, g1, cells[static_cast<size_t>(c)]);
    }
  });
}

// Depth of the GEMM operand of the inner-product form: the means (csd, l2) or [mu, sigma]-like
// feature pairs (w2, kl), as inner::side_form builds them.
int64_t inner_product_depth(Metric metric, int64_t d) {
  return metric == Metric::CSD || metric == Metric::L2 ? d : 2 * d;
}

template <typename T>
TopkPreparedLayout prepared_layout(Metric metric, int64_t n, int64_t d) {
  const PackedBLayout packing = packed_b_layout<T>(n, inner_product_depth(metric, d));
  TopkPreparedLayout out;
  out.packed_elements = packing.elements;
  out.tag = packing.tag * 8 + static_cast<int64_t>(metric);  // the packed features and terms are the metric's
  return out;
}

template <typename T>
void topk_inner_product(const TopkParams& p) {
  const int nt = p.num_threads;
  const bool prepared = p.g_packed.present();
  const MatrixView none;  // l2 ignores the log-variances, NaN or not
  const MatrixView& ql = p.metric == Metric::L2 ? none : p.q_logvar;
  const MatrixView& gl = p.metric == Metric::L2 ? none : p.g_logvar;
  // csd's and l2's terms read every input element (l2 has no log-variances); w2's and kl's do not
  // all propagate a NaN (kl's query term ignores the means), so those are scanned. A prepared
  // gallery was checked when it was prepared.
  const bool terms_see_nan = p.metric == Metric::CSD || p.metric == Metric::L2;
  if (!terms_see_nan) {
    reject_nan<T>({{"q_mean", &p.q_mean, 1}, {"q_logvar", &p.q_logvar, 1}}, nt);
    if (!prepared) reject_nan<T>({{"g_mean", &p.g_mean, 1}, {"g_logvar", &p.g_logvar, 1}}, nt);
  }
  const inner::SideForm<T> query = inner::side_form<T>(p.q_mean, p.q_logvar, p.metric, true, nt);
  inner::SideForm<T> gallery;  // unprepared: the gallery's terms and operand, computed here
  const T* col_terms = nullptr;  // prepared: contiguous (the core checks)
  const int64_t n = p.g_mean.rows;
  if (!prepared) {
    gallery = inner::side_form<T>(p.g_mean, p.g_logvar, p.metric, false, nt);
    col_terms = gallery.scalar.data();
  } else {
    col_terms = static_cast<const T*>(p.g_terms.data);
  }
  const std::vector<T>& row_terms = query.scalar;
  if (terms_see_nan && any_nan(row_terms)) reject_nan<T>({{"q_mean", &p.q_mean, 1}, {"q_logvar", &ql, 1}}, nt);
  if (any_nan(col_terms, n)) {
    if (prepared)
      throw std::invalid_argument("g_terms contains NaN: the prepared gallery is not one topk_prepare_gallery made");
    if (terms_see_nan) reject_nan<T>({{"g_mean", &p.g_mean, 1}, {"g_logvar", &gl, 1}}, nt);
  }
  const PackedBLayout packing = packed_b_layout<T>(p.g_mean.rows, query.depth);
  const T* packed = prepared ? static_cast<const T*>(p.g_packed.data) : nullptr;
  // The GEMM, plus packing the gallery (detail::kPackCostFma an element) unless it is prepared.
  const double gallery_elems = double(p.g_mean.rows) * double(query.depth);
  const double work = gallery_elems * (double(p.q_mean.rows) + (prepared ? 0.0 : detail::kPackCostFma));
  const Grid grid = plan_grid(p.q_mean.rows, p.g_mean.rows, nt, work);
  std::vector<RowHeaps<T>> cells;
  std::vector<int64_t> row_start;
  const T alpha = inner::gemm_alpha<T>(p.metric);
  for_each_cell<T>(p, grid, cells, row_start,
                   [&](int64_t r0, int64_t r1, int64_t g0, int64_t g1, RowHeaps<T>& heaps) {
    const T* row = row_terms.data() + r0;
    const T* col = col_terms + g0;
    auto epilogue = [&](int64_t r, int64_t c0, int64_t count, const T* acc) {
      const T floor = -row[r];  // key of a distance clamped at zero
      const int64_t first = g0 + c0;
      if (!std::isfinite(floor)) {
        // An infinite query constant makes every distance of the row infinite: all tie, and
        // the keys must say so (the index then decides), whatever the finite remainder is.
        T key[kKeyRun];
        std::fill(key, key + kKeyRun, std::numeric_limits<T>::infinity());
        for (int64_t s = 0; s < count; s += kKeyRun)
          offer_run(heaps, r, first + s, std::min(kKeyRun, count - s), key);
        return;
      }
      const T* c = col + c0;
      int64_t t = 0;
      for (; t < count && !heaps.full(r); ++t)
        heaps.offer(r, canonical(topk_key(c[t], acc[t], alpha, floor)), first + t);
      // Then the vectorised scan (cpu/select.h) stops only at keys that beat the k-th best.
      while (t < count) {
        T key;
        t += first_key_below(c + t, acc + t, alpha, floor, heaps.worst_key(r), count - t, &key);
        if (t == count) break;
        heaps.offer(r, key, first + t);
        ++t;
      }
    };
    GemmOperand<T> lhs = query.op;
    lhs.data += r0 * lhs.row_stride;
    if (prepared) {
      gemm_packed<T>(r1 - r0, g1 - g0, query.depth, lhs, packed, packing.cols, g0, epilogue, 1);
    } else {
      GemmOperand<T> rhs = gallery.op;
      rhs.data += g0 * rhs.col_stride;
      gemm<T>(r1 - r0, g1 - g0, query.depth, lhs, rhs, epilogue, 1);
    }
  }, prepared ? packing.nr : 1);
  write_results<T>(p, cells, grid, row_start, [&](int64_t r, T key) { return key + row_terms[static_cast<size_t>(r)]; });
}

template <typename T>
void prepare_gallery(const TopkPrepareParams& p) {
  const int nt = p.num_threads;
  const MatrixView none;
  const MatrixView& gl = p.metric == Metric::L2 ? none : p.g_logvar;
  reject_nan<T>({{"g_mean", &p.g_mean, 1}, {"g_logvar", &gl, 1}}, nt);
  const inner::SideForm<T> side = inner::side_form<T>(p.g_mean, p.g_logvar, p.metric, false, nt);
  for (int64_t r = 0; r < p.g_mean.rows; ++r) at<T>(p.terms, r, 0) = side.scalar[static_cast<size_t>(r)];
  pack_b<T>(p.g_mean.rows, side.depth, side.op, static_cast<T*>(p.packed.data), nt);
}

// Scores a tile of rows [r0, r1) x gallery [g0, g1) into `tile` (row-major, ld = kTileCols) and
// `aux` (match_prob's log q, unused), single-threaded. Keys: distance, or -log p.
template <typename T>
void score_tile(const TopkParams& p, int64_t r0, int64_t r1, int64_t g0, int64_t g1, T* tile,
                T* aux) {
  const int64_t es = static_cast<int64_t>(sizeof(T));
  MatrixView out;
  out.data = tile;
  out.rows = r1 - r0;
  out.cols = g1 - g0;
  out.row_stride = kTileCols;
  out.col_stride = 1;
  out.dtype = p.q_mean.dtype;
  if (p.score == TopkScore::Distance) {
    PairwiseForwardParams f;
    f.a_mean = row_slice(p.q_mean, r0, r1, es);
    f.a_logvar = row_slice(p.q_logvar, r0, r1, es);
    f.b_mean = row_slice(p.g_mean, g0, g1, es);
    f.b_logvar = row_slice(p.g_logvar, g0, g1, es);
    f.out = out;
    f.metric = p.metric;
    f.num_threads = 1;
    cpu::pairwise_forward(f);
    return;
  }
  const int64_t j = p.num_samples;
  MatchProbForwardParams f;
  f.a_mean = row_slice(p.q_mean, r0, r1, es);
  f.a_logvar = row_slice(p.q_logvar, r0, r1, es);
  f.b_mean = row_slice(p.g_mean, g0, g1, es);
  f.b_logvar = row_slice(p.g_logvar, g0, g1, es);
  f.eps_a = row_slice(p.eps_q, r0 * j, r1 * j, es);
  f.eps_b = row_slice(p.eps_g, g0 * j, g1 * j, es);
  f.num_samples = j;
  f.scale = p.scale;
  f.shift = p.shift;
  f.squared = p.squared;
  f.log_p = out;
  f.log_q = out;
  f.log_q.data = aux;
  f.num_threads = 1;
  cpu::match_prob_forward(f);
  for (int64_t i = 0; i < out.rows; ++i)
    for (int64_t t = 0; t < out.cols; ++t) tile[i * kTileCols + t] = -tile[i * kTileCols + t];
}

template <typename T>
void topk_tiled(const TopkParams& p) {
  const int64_t j = p.score == TopkScore::MatchProb ? p.num_samples : 1;
  reject_nan<T>({{"q_mean", &p.q_mean, 1}, {"q_logvar", &p.q_logvar, 1}, {"g_mean", &p.g_mean, 1},
                 {"g_logvar", &p.g_logvar, 1}, {"eps_q", &p.eps_q, j}, {"eps_g", &p.eps_g, j}},
                p.num_threads);
  // Tiles cost far more than their multiply-adds (copies, exps, J x J samples): never too little.
  const Grid grid = plan_grid(p.q_mean.rows, p.g_mean.rows, p.num_threads,
                              std::numeric_limits<double>::infinity());
  std::vector<RowHeaps<T>> cells;
  std::vector<int64_t> row_start;
  const bool match = p.score == TopkScore::MatchProb;
  for_each_cell<T>(p, grid, cells, row_start,
                   [&](int64_t r0, int64_t r1, int64_t g0, int64_t g1, RowHeaps<T>& heaps) {
    std::vector<T> tile(static_cast<size_t>(kTileRows * kTileCols));
    std::vector<T> aux(match ? tile.size() : 0);
    for (int64_t rb = r0; rb < r1; rb += kTileRows) {
      const int64_t re = std::min(r1, rb + kTileRows);
      for (int64_t gb = g0; gb < g1; gb += kTileCols) {
        const int64_t ge = std::min(g1, gb + kTileCols);
        score_tile<T>(p, rb, re, gb, ge, tile.data(), aux.data());
        for (int64_t r = rb; r < re; ++r)
          offer_run(heaps, r - r0, gb, ge - gb, tile.data() + (r - rb) * kTileCols);
      }
    }
  });
  if (match) {
    write_results<T>(p, cells, grid, row_start, [](int64_t, T key) { return std::exp(-key); });
  } else {
    write_results<T>(p, cells, grid, row_start, [](int64_t, T key) { return key; });
  }
}

template <typename T>
void topk_typed(const TopkParams& p) {
  if (p.score == TopkScore::Distance && inner::has_inner_product_form(p.metric))
    return topk_inner_product<T>(p);
  topk_tiled<T>(p);
}

}  // namespace

TopkPreparedLayout topk_prepared_layout(Metric metric, DType dtype, int64_t n, int64_t d) {
  return dtype == DType::Float64 ? prepared_layout<double>(metric, n, d)
                                 : prepared_layout<float>(metric, n, d);
}

void topk_prepare_gallery(const TopkPrepareParams& p) {
  if (p.g_mean.dtype == DType::Float64) return prepare_gallery<double>(p);
  prepare_gallery<float>(p);
}

void topk(const TopkParams& p) {
  if (p.q_mean.rows == 0) return;
  if (p.q_mean.dtype == DType::Float64) return topk_typed<double>(p);
  topk_typed<float>(p);
}

}  // namespace pcmekit::cpu
