// cuemu's stand-in for <cuda_runtime.h>: CUDA C++ kernel syntax and the runtime API subset
// pcmekit uses, on the CPU. See cuemu/runtime.h for the execution model. Test-only: built with
// the CMake option PCMEKIT_CUDA_EMU=ON, never into a wheel that users install.
#pragma once

#include <math.h>  // the C math functions device code calls unqualified (expf, fmin, fma, ...)

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cuemu/runtime.h"

#define CUDART_VERSION 13000
#define __CUDA_EMU__ 1

// ---------------------------------------------------------------------------------------------
// Kernel syntax.

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)
#define __constant__ static
// __shared__ declarations are rewritten by rewrite_launches.py (cuemu::shared_var): a
// __shared__ the script missed does not compile.

#define threadIdx (::cuemu::detail::current_thread("threadIdx").idx)
#define blockIdx (::cuemu::detail::block("blockIdx").block_idx)
#define blockDim (::cuemu::detail::block("blockDim").block_dim)
#define gridDim (::cuemu::detail::block("gridDim").grid_dim)
inline constexpr int warpSize = 32;

#define __syncthreads() ::cuemu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::cuemu::syncwarp(::cuemu::detail::warp_mask(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_sync(mask, v, lane, ...) \
  ::cuemu::detail::shuffle(::cuemu::detail::Shfl::Idx, mask, v, lane, ::cuemu::detail::width_of(__VA_ARGS__), {"__shfl_sync", __FILE__, __LINE__})
#define __shfl_up_sync(mask, v, delta, ...) \
  ::cuemu::detail::shuffle(::cuemu::detail::Shfl::Up, mask, v, static_cast<int>(delta), ::cuemu::detail::width_of(__VA_ARGS__), {"__shfl_up_sync", __FILE__, __LINE__})
#define __shfl_down_sync(mask, v, delta, ...) \
  ::cuemu::detail::shuffle(::cuemu::detail::Shfl::Down, mask, v, static_cast<int>(delta), ::cuemu::detail::width_of(__VA_ARGS__), {"__shfl_down_sync", __FILE__, __LINE__})
#define __shfl_xor_sync(mask, v, lane_mask, ...) \
  ::cuemu::detail::shuffle(::cuemu::detail::Shfl::Xor, mask, v, lane_mask, ::cuemu::detail::width_of(__VA_ARGS__), {"__shfl_xor_sync", __FILE__, __LINE__})
#define __ballot_sync(mask, pred) ::cuemu::detail::vote(mask, (pred) != 0, {"__ballot_sync", __FILE__, __LINE__})
#define __any_sync(mask, pred) (::cuemu::detail::vote(mask, (pred) != 0, {"__any_sync", __FILE__, __LINE__}) != 0u)
#define __all_sync(mask, pred) \
  (::cuemu::detail::vote(mask, (pred) != 0, {"__all_sync", __FILE__, __LINE__}) == ::cuemu::detail::warp_of(::cuemu::detail::current_thread("__all_sync")).full_mask)

namespace cuemu::detail {
inline unsigned warp_mask() { return 0xffffffffu; }
inline unsigned warp_mask(unsigned mask) { return mask; }
inline int width_of() { return kWarpSize; }
inline int width_of(int width) { return width; }
}  // namespace cuemu::detail

// ---------------------------------------------------------------------------------------------
// Device functions. Blocks never overlap, so atomics are plain read-modify-writes.

namespace cuemu::detail {
template <typename T, typename F>
inline T read_modify_write(T* address, F update) {
  const T old = *address;
  *address = update(old);
  return old;
}
}  // namespace cuemu::detail

template <typename T>
inline T atomicAdd(T* address, T value) {
  return cuemu::detail::read_modify_write(address, [&](T old) { return old + value; });
}
template <typename T>
inline T atomicSub(T* address, T value) {
  return cuemu::detail::read_modify_write(address, [&](T old) { return old - value; });
}
template <typename T>
inline T atomicMax(T* address, T value) {
  return cuemu::detail::read_modify_write(address, [&](T old) { return value > old ? value : old; });
}
template <typename T>
inline T atomicMin(T* address, T value) {
  return cuemu::detail::read_modify_write(address, [&](T old) { return value < old ? value : old; });
}
template <typename T>
inline T atomicExch(T* address, T value) {
  return cuemu::detail::read_modify_write(address, [&](T) { return value; });
}
template <typename T>
inline T atomicCAS(T* address, T compare, T value) {
  return cuemu::detail::read_modify_write(address, [&](T old) { return old == compare ? value : old; });
}

inline void __threadfence() {}
inline void __threadfence_block() {}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline float __uint_as_float(unsigned i) { float x; std::memcpy(&x, &i, 4); return x; }
inline long long __double_as_longlong(double x) { long long i; std::memcpy(&i, &x, 8); return i; }
inline double __longlong_as_double(long long i) { double x; std::memcpy(&x, &i, 8); return x; }
// The fast intrinsics are computed exactly here: their hardware error is not modelled.
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
// Rounded products and sums that nvcc never contracts into an FMA (the host compiler contracts
// nothing here, so plain operators are the same thing).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

// The vector types of 16-byte (and 8-byte) accesses, with the hardware's alignment: a vector
// access through a misaligned pointer is undefined behaviour that UBSan reports.
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

// ---------------------------------------------------------------------------------------------
// Runtime API: one emulated device (index 0), host memory as device memory.

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

struct cudaDeviceProp {
  char name[256];
  int major, minor, multiProcessorCount, warpSize, maxThreadsPerBlock, regsPerBlock;
  std::size_t sharedMemPerBlock, sharedMemPerBlockOptin, totalGlobalMem;
};

#define cudaStreamLegacy (reinterpret_cast<cudaStream_t>(0x1))
#define cudaStreamPerThread (reinterpret_cast<cudaStream_t>(0x2))
#define cudaStreamNonBlocking 0x1
#define cudaEventDefault 0x0
#define cudaEventDisableTiming 0x2

namespace cuemu::detail {
inline int& current_device() {
  static thread_local int d = 0;
  return d;
}
inline cudaError_t ok() { return cudaSuccess; }
inline cudaError_t invalid(const char* what) { return set_error(cudaErrorInvalidValue, what); }
}  // namespace cuemu::detail

inline cudaError_t cudaGetLastError() {
  cuemu::detail::ErrorState& e = cuemu::detail::errors();
  const cudaError_t err = e.last;
  e.last = cudaSuccess;
  return err;
}
inline cudaError_t cudaPeekAtLastError() { return cuemu::detail::errors().last; }

namespace cuemu::detail {
struct ErrorText {
  cudaError_t code;
  const char* name;  // cudaGetErrorName
  const char* text;  // cudaGetErrorString, the real runtime's sentence
};
inline constexpr ErrorText kErrorTexts[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInitializationError, "cudaErrorInitializationError", "initialization error"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration", "invalid configuration argument"},
    {cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection", "invalid copy direction for memcpy"},
    {cudaErrorInsufficientDriver, "cudaErrorInsufficientDriver",
     "CUDA driver version is insufficient for CUDA runtime version"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {cudaErrorNotReady, "cudaErrorNotReady", "device not ready"},
    {cudaErrorLaunchFailure, "cudaErrorLaunchFailure", "unspecified launch failure"},
};
inline constexpr ErrorText kUnknownError = {static_cast<cudaError_t>(999), "cudaErrorUnknown", "unknown error"};  // 999: the runtime's code

inline const ErrorText& error_text(cudaError_t err) {
  for (const ErrorText& e : kErrorTexts)
    if (e.code == err) return e;
  return kUnknownError;
}
}  // namespace cuemu::detail

inline const char* cudaGetErrorName(cudaError_t err) { return cuemu::detail::error_text(err).name; }

// The runtime's sentence, followed by what the emulator saw when it raised the error.
inline const char* cudaGetErrorString(cudaError_t err) {
  static thread_local std::string text;
  const char* base = cuemu::detail::error_text(err).text;
  const std::string& detail = cuemu::detail::errors().detail;
  text = detail.empty() ? std::string(base) : std::string(base) + " [cuemu: " + detail + "]";
  return text.c_str();
}

inline cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = cuemu::detail::current_device();
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int device) {
  if (device != 0)
    return cuemu::detail::set_error(cudaErrorInvalidDevice,
                                    "the emulator has one device, 0; asked for " + std::to_string(device));
  cuemu::detail::current_device() = device;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}

// An emulated H100/H200-class device (sm_90).
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  if (device != 0) return cudaSetDevice(device);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "cuemu (sm_90 on the CPU)");
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 132;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->regsPerBlock = 65536;
  p->sharedMemPerBlock = cuemu::kDefaultSharedBytes;
  p->sharedMemPerBlockOptin = cuemu::kOptinSharedBytes;
  p->totalGlobalMem = std::size_t(1) << 34;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  cudaDeviceProp p;
  if (const cudaError_t err = cudaGetDeviceProperties(&p, device)) return err;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(p.sharedMemPerBlock); break;
    case cudaDevAttrWarpSize: *value = p.warpSize; break;
    case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
    case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(p.sharedMemPerBlockOptin); break;
    default: return cuemu::detail::invalid("cudaDeviceGetAttribute: attribute not emulated");
  }
  return cudaSuccess;
}

template <typename Kernel>
inline cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  if (value < 0 || static_cast<std::size_t>(value) > cuemu::kOptinSharedBytes)
    return cuemu::detail::invalid("cudaFuncSetAttribute: dynamic shared memory above sm_90's opt-in limit");
  const void* key = reinterpret_cast<const void*>(kernel);
  for (auto& e : cuemu::detail::shared_optins())
    if (e.first == key) {
      e.second = static_cast<std::size_t>(value);
      return cudaSuccess;
    }
  cuemu::detail::shared_optins().emplace_back(key, static_cast<std::size_t>(value));
  return cudaSuccess;
}

inline cudaError_t cudaMalloc(void** p, std::size_t bytes) {
  *p = bytes == 0 ? nullptr : std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (bytes != 0 && *p == nullptr) return cuemu::detail::set_error(cudaErrorMemoryAllocation, "host allocation failed");
  return cudaSuccess;
}
template <typename T>
inline cudaError_t cudaMalloc(T** p, std::size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault)
    return cuemu::detail::set_error(cudaErrorInvalidMemcpyDirection, "cudaMemcpy: unknown kind");
  if (bytes != 0) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t stream = nullptr) {
  if (!cuemu::detail::stream_valid(stream))
    return cuemu::detail::set_error(cudaErrorInvalidResourceHandle, "cudaMemcpyAsync on a stream that does not exist");
  return cudaMemcpy(dst, src, bytes, kind);
}
inline cudaError_t cudaMemset(void* dst, int value, std::size_t bytes) {
  if (bytes != 0) std::memset(dst, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* dst, int value, std::size_t bytes, cudaStream_t stream = nullptr) {
  if (!cuemu::detail::stream_valid(stream))
    return cuemu::detail::set_error(cudaErrorInvalidResourceHandle, "cudaMemsetAsync on a stream that does not exist");
  return cudaMemset(dst, value, bytes);
}

// Handles are numbers that are never reused, so a destroyed one stays invalid.
namespace cuemu::detail {
inline std::uintptr_t next_handle() {
  static std::uintptr_t next = 0x1000;
  return next += 16;
}
}  // namespace cuemu::detail

inline cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = reinterpret_cast<cudaStream_t>(cuemu::detail::next_handle());
  cuemu::detail::handles().streams.push_back(*s);
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  auto& v = cuemu::detail::handles().streams;
  auto it = std::find(v.begin(), v.end(), static_cast<const void*>(s));
  if (it == v.end()) return cuemu::detail::set_error(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: no such stream");
  v.erase(it);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (!cuemu::detail::stream_valid(s))
    return cuemu::detail::set_error(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize: no such stream");
  return cudaSuccess;
}

inline cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = reinterpret_cast<cudaEvent_t>(cuemu::detail::next_handle());
  cuemu::detail::handles().events.push_back(*e);
  return cudaSuccess;
}
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  auto& h = cuemu::detail::handles();
  auto it = std::find(h.events.begin(), h.events.end(), static_cast<const void*>(e));
  if (it == h.events.end()) return cuemu::detail::set_error(cudaErrorInvalidResourceHandle, "cudaEventDestroy: no such event");
  h.events.erase(it);
  h.recorded.erase(std::remove(h.recorded.begin(), h.recorded.end(), static_cast<const void*>(e)), h.recorded.end());
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr) {
  auto& h = cuemu::detail::handles();
  if (!cuemu::detail::contains(h.events, e) || !cuemu::detail::stream_valid(s))
    return cuemu::detail::set_error(cudaErrorInvalidResourceHandle, "cudaEventRecord: no such event or stream");
  if (!cuemu::detail::contains(h.recorded, e)) h.recorded.push_back(e);
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (!cuemu::detail::contains(cuemu::detail::handles().events, e))
    return cuemu::detail::set_error(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: no such event");
  return cudaSuccess;
}
inline cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned = 0) {
  auto& h = cuemu::detail::handles();
  if (!cuemu::detail::contains(h.events, e) || !cuemu::detail::stream_valid(s))
    return cuemu::detail::set_error(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: no such event or stream");
  return cudaSuccess;
}
// Times are not modelled: 0 ms between two recorded events, an error before both are recorded.
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  auto& h = cuemu::detail::handles();
  if (!cuemu::detail::contains(h.recorded, start) || !cuemu::detail::contains(h.recorded, end))
    return cuemu::detail::set_error(cudaErrorInvalidResourceHandle,
                                    "cudaEventElapsedTime: an event that was never recorded");
  *ms = 0.0f;
  return cudaSuccess;
}
