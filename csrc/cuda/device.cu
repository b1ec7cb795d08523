// Device discovery; see device.h.
#include "cuda/device.h"

#include <cuda_runtime.h>

namespace pcmekit::cuda {
namespace {

// cudaGetDeviceCount's error (no device, no driver, driver too old) is not sticky, but it is
// recorded as the last error: clear it so that it does not surface at an unrelated later check.
cudaError_t query_device_count(int* count) noexcept {
  *count = 0;
  const cudaError_t err = cudaGetDeviceCount(count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    *count = 0;
  }
  return err;
}

}  // namespace

int device_count() noexcept {
  int count = 0;
  (void)query_device_count(&count);
  return count;
}

std::string unavailable_reason() {
  int count = 0;
  const cudaError_t err = query_device_count(&count);
  if (err != cudaSuccess) {
    // Without any driver the runtime says "insufficient driver"; say what is actually missing.
    int driver = 0;
    if (err == cudaErrorInsufficientDriver && cudaDriverGetVersion(&driver) == cudaSuccess &&
        driver == 0)
      return "no NVIDIA driver is installed (cudaErrorInsufficientDriver)";
    (void)cudaGetLastError();
    return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
  }
  if (count == 0) return "the CUDA runtime reports no devices";
  return std::string();
}

std::string runtime_version_string() {
  int version = 0;
  if (cudaRuntimeGetVersion(&version) != cudaSuccess) {
    (void)cudaGetLastError();
    version = CUDART_VERSION;  // the version compiled against
  }
  // Encoded as 1000 * major + 10 * minor.
  return std::to_string(version / 1000) + "." + std::to_string((version % 1000) / 10);
}

}  // namespace pcmekit::cuda
