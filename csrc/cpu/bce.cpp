// CPU kernel of the distance BCE (pcmekit/bce.h): one pass over the rows, each row through
// cpu/vec_math's bce_row; per-row sums added in row order afterwards.
#include "pcmekit/bce.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/strided.h"
#include "cpu/vec_math.h"

namespace pcmekit::cpu {
namespace {

// Row r of v as a contiguous pointer: in place when its columns are, else copied into `buffer`.
template <typename T>
const T* row_of(const MatrixView& v, int64_t r, std::vector<T>& buffer) {
  if (v.col_stride == 1) return static_cast<const T*>(v.data) + r * v.row_stride;
  buffer.resize(static_cast<size_t>(v.cols));
  for (int64_t c = 0; c < v.cols; ++c) buffer[static_cast<size_t>(c)] = load<T>(v, r, c);
  return buffer.data();
}

template <typename T>
DistanceBceResult distance_bce_typed(const DistanceBceParams& p) {
  const int64_t n = p.distance.rows, m = p.distance.cols;
  const double weight = p.mean ? 1.0 / (double(n) * double(m)) : 1.0;
  const T scale = static_cast<T>(p.scale), shift = static_cast<T>(p.shift);
  const T grad_scale = static_cast<T>(-double(scale) * weight);
  std::vector<BceRowSums> rows(static_cast<size_t>(n));
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(m, 1));
  parallel_for(0, n, grain, p.num_threads, [&](int64_t lo, int64_t hi, int) {
    std::vector<T> d_row, y_row;
    for (int64_t r = lo; r < hi; ++r) {
      const T* d = row_of<T>(p.distance, r, d_row);
      const T* y = p.target.present() ? row_of<T>(p.target, r, y_row) : nullptr;
      T* g = static_cast<T*>(p.grad.data) + r * p.grad.row_stride;
      rows[static_cast<size_t>(r)] = bce_row(d, y, r, -scale, shift, grad_scale, g, m);
    }
  });
  DistanceBceResult out;
  double loss = 0, q = 0, qd = 0;
  for (const BceRowSums& s : rows) {
    loss += s.loss;
    q += s.q;
    qd += s.qd;
  }
  out.loss = weight * loss;
  out.grad_shift = weight * q;
  out.grad_scale = -weight * qd;
  return out;
}

}  // namespace

DistanceBceResult distance_bce(const DistanceBceParams& p) {
  if (p.distance.rows == 0 || p.distance.cols == 0) {
    DistanceBceResult empty;  // a mean over no pairs is NaN (as torch's), its gradients zero
    if (p.mean) empty.loss = std::numeric_limits<double>::quiet_NaN();
    return empty;
  }
  if (p.distance.dtype == DType::Float64) return distance_bce_typed<double>(p);
  return distance_bce_typed<float>(p);
}

}  // namespace pcmekit::cpu
