// Argument checks shared by the op front ends. Messages name the argument and say what was
// expected and what arrived.
#pragma once

#include <sstream>
#include <string>

#include "pcmekit/view.h"

namespace pcmekit::detail {

template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  return s.str();
}

// `view` must be present, shaped [rows, cols], of `dtype` on `device`:`device_index`.
inline void check_matrix(const MatrixView& view, const char* name, int64_t rows, int64_t cols,
                         const char* shape_doc, DType dtype, Device device, int device_index) {
  if (!view.present() && !view.empty())
    throw std::invalid_argument(concat(name, " is missing (null data pointer)"));
  if (view.rows != rows || view.cols != cols)
    throw std::invalid_argument(concat(name, " must have shape ", shape_doc, " = [", rows, ", ",
                                       cols, "], got ", view.shape_string()));
  if (view.dtype != dtype)
    throw TypeError(concat(name, " must have dtype ", dtype_name(dtype), ", got ",
                           dtype_name(view.dtype)));
  if (view.device != device || view.device_index != device_index)
    throw std::invalid_argument(concat(name, " must be on ", device_name(device), ":",
                                       device_index, ", got ", device_name(view.device), ":",
                                       view.device_index));
  if (view.rows < 0 || view.cols < 0)
    throw std::invalid_argument(concat(name, " has a negative size ", view.shape_string()));
}

inline bool is_half(DType dtype) { return dtype == DType::Float16 || dtype == DType::BFloat16; }

// Dtype of the distance matrix for inputs of `dtype`: 16-bit inputs accumulate and return float32.
inline DType accumulate_dtype(DType dtype) { return is_half(dtype) ? DType::Float32 : dtype; }

[[noreturn]] inline void throw_no_cuda() {
  throw std::invalid_argument(
      "pcmekit was built without CUDA support, but got CUDA tensors; rebuild with nvcc on PATH "
      "(PCMEKIT_CUDA=ON) or move the inputs to the CPU");
}

}  // namespace pcmekit::detail
