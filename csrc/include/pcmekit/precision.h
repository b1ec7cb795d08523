// The float32 matmul precision the CUDA kernels follow (pairwise, and every op built on the
// tensor-core engine). Its own header so that each op's params can carry it.
#pragma once

namespace pcmekit {

// How float32 products may be computed on CUDA, torch.get_float32_matmul_precision()'s three
// modes (docs/design.md, "CUDA tensor cores and the matmul precision"):
//   Highest: full float32 accuracy (csd/w2/l2/kl on float32 stay on the direct FP32 engine);
//   High, Medium: TF32 tensor cores allowed (10-bit mantissa operands, float accumulation).
// 16-bit inputs use tensor cores in every mode where that is exact (csd, l2). The CPU ignores it.
// Each op says in its params how it uses the mode; the core refuses codes outside 0..2
// (detail::check_matmul_precision, core/checks.h).
enum class MatmulPrecision : int { Highest = 0, High = 1, Medium = 2 };

}  // namespace pcmekit
