// Element access through a MatrixView's strides, for the CPU kernels.
#pragma once

#include <cstdint>

#include "pcmekit/view.h"

namespace pcmekit::cpu {

template <typename T>
T load(const MatrixView& v, int64_t r, int64_t c) {
  return static_cast<const T*>(v.data)[r * v.row_stride + c * v.col_stride];
}

template <typename T>
T& at(const MatrixView& v, int64_t r, int64_t c) {
  return static_cast<T*>(v.data)[r * v.row_stride + c * v.col_stride];
}

}  // namespace pcmekit::cpu
