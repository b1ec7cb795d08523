// Measured multiply-add throughput (cpu/peak.h).
//
// Each thread runs kChains independent chains acc = acc * b + c on full vectors: enough
// independent work to cover the FMA latency on every FMA pipe (4-cycle latency x 2 pipes needs
// 8 chains; 12 or 16 leave margin), and nothing else in the loop but the loop counter. The values
// stay finite and normal (b is just above 1 and c tiny), so no slow paths are taken.
#include "cpu/peak.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>

#include "cpu/parallel.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PCMEKIT_PEAK_X86 1
#endif

namespace pcmekit::cpu {
namespace {

// Flops of one iteration of a loop: chains x lanes x 2.
constexpr int64_t flops_per_iteration(int lanes, int chains) { return int64_t{2} * lanes * chains; }

// The portable path: 16-byte vectors of the compiler's own, multiply then add (what the generic
// micro-kernels issue on a CPU without FMA; on AArch64 the compiler may fuse them, and the count
// stays two operations per lane).
template <typename T>
double generic_loop(int64_t iterations) {
  typedef T V __attribute__((vector_size(16)));
  constexpr int kChains = 8;
  V acc[kChains];
  const V b = V{} + T(1.0000001), c = V{} + T(1e-9);
  for (int i = 0; i < kChains; ++i) acc[i] = V{} + T(i);
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 8
    for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * b + c;
  }
  double sum = 0;
  for (int i = 0; i < kChains; ++i) sum += double(acc[i][0]);
  return sum;
}

#ifdef PCMEKIT_PEAK_X86
__attribute__((target("avx2,fma"))) double avx2_loop_float(int64_t iterations) {
  constexpr int kChains = 12;  // of 16 ymm registers: 12 chains, b and c
  __m256 acc[kChains];
  const __m256 b = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-9f);
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(float(i));
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], b, c);
  }
  double sum = 0;
  for (int i = 0; i < kChains; ++i) sum += _mm256_cvtss_f32(acc[i]);
  return sum;
}

__attribute__((target("avx2,fma"))) double avx2_loop_double(int64_t iterations) {
  constexpr int kChains = 12;
  __m256d acc[kChains];
  const __m256d b = _mm256_set1_pd(1.0000001), c = _mm256_set1_pd(1e-9);
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_pd(double(i));
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_pd(acc[i], b, c);
  }
  double sum = 0;
  for (int i = 0; i < kChains; ++i) sum += _mm256_cvtsd_f64(acc[i]);
  return sum;
}

__attribute__((target("avx512f,avx512dq,fma"))) double avx512_loop_float(int64_t iterations) {
  constexpr int kChains = 16;
  __m512 acc[kChains];
  const __m512 b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-9f);
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(float(i));
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], b, c);
  }
  double sum = 0;
  for (int i = 0; i < kChains; ++i) sum += _mm512_cvtss_f32(acc[i]);
  return sum;
}

__attribute__((target("avx512f,avx512dq,fma"))) double avx512_loop_double(int64_t iterations) {
  constexpr int kChains = 16;
  __m512d acc[kChains];
  const __m512d b = _mm512_set1_pd(1.0000001), c = _mm512_set1_pd(1e-9);
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_pd(double(i));
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_pd(acc[i], b, c);
  }
  double sum = 0;
  for (int i = 0; i < kChains; ++i) sum += _mm512_cvtsd_f64(acc[i]);
  return sum;
}
#endif

struct Loop {
  double (*run)(int64_t iterations);
  int64_t flops_per_iteration;
};

Loop loop_for(Isa isa, bool dbl) {
#ifdef PCMEKIT_PEAK_X86
  if (isa == Isa::avx512)
    return dbl ? Loop{avx512_loop_double, flops_per_iteration(8, 16)}
               : Loop{avx512_loop_float, flops_per_iteration(16, 16)};
  if (isa == Isa::avx2)
    return dbl ? Loop{avx2_loop_double, flops_per_iteration(4, 12)}
               : Loop{avx2_loop_float, flops_per_iteration(8, 12)};
#endif
  return dbl ? Loop{generic_loop<double>, flops_per_iteration(2, 8)}
             : Loop{generic_loop<float>, flops_per_iteration(4, 8)};
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

bool isa_supported(Isa isa) {
  if (isa == Isa::generic) return true;
#ifdef PCMEKIT_PEAK_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == Isa::avx2) return avx2;
  return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

FmaPeak measure_fma_peak(Isa isa, bool double_precision, int threads, double seconds) {
  if (!isa_supported(isa))
    throw std::invalid_argument(std::string("fma_peak: isa '") + isa_name(isa) +
                                "' is not supported by this CPU");
  if (threads < 1) throw std::invalid_argument("fma_peak: threads must be >= 1, got " + std::to_string(threads));
  if (!(seconds > 0)) throw std::invalid_argument("fma_peak: seconds must be > 0");
  const Loop loop = loop_for(isa, double_precision);
  std::atomic<double> sink{0};  // the chains' results go somewhere, so the loops are not dead

  // Calibration on one thread: double the count until a run takes 10 ms (this also wakes the
  // core up from any low-power state), then size the measured run from that rate.
  int64_t iterations = 1 << 14;
  double elapsed = 0;
  for (;;) {
    const auto start = std::chrono::steady_clock::now();
    sink = sink + loop.run(iterations);
    elapsed = seconds_since(start);
    if (elapsed > 0.01 || iterations > (int64_t{1} << 40)) break;
    iterations *= 2;
  }
  iterations = std::max<int64_t>(1, static_cast<int64_t>(double(iterations) * seconds / elapsed));

  // Every thread runs the same count at the same time; the slowest one sets the wall time, as
  // it does for a kernel whose work is split evenly.
  const auto start = std::chrono::steady_clock::now();
  parallel_for(0, threads, 1, threads, [&](int64_t lo, int64_t hi, int) {
    for (int64_t t = lo; t < hi; ++t) {
      const double s = loop.run(iterations);
      double expected = sink.load();
      while (!sink.compare_exchange_weak(expected, expected + s)) {
      }
    }
  });
  FmaPeak peak;
  peak.seconds = seconds_since(start);
  peak.threads = threads;
  peak.flops = iterations * loop.flops_per_iteration * threads;
  peak.gflops = double(peak.flops) / peak.seconds / 1e9;
  return peak;
}

}  // namespace pcmekit::cpu
