// What the tensor-core (wmma) kernels share: the architecture guard, the operand types (TF32,
// half, bfloat16: element type, k of the m16n16k shape, the rounding of a float into it) and
// whether a device has them. Used by pairwise_tc.cu (csd/w2/l2/kl, their backward, the fused
// BCE) and by every kernel built on the same engine; docs/design.md, "CUDA tensor cores and the
// matmul precision".
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <type_traits>

// TF32 and bfloat16 wmma exist from sm_80 on (<mma.h> declares them only there): the device
// passes for older architectures compile the kernels empty, and the host never launches them.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define PCMEKIT_TC_ARCH 1
#endif

namespace pcmekit::cuda {

namespace tc_wmma = nvcuda::wmma;

// ---------------------------------------------------------------------------------------------
// Operand types: the wmma element type, its k, and how a float feature becomes one (rounded
// once, when staged into shared memory).

struct Tf32Op {
#ifdef PCMEKIT_TC_ARCH
  using tag = tc_wmma::precision::tf32;
#endif
  using smem = float;
  static constexpr int k = 8;
  __device__ __forceinline__ static float from(float x) {
#ifdef PCMEKIT_TC_ARCH
    return tc_wmma::__float_to_tf32(x);
#else
    return x;
#endif
  }
};
struct HalfOp {
  using tag = __half;
  using smem = __half;
  static constexpr int k = 16;
  __device__ __forceinline__ static __half from(float x) { return __float2half_rn(x); }
};
struct Bf16Op {
  using tag = __nv_bfloat16;
  using smem = __nv_bfloat16;
  static constexpr int k = 16;
  __device__ __forceinline__ static __nv_bfloat16 from(float x) { return __float2bfloat16_rn(x); }
};

template <typename S>
__device__ __forceinline__ float to_float(S x) {
  if constexpr (std::is_same_v<S, float>) {
    return x;
  } else if constexpr (std::is_same_v<S, __half>) {
    return __half2float(x);
  } else {
    return __bfloat162float(x);
  }
}

// Whether device `device` has TF32 and bfloat16 wmma (sm_80 and later); asked once a device
// (pairwise_tc.cu).
bool device_has_tensor_cores(int device);

}  // namespace pcmekit::cuda
