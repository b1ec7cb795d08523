// Front end of the distance BCE ops: validate the views and scalars, then run on the distance's
// device (cpu/bce.cpp, cuda/bce.cu; the fused pairwise form also cuda/pairwise_tc.cu).
#include "pcmekit/bce.h"

#include <cmath>

#include "core/checks.h"

namespace pcmekit {
namespace {

void check_bce(const DistanceBceParams& p) {
  using detail::check_matrix;
  const MatrixView& d = p.distance;
  const DType dt = d.dtype;
  const Device dev = d.device;
  const bool cuda = dev == Device::CUDA;
  PCMEKIT_CHECK_TYPE(dt == DType::Float32 || dt == DType::Float64 || (cuda && detail::is_half(dt)),
                     "distance must have dtype float32 or float64",
                     cuda ? " (or float16 / bfloat16 on CUDA)" : "", ", got ", dtype_name(dt),
                     detail::is_half(dt) ? " (16-bit distances are supported on CUDA only)" : "");
  check_matrix(d, "distance", d.rows, d.cols, "[N, M]", dt, dev, d.device_index);
  check_matrix(p.grad, "grad", d.rows, d.cols, "[N, M]", dt, dev, d.device_index);
  PCMEKIT_CHECK(p.grad.col_stride == 1 || p.grad.empty(),
                "grad must have contiguous columns (col_stride 1), got col_stride ", p.grad.col_stride);
  if (p.target.present())
    check_matrix(p.target, "target", d.rows, d.cols, "[N, M]", dt, dev, d.device_index);
  PCMEKIT_CHECK(std::isfinite(p.scale), "scale must be finite, got ", p.scale);
  PCMEKIT_CHECK(std::isfinite(p.shift), "shift must be finite, got ", p.shift);
  if (cuda) {
    PCMEKIT_CHECK(p.sums.present(), "sums is missing: CUDA distances need the [", kBceSumsRows,
                  ", 3] float64 sums view the results are written to");
    check_matrix(p.sums, "sums", kBceSumsRows, 3, "[kBceSumsRows, 3]", DType::Float64, dev,
                 d.device_index);
    PCMEKIT_CHECK(p.sums.col_stride == 1 && p.sums.row_stride == 3,
                  "sums must be contiguous, got strides (", p.sums.row_stride, ", ",
                  p.sums.col_stride, ")");
  }
}

}  // namespace

namespace detail {

DistanceBceParams bce_params_of(const PairwiseBceParams& p) {
  DistanceBceParams b;
  b.distance = p.forward.out;
  b.grad = p.forward.out;
  b.target = p.target;
  b.scale = p.scale;
  b.shift = p.shift;
  b.mean = p.mean;
  b.num_threads = p.forward.num_threads;
  b.sums = p.sums;
  b.stream = p.forward.stream;
  return b;
}

}  // namespace detail

DistanceBceResult distance_bce(const DistanceBceParams& p) {
  check_bce(p);
  if (p.distance.device == Device::CUDA) {
#ifdef PCMEKIT_WITH_CUDA
    cuda::distance_bce(p);
    return {};
#else
    detail::throw_no_cuda();
#endif
  }
  return cpu::distance_bce(p);
}

DistanceBceResult pairwise_bce(const PairwiseBceParams& p) {
  detail::check_pairwise_forward(p.forward);
  const DistanceBceParams b = detail::bce_params_of(p);
  check_bce(b);
  if (b.distance.device == Device::CUDA) {
#ifdef PCMEKIT_WITH_CUDA
    cuda::pairwise_bce(p);
    return {};
#else
    detail::throw_no_cuda();
#endif
  }
  cpu::pairwise_forward(p.forward);
  return cpu::distance_bce(b);
}

}  // namespace pcmekit
