// Front end of the distance BCE op: validate the views and scalars, then run on the CPU.
#include "pcmekit/bce.h"

#include <cmath>

#include "core/checks.h"

namespace pcmekit {

DistanceBceResult distance_bce(const DistanceBceParams& p) {
  using detail::check_matrix;
  const MatrixView& d = p.distance;
  const DType dt = d.dtype;
  PCMEKIT_CHECK_TYPE(dt == DType::Float32 || dt == DType::Float64,
                     "distance must have dtype float32 or float64, got ", dtype_name(dt));
  PCMEKIT_CHECK(d.device == Device::CPU,
                "distance must be on the CPU (pcmekit computes CUDA tensors with torch operations), got ",
                device_name(d.device));
  check_matrix(d, "distance", d.rows, d.cols, "[N, M]", dt, Device::CPU, d.device_index);
  check_matrix(p.grad, "grad", d.rows, d.cols, "[N, M]", dt, Device::CPU, d.device_index);
  PCMEKIT_CHECK(p.grad.col_stride == 1 || p.grad.empty(),
                "grad must have contiguous columns (col_stride 1), got col_stride ", p.grad.col_stride);
  if (p.target.present())
    check_matrix(p.target, "target", d.rows, d.cols, "[N, M]", dt, Device::CPU, d.device_index);
  PCMEKIT_CHECK(std::isfinite(p.scale), "scale must be finite, got ", p.scale);
  PCMEKIT_CHECK(std::isfinite(p.shift), "shift must be finite, got ", p.shift);
  return cpu::distance_bce(p);
}

}  // namespace pcmekit
