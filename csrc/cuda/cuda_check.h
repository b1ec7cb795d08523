// Error checking and device selection for the CUDA back end (CUDA translation units only).
//
//   PCMEKIT_CUDA_CHECK(expr)            throws std::runtime_error if the runtime call `expr` fails,
//                                       naming file:line, the expression and the CUDA error.
//   PCMEKIT_CUDA_LAUNCH_CHECK(stream)   after a kernel launch: checks cudaGetLastError(); with the
//                                       environment variable PCMEKIT_CUDA_SYNC=1 (read once per
//                                       process) it also synchronises `stream` and checks again, so
//                                       that an asynchronous fault is reported at the kernel that
//                                       caused it. PCMEKIT_CUDA_LAUNCH_CHECK() without a stream
//                                       synchronises the whole device in that debug mode.
//   DeviceGuard                         makes a device current for a scope and restores the
//                                       previous one.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pcmekit::cuda::detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file,
                                          int line) {
  // Clear a non-sticky error so that a later launch check does not report it a second time.
  (void)cudaGetLastError();
  throw std::runtime_error(std::string("CUDA error at ") + file + ":" + std::to_string(line) +
                           ": " + what + " failed with " + cudaGetErrorName(err) + ": " +
                           cudaGetErrorString(err));
}

// PCMEKIT_CUDA_SYNC=1: synchronise after every launch (debug switch). Read once.
inline bool sync_after_launch() {
  static const bool enabled = [] {
    const char* value = std::getenv("PCMEKIT_CUDA_SYNC");
    return value != nullptr && std::strcmp(value, "1") == 0;
  }();
  return enabled;
}

// Function object so that one macro serves both PCMEKIT_CUDA_LAUNCH_CHECK() and
// PCMEKIT_CUDA_LAUNCH_CHECK(stream) without compiler extensions.
struct LaunchCheck {
  const char* file;
  int line;

  void check_last_error() const {
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) throw_cuda_error(err, "kernel launch", file, line);
  }
  void operator()() const {
    check_last_error();
    if (!sync_after_launch()) return;
    const cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess)
      throw_cuda_error(err, "kernel execution (PCMEKIT_CUDA_SYNC=1, device synchronised)", file,
                       line);
  }
  void operator()(cudaStream_t stream) const {
    check_last_error();
    if (!sync_after_launch()) return;
    const cudaError_t err = cudaStreamSynchronize(stream);
    if (err != cudaSuccess)
      throw_cuda_error(err, "kernel execution (PCMEKIT_CUDA_SYNC=1, stream synchronised)", file,
                       line);
  }
};

}  // namespace pcmekit::cuda::detail

#define PCMEKIT_CUDA_CHECK(expr)                                                            \
  do {                                                                                      \
    const cudaError_t pcmekit_cuda_err_ = (expr);                                           \
    if (pcmekit_cuda_err_ != cudaSuccess)                                                   \
      ::pcmekit::cuda::detail::throw_cuda_error(pcmekit_cuda_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define PCMEKIT_CUDA_LAUNCH_CHECK(...) \
  ::pcmekit::cuda::detail::LaunchCheck{__FILE__, __LINE__}(__VA_ARGS__)

namespace pcmekit::cuda {

// Makes `device` current for the guard's lifetime; restores the previous device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    PCMEKIT_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) {
      PCMEKIT_CUDA_CHECK(cudaSetDevice(device));
      changed_ = true;
    }
  }
  ~DeviceGuard() {
    // A destructor must not throw; a failure here would resurface at the next checked call.
    if (changed_) (void)cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

}  // namespace pcmekit::cuda
