// What the CUDA runtime can see. Plain C++ (no CUDA headers): includable from any translation
// unit of a CUDA build, e.g. the bindings' build_info() / cuda_available().
#pragma once

#include <string>

namespace pcmekit::cuda {

// Number of usable CUDA devices; 0 when there is no GPU, no driver, or the driver is too old for
// this runtime. Never throws and prints nothing.
int device_count() noexcept;

// Why device_count() is 0, as the CUDA runtime puts it (e.g. "cudaErrorNoDevice: no CUDA-capable
// device is detected"); empty when at least one device is usable.
std::string unavailable_reason();

// Version of the CUDA runtime this library was linked with, e.g. "13.0".
std::string runtime_version_string();

}  // namespace pcmekit::cuda
