// Torch-free description of the arrays the core reads and writes.
//
// The core never allocates device memory and never sees a Python or torch object: the Python
// layer allocates every output and workspace with torch and hands the core plain views.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define PCMEKIT_HD __host__ __device__ __forceinline__
#else
#define PCMEKIT_HD inline
#endif

namespace pcmekit {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3, Int64 = 4 };
enum class Device : int { CPU = 0, CUDA = 1 };

const char* dtype_name(DType dtype);
const char* device_name(Device device);

// A strided 2-D array of `rows` x `cols` elements. Strides are in elements, not bytes.
// `data == nullptr` means "absent" (an optional input, or an output nobody asked for).
struct MatrixView {
  void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;  // elements between (i, j) and (i + 1, j)
  int64_t col_stride = 1;  // elements between (i, j) and (i, j + 1)
  DType dtype = DType::Float32;
  Device device = Device::CPU;
  int device_index = 0;

  bool present() const { return data != nullptr; }
  bool empty() const { return rows == 0 || cols == 0; }
  std::string shape_string() const;
};

// Error types; the bindings map them to Python exceptions.
//   invalid_argument -> ValueError, TypeError -> TypeError, anything else -> RuntimeError.
struct TypeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace pcmekit
