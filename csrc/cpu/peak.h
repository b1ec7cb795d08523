// The machine's measured floating-point limit: the yardstick of every CPU benchmark row
// (docs/design.md, "Performance"). A constant from a data sheet would be wrong on half the
// machines this runs on: Zen 4 executes 512-bit FMAs at 256-bit width, cloud vCPUs run at
// whatever clock the host gives them, and two vCPUs may share one core.
#pragma once

#include <cstdint>

#include "cpu/isa.h"

namespace pcmekit::cpu {

struct FmaPeak {
  double gflops = 0;        // floating-point operations per second / 1e9 (an FMA counts 2)
  double seconds = 0;       // wall time of the measured run
  int64_t flops = 0;        // operations in the measured run, all threads together
  int threads = 0;          // threads that ran the loop at the same time
};

// Runs independent multiply-add chains of `isa`'s vectors (`double_precision` selects the element
// type) on `threads` threads at once for about `seconds`, and reports the rate. The ISA may be any
// the CPU supports (requesting another throws std::invalid_argument); "generic" is the portable
// path's 128-bit multiply plus add. The threads are those of the kernels (cpu/parallel.h).
FmaPeak measure_fma_peak(Isa isa, bool double_precision, int threads, double seconds);

}  // namespace pcmekit::cpu
