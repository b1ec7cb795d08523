// Argument checks shared by the op front ends: the one place pcmekit validates shapes, dtypes,
// devices and ranges (the Python layer checks only what needs Python: types, numpy, NaN).
// Messages name the argument and say what was expected and what arrived.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#include "pcmekit/precision.h"
#include "pcmekit/view.h"

namespace pcmekit::detail {

template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  return s.str();
}

}  // namespace pcmekit::detail

// PCMEKIT_CHECK(cond, parts...): throws std::invalid_argument (Python ValueError) with the parts
// streamed into one message unless `cond` holds (faiss's FAISS_THROW_IF_NOT_FMT, in stream form).
// PCMEKIT_CHECK_TYPE is the same for TypeError (Python TypeError).
#define PCMEKIT_CHECK(cond, ...)                                                  \
  do {                                                                            \
    if (!(cond)) throw std::invalid_argument(::pcmekit::detail::concat(__VA_ARGS__)); \
  } while (0)
#define PCMEKIT_CHECK_TYPE(cond, ...)                                           \
  do {                                                                          \
    if (!(cond)) throw ::pcmekit::TypeError(::pcmekit::detail::concat(__VA_ARGS__)); \
  } while (0)

namespace pcmekit::detail {

// `view` must be present, shaped [rows, cols], of `dtype` on `device`:`device_index`.
inline void check_matrix(const MatrixView& view, const char* name, int64_t rows, int64_t cols,
                         const char* shape_doc, DType dtype, Device device, int device_index) {
  PCMEKIT_CHECK(view.present() || view.empty(), name, " is missing (null data pointer)");
  PCMEKIT_CHECK(view.rows == rows && view.cols == cols, name, " must have shape ", shape_doc, " = [",
                rows, ", ", cols, "], got ", view.shape_string());
  PCMEKIT_CHECK_TYPE(view.dtype == dtype, name, " must have dtype ", dtype_name(dtype), ", got ",
                     dtype_name(view.dtype));
  PCMEKIT_CHECK(view.device == device && view.device_index == device_index, name, " must be on ",
                device_name(device), ":", device_index, ", got ", device_name(view.device), ":",
                view.device_index);
  PCMEKIT_CHECK(view.rows >= 0 && view.cols >= 0, name, " has a negative size ", view.shape_string());
}

// `p` must be one of the three matmul precision codes (pcmekit/precision.h).
inline void check_matmul_precision(MatmulPrecision p) {
  const int code = static_cast<int>(p);
  PCMEKIT_CHECK(code >= 0 && code <= static_cast<int>(MatmulPrecision::Medium),
                "unknown matmul precision code ", code, " (0 = highest, 1 = high, 2 = medium)");
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
