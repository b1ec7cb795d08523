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

// One loop, stamped out per instruction set (GCC applies a target attribute to a whole function,
// and a template cannot take it as a parameter). V is a GCC vector of `Bytes` bytes of T;
// acc * b + c compiles to one FMA where the target has it (contraction is on by default), to a
// multiply and an add on the generic path.
#define PCMEKIT_DEFINE_FMA_LOOP(NAME, ATTRIBUTES)                          \
  template <typename T, int Bytes, int Chains>                            \
  ATTRIBUTES double NAME(int64_t iterations) {                            \
    typedef T V __attribute__((vector_size(Bytes)));                      \
    V acc[Chains];                                                        \
    const V b = V{} + T(1.0000001), c = V{} + T(1e-9);                    \
    for (int i = 0; i < Chains; ++i) acc[i] = V{} + T(i);                 \
    for (int64_t it = 0; it < iterations; ++it) {                         \
      _Pragma("GCC unroll 16") for (int i = 0; i < Chains; ++i)           \
        acc[i] = acc[i] * b + c;                                          \
    }                                                                     \
    double sum = 0;                                                       \
    for (int i = 0; i < Chains; ++i) sum += double(acc[i][0]);            \
    return sum;                                                           \
  }

PCMEKIT_DEFINE_FMA_LOOP(generic_loop, )
#ifdef PCMEKIT_PEAK_X86
PCMEKIT_DEFINE_FMA_LOOP(avx2_loop, __attribute__((target("avx2,fma"))))
PCMEKIT_DEFINE_FMA_LOOP(avx512_loop, __attribute__((target("avx512f,avx512dq,fma"))))
#endif

struct Loop {
  double (*run)(int64_t iterations);
  int64_t flops_per_iteration;
};

// Chains x lanes x 2 flops an iteration. 16 chains of zmm; 12 of the 16 ymm (b and c take two);
// 8 of the 16 xmm.
template <typename T, int Bytes, int Chains>
constexpr Loop make_loop(double (*run)(int64_t)) {
  return Loop{run, int64_t{2} * Chains * Bytes / int64_t(sizeof(T))};
}

template <typename T>
Loop loop_for(Isa isa) {
#ifdef PCMEKIT_PEAK_X86
  if (isa == Isa::avx512) return make_loop<T, 64, 16>(avx512_loop<T, 64, 16>);
  if (isa == Isa::avx2) return make_loop<T, 32, 12>(avx2_loop<T, 32, 12>);
#endif
  return make_loop<T, 16, 8>(generic_loop<T, 16, 8>);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

FmaPeak measure_fma_peak(Isa isa, bool double_precision, int threads, double seconds) {
  if (!isa_supported(isa))
    throw std::invalid_argument(std::string("fma_peak: isa '") + isa_name(isa) +
                                "' is not supported by this CPU");
  if (threads < 1) throw std::invalid_argument("fma_peak: threads must be >= 1, got " + std::to_string(threads));
  if (!(seconds > 0)) throw std::invalid_argument("fma_peak: seconds must be > 0");
  const Loop loop = double_precision ? loop_for<double>(isa) : loop_for<float>(isa);
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
