// The emulator's own tests, written as CUDA (tests/test_cuemu_selftest.py rewrites, compiles
// and runs it; each case is one command-line argument and prints "ok" or what went wrong).
// Kernels that must fail are run for their error: the launch-check macro of the project has to
// report it, as it would on a GPU.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/cuda_check.h"

namespace {

std::string failure;

#define EXPECT(cond)                                                              \
  do {                                                                            \
    if (!(cond) && failure.empty())                                               \
      failure = std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " #cond; \
  } while (0)

template <typename T>
struct Buffer {
  T* data = nullptr;
  std::size_t n = 0;
  explicit Buffer(std::size_t count, T fill = T()) : n(count) {
    PCMEKIT_CUDA_CHECK(cudaMalloc(&data, count * sizeof(T)));
    std::vector<T> host(count, fill);
    PCMEKIT_CUDA_CHECK(cudaMemcpy(data, host.data(), count * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~Buffer() { cudaFree(data); }
  std::vector<T> get() const {
    std::vector<T> host(n);
    PCMEKIT_CUDA_CHECK(cudaMemcpy(host.data(), data, n * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
};

// The message the launch-check macro throws for the last launch, or "" when it passes.
std::string launch_error() {
  try {
    PCMEKIT_CUDA_LAUNCH_CHECK();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// ---------------------------------------------------------------------------------------------
// Kernels.

__global__ void shuffles(int* out) {
  const int lane = threadIdx.x % 32;
  const int base = (threadIdx.x / 32) * 32 * 6 + lane;
  out[base + 0] = __shfl_xor_sync(0xffffffffu, lane * 10, 5);
  out[base + 32] = __shfl_down_sync(0xffffffffu, lane * 10, 3);
  out[base + 64] = __shfl_up_sync(0xffffffffu, lane * 10, 3);
  out[base + 96] = __shfl_sync(0xffffffffu, lane * 10, 7);
  out[base + 128] = __shfl_sync(0xffffffffu, lane * 10, 2, 16);     // lane 2 of each 16-lane half
  out[base + 160] = __shfl_down_sync(0xffffffffu, lane * 10, 4, 8);  // stays in its 8-lane segment
}

// Lanes take branches of different lengths between warp ops: independent thread scheduling.
__global__ void divergent_warp_sum(const float* in, float* out) {
  float v = in[threadIdx.x];
  if (threadIdx.x % 3 == 0) {
    for (int i = 0; i < 5; ++i) v = v * 1.0f + 0.0f;
  }
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) out[threadIdx.x / 32] = v;
}

__global__ void votes(unsigned* out) {
  const int lane = threadIdx.x % 32;
  const unsigned b = __ballot_sync(0xffffffffu, lane % 2 == 1);
  const bool any = __any_sync(0xffffffffu, lane == 31);
  const bool all = __all_sync(0xffffffffu, lane < 31);
  if (lane == 0) {
    out[0] = b;
    out[1] = any;
    out[2] = all;
  }
}

// Sum of in[0, n) by one block of any size, through shared memory.
__global__ void block_sum(const double* in, int n, double* out) {
  __shared__ double partial[1024];
  double v = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += in[i];
  partial[threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0;
    for (unsigned t = 0; t < blockDim.x; ++t) s += partial[t];
    *out = s;
  }
}

// d = a b + c on one warp's wmma: a [16, K] row-major, b [K, 16] stored column-major
// (b[n * K + k]), c and d [16, 16] row-major. Tag is the fragment's operand type.
template <typename Tag, typename T, int K>
__global__ void wmma_product(const T* a, const T* b, const float* c, float* d, bool convert) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, K, Tag, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, K, Tag, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, K, float> acc;
  wmma::load_matrix_sync(fa, a, K);
  wmma::load_matrix_sync(fb, b, K);
  wmma::load_matrix_sync(acc, c, 16, wmma::mem_row_major);
  if constexpr (std::is_same_v<Tag, wmma::precision::tf32>) {
    if (convert) {
      for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
      for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
    }
  }
  wmma::mma_sync(acc, fa, fb, acc);
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= 2.0f;  // element-wise ops on x[] are portable
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

// The last lane skips the mma: the warp can never complete it.
__global__ void wmma_missing_lane(const float* a, float* d) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::load_matrix_sync(fa, a, 8);
  wmma::load_matrix_sync(fb, a, 8);
  if (threadIdx.x != 31) wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

__global__ void wmma_misaligned(const float* a) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, a + 4, 8);  // 16 bytes past a 256-byte boundary
}

__global__ void wmma_diverging_pointer(const float* a) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, a + (threadIdx.x % 2) * 8, 8);
}

// Each lane reads a stored element that (in the stand-in's layout) another lane holds: without
// the __syncwarp between, a lane that runs first reads the 0xFF fill (NaN).
__global__ void wmma_store_then_read(float* out, bool sync) {
  namespace wmma = nvcuda::wmma;
  __shared__ float tile[16 * 16];
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
  wmma::fill_fragment(acc, 1.0f);
  wmma::store_matrix_sync(tile, acc, 16, wmma::mem_row_major);
  if (sync) __syncwarp();
  out[threadIdx.x] = tile[threadIdx.x * 8 + 3];
}

__global__ void tf32_round(const float* in, float* out, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = nvcuda::wmma::__float_to_tf32(in[i]);
}

// Reads a neighbour's shared slot without the barrier in between: must not see its value.
__global__ void missing_barrier(int* out) {
  __shared__ int slot[256];
  slot[threadIdx.x] = static_cast<int>(threadIdx.x);
  // (no __syncthreads here)
  out[threadIdx.x] = slot[(threadIdx.x + 1) % blockDim.x];
}

__global__ void barrier_after_exit(int* out) {
  if (threadIdx.x >= 16) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void two_barriers(int* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void shuffle_vs_barrier(int* out) {
  int v = static_cast<int>(threadIdx.x);
  if (threadIdx.x % 32 < 16)
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  else
    __syncthreads();
  out[threadIdx.x] = v;
}

__global__ void half_mask(int* out) {
  out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void write_index(int* out) {
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  out[block * blockDim.x * blockDim.y * blockDim.z + thread] = block * 1000 + thread;
}

__global__ void uses_dynamic_shared(int* out) {
  extern __shared__ int dyn[];
  dyn[threadIdx.x] = static_cast<int>(threadIdx.x) * 2;
  __syncthreads();
  out[threadIdx.x] = dyn[blockDim.x - 1 - threadIdx.x];
}

__global__ void too_much_static_shared(int* out) {
  __shared__ float big[13000];  // 52,000 bytes
  big[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = static_cast<int>(big[0]);
}

__global__ void atomics(float* f, double* d, int* i) {
  atomicAdd(f, 0.5f);
  atomicAdd(d, 0.25);
  atomicAdd(i, 1);
}

// ---------------------------------------------------------------------------------------------
// Cases.

void case_shuffles() {
  Buffer<int> out(64 * 6, -1);
  shuffles<<<1, 64>>>(out.data);
  EXPECT(launch_error().empty());
  const std::vector<int> h = out.get();
  for (int w = 0; w < 2; ++w)
    for (int lane = 0; lane < 32; ++lane) {
      const int* o = h.data() + w * 32 * 6 + lane;
      EXPECT(o[0] == (lane ^ 5) * 10);
      EXPECT(o[32] == (lane + 3 < 32 ? lane + 3 : lane) * 10);
      EXPECT(o[64] == (lane >= 3 ? lane - 3 : lane) * 10);
      EXPECT(o[96] == 70);
      EXPECT(o[128] == ((lane & ~15) + 2) * 10);
      EXPECT(o[160] == ((lane % 8) + 4 < 8 ? lane + 4 : lane) * 10);
    }
}

void case_divergent_warp() {
  std::vector<float> host(96);
  for (int i = 0; i < 96; ++i) host[i] = static_cast<float>(i);
  Buffer<float> in(96), out(3);
  PCMEKIT_CUDA_CHECK(cudaMemcpy(in.data, host.data(), 96 * 4, cudaMemcpyHostToDevice));
  divergent_warp_sum<<<1, 96>>>(in.data, out.data);
  EXPECT(launch_error().empty());
  const std::vector<float> h = out.get();
  for (int w = 0; w < 3; ++w) EXPECT(h[w] == static_cast<float>(32 * 32 * w + 31 * 32 / 2));
}

void case_votes() {
  Buffer<unsigned> out(3, 7);
  votes<<<1, 32>>>(out.data);
  EXPECT(launch_error().empty());
  const std::vector<unsigned> h = out.get();
  EXPECT(h[0] == 0xaaaaaaaau);
  EXPECT(h[1] == 1u);
  EXPECT(h[2] == 0u);
}

void case_block_sizes() {
  const int n = 5000;
  std::vector<double> host(n);
  double expected = 0;
  for (int i = 0; i < n; ++i) expected += host[i] = 0.5 * i;
  Buffer<double> in(n), out(1);
  PCMEKIT_CUDA_CHECK(cudaMemcpy(in.data, host.data(), n * 8, cudaMemcpyHostToDevice));
  for (int threads : {1, 31, 33, 256, 1024}) {
    block_sum<<<1, threads>>>(in.data, n, out.data);
    EXPECT(launch_error().empty());
    EXPECT(out.get()[0] == expected);
  }
}

void case_missing_barrier_is_visible() {
  Buffer<int> out(256, 0);
  missing_barrier<<<1, 256>>>(out.data);
  EXPECT(launch_error().empty());
  const std::vector<int> h = out.get();
  int wrong = 0;
  for (int t = 0; t < 256; ++t) wrong += h[t] != (t + 1) % 256;
  EXPECT(wrong > 64);  // most threads read the poison (-1) of a slot not yet written
}

void case_barrier_after_exit() {
  Buffer<int> out(64, 0);
  barrier_after_exit<<<1, 64>>>(out.data);
  const std::string e = launch_error();
  EXPECT(contains(e, "cudaErrorLaunchFailure") && contains(e, "have exited"));
}

void case_divergent_barriers() {
  Buffer<int> out(64, 0);
  two_barriers<<<1, 64>>>(out.data);
  EXPECT(contains(launch_error(), "divergent __syncthreads"));
}

void case_deadlock() {
  Buffer<int> out(64, 0);
  shuffle_vs_barrier<<<1, 64>>>(out.data);
  const std::string e = launch_error();
  EXPECT(contains(e, "deadlock") && contains(e, "__shfl_xor_sync") && contains(e, "__syncthreads"));
}

void case_partial_mask() {
  Buffer<int> out(32, 0);
  half_mask<<<1, 32>>>(out.data);
  EXPECT(contains(launch_error(), "mask 0x0000ffff"));
}

void case_launch_limits() {
  Buffer<int> out(4096, 0);
  write_index<<<1, 2048>>>(out.data);
  std::string e = launch_error();
  EXPECT(contains(e, "cudaErrorInvalidConfiguration") && contains(e, "2048 threads"));
  write_index<<<dim3(1, 65536), 1>>>(out.data);
  EXPECT(contains(launch_error(), "cudaErrorInvalidConfiguration"));
  write_index<<<1, dim3(1, 1, 65)>>>(out.data);
  EXPECT(contains(launch_error(), "cudaErrorInvalidConfiguration"));
  write_index<<<0, 32>>>(out.data);
  EXPECT(contains(launch_error(), "cudaErrorInvalidConfiguration"));
  write_index<<<1, 0>>>(out.data);
  EXPECT(contains(launch_error(), "cudaErrorInvalidConfiguration"));
  EXPECT(out.get()[0] == 0);  // none of them ran
  write_index<<<dim3(2, 3, 2), dim3(4, 2, 3)>>>(out.data);
  EXPECT(launch_error().empty());
  const std::vector<int> h = out.get();
  for (int b = 0; b < 12; ++b)
    for (int t = 0; t < 24; ++t) EXPECT(h[b * 24 + t] == b * 1000 + t);
}

void case_dynamic_shared() {
  Buffer<int> out(256, 0);
  uses_dynamic_shared<<<1, 256, 256 * sizeof(int)>>>(out.data);
  EXPECT(launch_error().empty());
  EXPECT(out.get()[0] == 510);
  uses_dynamic_shared<<<1, 256, 64 * 1024>>>(out.data);
  EXPECT(contains(launch_error(), "65536 bytes of dynamic shared memory"));
  PCMEKIT_CUDA_CHECK(cudaFuncSetAttribute(uses_dynamic_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, 96 * 1024));
  uses_dynamic_shared<<<1, 256, 64 * 1024>>>(out.data);
  EXPECT(launch_error().empty());
  EXPECT(cudaFuncSetAttribute(uses_dynamic_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, 300 * 1024) ==
         cudaErrorInvalidValue);
  (void)cudaGetLastError();
}

void case_static_shared_limit() {
  Buffer<int> out(32, 0);
  too_much_static_shared<<<1, 32>>>(out.data);
  EXPECT(contains(launch_error(), "static shared memory of 52000 bytes"));
}

void case_atomics() {
  Buffer<float> f(1, 0.0f);
  Buffer<double> d(1, 0.0);
  Buffer<int> i(1, 0);
  atomics<<<dim3(3, 2), 128>>>(f.data, d.data, i.data);
  EXPECT(launch_error().empty());
  EXPECT(f.get()[0] == 384.0f);
  EXPECT(d.get()[0] == 192.0);
  EXPECT(i.get()[0] == 768);
}

void case_half_conversions() {
  // bfloat16: round to nearest even at the 16th bit, NaN stays NaN.
  EXPECT(__bfloat16_as_ushort(__float2bfloat16_rn(1.0f)) == 0x3f80);
  EXPECT(__bfloat16_as_ushort(__float2bfloat16_rn(1.00390625f)) == 0x3f80);  // tie, to even
  EXPECT(__bfloat16_as_ushort(__float2bfloat16_rn(1.01171875f)) == 0x3f82);  // tie, to even
  EXPECT(__bfloat16_as_ushort(__float2bfloat16_rn(1.0078125f)) == 0x3f81);
  EXPECT(__bfloat16_as_ushort(__float2bfloat16_rn(-3.0e38f)) == 0xff62);
  EXPECT(__bfloat162float(__float2bfloat16_rn(__int_as_float(0x7fc00001))) !=
         __bfloat162float(__float2bfloat16_rn(__int_as_float(0x7fc00001))));
  EXPECT(__bfloat162float(__ushort_as_bfloat16(0x4049)) == 3.140625f);
  // float16: IEEE binary16.
  EXPECT(__half_as_ushort(__float2half_rn(1.0f)) == 0x3c00);
  EXPECT(__half_as_ushort(__float2half_rn(65504.0f)) == 0x7bff);
  EXPECT(__half_as_ushort(__float2half_rn(70000.0f)) == 0x7c00);      // overflow to inf
  EXPECT(__half_as_ushort(__float2half_rn(1.0f + 1.0f / 2048)) == 0x3c00);  // tie, to even
  EXPECT(__half_as_ushort(__float2half_rn(5.960464477539063e-08f)) == 0x0001);  // subnormal
  EXPECT(__half2float(__ushort_as_half(0x3555)) == 0.333251953125f);
}

// Round to TF32 on the host, independently of the stand-in: nearest, ties away from zero.
float tf32_reference(float f) {
  if (!std::isfinite(f)) return f;
  int e;
  const double m = std::frexp(static_cast<double>(f), &e);  // |m| in [0.5, 1): 11 significant bits
  return static_cast<float>(std::ldexp(std::round(std::ldexp(m, 11)), e - 11));  // round(): ties away
}

float tf32_truncate(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  u &= 0xffffe000u;
  std::memcpy(&f, &u, 4);
  return f;
}

// A deterministic mix of magnitudes and signs, with bits below TF32's mantissa.
float test_value(int i) { return std::ldexp(static_cast<float>((i * 2654435761u) % 2000001u) - 1e6f, -19 + i % 7); }

template <typename Tag, typename T, int K>
void check_wmma(bool convert, float (*round)(float)) {
  std::vector<T> ha(16 * K), hb(K * 16);
  std::vector<float> hc(256);
  for (int i = 0; i < 16 * K; ++i) ha[i] = T(test_value(i));
  for (int i = 0; i < K * 16; ++i) hb[i] = T(test_value(i + 1000));
  for (int i = 0; i < 256; ++i) hc[i] = test_value(i + 3000);
  Buffer<T> a(ha.size()), b(hb.size());
  Buffer<float> c(256), d(256, -1.0f);
  PCMEKIT_CUDA_CHECK(cudaMemcpy(a.data, ha.data(), ha.size() * sizeof(T), cudaMemcpyHostToDevice));
  PCMEKIT_CUDA_CHECK(cudaMemcpy(b.data, hb.data(), hb.size() * sizeof(T), cudaMemcpyHostToDevice));
  PCMEKIT_CUDA_CHECK(cudaMemcpy(c.data, hc.data(), 256 * sizeof(float), cudaMemcpyHostToDevice));
  wmma_product<Tag, T, K><<<1, 32>>>(a.data, b.data, c.data, d.data, convert);
  EXPECT(launch_error().empty());
  const std::vector<float> got = d.get();
  double worst = 0;
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      double ref = hc[m * 16 + n], mag = std::fabs(ref);
      for (int k = 0; k < K; ++k) {
        const double p = double(round(static_cast<float>(ha[m * K + k]))) * round(static_cast<float>(hb[n * K + k]));
        ref += p;
        mag += std::fabs(p);
      }
      // float accumulation of exact products: K + 1 roundings of at most 2^-24 of the running sum
      worst = std::max(worst, std::fabs(got[m * 16 + n] / 2.0 - ref) / (mag * (K + 1) * std::ldexp(1.0, -24)));
    }
  EXPECT(worst <= 1.0);
}

float identity(float f) { return f; }

void case_wmma_tf32() {
  check_wmma<nvcuda::wmma::precision::tf32, float, 8>(true, tf32_reference);
  // Not converted: the hardware reads the top 19 bits of each operand.
  check_wmma<nvcuda::wmma::precision::tf32, float, 8>(false, tf32_truncate);
}

void case_wmma_half() { check_wmma<__half, __half, 16>(false, identity); }
void case_wmma_bfloat16() { check_wmma<__nv_bfloat16, __nv_bfloat16, 16>(false, identity); }

void case_tf32_rounding() {
  const float one = 1.0f, ulp = std::ldexp(1.0f, -10);  // TF32's spacing at 1
  std::vector<float> in = {one + ulp / 2, -(one + ulp / 2), one + ulp / 2 - std::ldexp(1.0f, -23),
                           one + 3 * ulp / 2, one + ulp / 4, 0.0f, -0.0f, 3.0e-39f, 65504.0f,
                           INFINITY, -INFINITY, NAN};
  for (int i = 0; i < 500; ++i) in.push_back(test_value(i));
  const int n = static_cast<int>(in.size());
  Buffer<float> din(in.size()), dout(in.size());
  PCMEKIT_CUDA_CHECK(cudaMemcpy(din.data, in.data(), in.size() * 4, cudaMemcpyHostToDevice));
  tf32_round<<<1, 64>>>(din.data, dout.data, n);
  EXPECT(launch_error().empty());
  const std::vector<float> out = dout.get();
  EXPECT(out[0] == one + ulp);     // a tie rounds away from zero
  EXPECT(out[1] == -(one + ulp));
  EXPECT(out[2] == one);           // just below the tie
  EXPECT(out[3] == one + 2 * ulp);
  EXPECT(out[4] == one);
  EXPECT(std::isinf(out[9]) && out[9] > 0 && std::isinf(out[10]) && out[10] < 0 && std::isnan(out[11]));
  for (int i = 0; i < n; ++i) {
    unsigned u;
    std::memcpy(&u, &out[i], 4);
    if (std::isfinite(in[i])) {
      EXPECT((u & 0x1fffu) == 0);
      EXPECT(out[i] == tf32_reference(in[i]) || (in[i] != 0 && std::fabs(in[i]) < 1.2e-38f));
    }
  }
}

void case_wmma_store_needs_syncwarp() {
  Buffer<float> out(32, 0.0f);
  wmma_store_then_read<<<1, 32>>>(out.data, false);
  EXPECT(launch_error().empty());
  int unwritten = 0;
  for (float v : out.get()) unwritten += std::isnan(v) ? 1 : 0;
  EXPECT(unwritten > 0);
  wmma_store_then_read<<<1, 32>>>(out.data, true);
  EXPECT(launch_error().empty());
  for (float v : out.get()) EXPECT(v == 1.0f);
}

void case_wmma_missing_lane() {
  Buffer<float> a(256, 1.0f), d(256);
  wmma_missing_lane<<<1, 32>>>(a.data, d.data);
  const std::string e = launch_error();
  EXPECT(contains(e, "wmma::mma_sync") && contains(e, "wmma::store_matrix_sync"));
}

void case_wmma_bad_pointers() {
  Buffer<float> a(256, 1.0f);
  wmma_misaligned<<<1, 32>>>(a.data);
  EXPECT(contains(launch_error(), "not 256-bit"));
  wmma_diverging_pointer<<<1, 32>>>(a.data);
  EXPECT(contains(launch_error(), "warp-uniform"));
  wmma_misaligned<<<1, 16>>>(a.data);
  EXPECT(contains(launch_error(), "full warp"));
}

void case_streams_and_events() {
  cudaStream_t s;
  cudaEvent_t a, b;
  PCMEKIT_CUDA_CHECK(cudaStreamCreate(&s));
  PCMEKIT_CUDA_CHECK(cudaEventCreate(&a));
  PCMEKIT_CUDA_CHECK(cudaEventCreate(&b));
  float ms = -1;
  EXPECT(cudaEventElapsedTime(&ms, a, b) == cudaErrorInvalidResourceHandle);
  (void)cudaGetLastError();
  Buffer<int> out(32, 0);
  PCMEKIT_CUDA_CHECK(cudaEventRecord(a, s));
  write_index<<<1, 32, 0, s>>>(out.data);
  EXPECT(launch_error().empty());
  PCMEKIT_CUDA_CHECK(cudaEventRecord(b, s));
  PCMEKIT_CUDA_CHECK(cudaStreamWaitEvent(nullptr, b, 0));
  PCMEKIT_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  EXPECT(ms == 0.0f);
  PCMEKIT_CUDA_CHECK(cudaStreamSynchronize(s));
  PCMEKIT_CUDA_CHECK(cudaStreamDestroy(s));
  write_index<<<1, 32, 0, s>>>(out.data);
  EXPECT(contains(launch_error(), "cudaErrorInvalidResourceHandle"));
  PCMEKIT_CUDA_CHECK(cudaEventDestroy(a));
  PCMEKIT_CUDA_CHECK(cudaEventDestroy(b));
}

void case_device_guard() {
  int n = 0;
  PCMEKIT_CUDA_CHECK(cudaGetDeviceCount(&n));
  EXPECT(n == 1);
  { pcmekit::cuda::DeviceGuard guard(0); }
  bool threw = false;
  try {
    pcmekit::cuda::DeviceGuard guard(1);
  } catch (const std::runtime_error& e) {
    threw = contains(e.what(), "cudaErrorInvalidDevice");
  }
  EXPECT(threw);
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::function<void()>> cases = {
      {"shuffles", case_shuffles},
      {"divergent_warp", case_divergent_warp},
      {"votes", case_votes},
      {"block_sizes", case_block_sizes},
      {"missing_barrier_is_visible", case_missing_barrier_is_visible},
      {"barrier_after_exit", case_barrier_after_exit},
      {"divergent_barriers", case_divergent_barriers},
      {"deadlock", case_deadlock},
      {"partial_mask", case_partial_mask},
      {"launch_limits", case_launch_limits},
      {"dynamic_shared", case_dynamic_shared},
      {"static_shared_limit", case_static_shared_limit},
      {"atomics", case_atomics},
      {"half_conversions", case_half_conversions},
      {"streams_and_events", case_streams_and_events},
      {"device_guard", case_device_guard},
      {"wmma_tf32", case_wmma_tf32},
      {"wmma_half", case_wmma_half},
      {"wmma_bfloat16", case_wmma_bfloat16},
      {"tf32_rounding", case_tf32_rounding},
      {"wmma_store_needs_syncwarp", case_wmma_store_needs_syncwarp},
      {"wmma_missing_lane", case_wmma_missing_lane},
      {"wmma_bad_pointers", case_wmma_bad_pointers},
  };
  if (argc == 2 && std::strcmp(argv[1], "--list") == 0) {
    for (const auto& c : cases) std::printf("%s\n", c.first.c_str());
    return 0;
  }
  if (argc != 2 || cases.count(argv[1]) == 0) {
    std::fprintf(stderr, "usage: selftest --list | CASE\n");
    return 2;
  }
  try {
    cases.at(argv[1])();
  } catch (const std::exception& e) {
    failure = std::string("exception: ") + e.what();
  }
  std::printf("%s\n", failure.empty() ? "ok" : failure.c_str());
  return failure.empty() ? 0 : 1;
}
