// Front end of the distance BCE op: validate the views and scalars, then run on the CPU.
#include "pcmekit/bce.h"

#include <cmath>

#include "core/checks.h"

namespace pcmekit {

DistanceBceResult distance_bce(const DistanceBceParams& p) {
  using detail::check_matrix;
  using detail::concat;
  const MatrixView& d = p.distance;
  const DType dt = d.dtype;
  if (dt != DType::Float32 && dt != DType::Float64)
    throw TypeError(concat("distance must have dtype float32 or float64, got ", dtype_name(dt)));
  if (d.device != Device::CPU)
    throw std::invalid_argument(concat("distance must be on the CPU (pcmekit computes CUDA "
                                       "tensors with torch operations), got ",
                                       device_name(d.device)));
  check_matrix(d, "distance", d.rows, d.cols, "[N, M]", dt, Device::CPU, d.device_index);
  check_matrix(p.grad, "grad", d.rows, d.cols, "[N, M]", dt, Device::CPU, d.device_index);
  if (p.grad.col_stride != 1 && !p.grad.empty())
    throw std::invalid_argument(
        concat("grad must have contiguous columns (col_stride 1), got col_stride ", p.grad.col_stride));
  if (p.target.present())
    check_matrix(p.target, "target", d.rows, d.cols, "[N, M]", dt, Device::CPU, d.device_index);
  if (!std::isfinite(p.scale)) throw std::invalid_argument(concat("scale must be finite, got ", p.scale));
  if (!std::isfinite(p.shift)) throw std::invalid_argument(concat("shift must be finite, got ", p.shift));
  return cpu::distance_bce(p);
}

}  // namespace pcmekit
