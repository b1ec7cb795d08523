// The instruction set the CPU kernels use, chosen once per process at run time (the library is
// built without -march, so one binary runs on any x86-64 or AArch64 CPU).
#pragma once

namespace pcmekit::cpu {

enum class Isa { generic, avx2, avx512 };

// The best path the running CPU (and OS) supports, capped by the environment variable
// PCMEKIT_CPU_CAPABILITY = "avx2" or "generic" (for tests and for comparing paths; it never
// enables a path the CPU lacks).
Isa cpu_isa();

// Whether the running CPU (and OS) supports `isa`, whatever PCMEKIT_CPU_CAPABILITY says.
bool isa_supported(Isa isa);

// "avx512", "avx2" or "generic".
const char* isa_name(Isa isa);

}  // namespace pcmekit::cpu
