// Fused AdamP / SGDP step over many parameters at once (python/pcmekit/optim.py documents the
// algorithm; it is the `adamp` 0.3.0 package's, quirks included).
//
// Per parameter w with raw gradient g (all views [R, C]; R = size(0) for a projectable weight):
//
//   pass 1   AdamP:  m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g g
//                    u = m / (sqrt(v) / sqrt(1 - b2^t) + eps)   (nesterov: (b1 m + (1 - b1) g) / ...)
//            SGDP:   b = momentum b + (1 - dampening) g;   u = nesterov ? g + momentum b : b
//            and, for a projectable weight, per row r (in double):
//              <g_r, w_r>, |g_r|^2, |w_r|^2, <w_r, u_r>
//   decide   channel view: every row's |<g_r, w_r>| / (max(|g_r|, eps) max(|w_r|, eps)) is below
//            delta / sqrt(C); else layer view (the same on whole-tensor sums) below
//            delta / sqrt(R C); else no projection. NaN never passes.
//   pass 2   if projected: u -= (w / s) * c    with s = |w_row| + eps (per row in the channel
//            view, one for the tensor in the layer view) and c = <w_row, u_row> / s
//            w *= 1 - lr * weight_decay * ratio   (SGDP: ... / (1 - momentum); ratio = wd_ratio if
//            projected, else 1; skipped when weight_decay == 0), then w -= step_size * u
//            (AdamP: lr / (1 - b1^t); SGDP: lr). SGDP without nesterov stores the projected u
//            back into its buffer (the reference's aliasing).
//
// The element-wise arithmetic is the reference's sequence of roundings in the parameter's dtype
// (with an FMA exactly where torch's CPU kernels use one, and an IEEE square root); the reductions
// are done in double, in a fixed order (so results depend neither on the thread count nor on the
// instruction set), where the reference sums in the parameter's dtype. So the moments match the
// reference bit for bit, the weights to rounding (python/pcmekit/optim.py states the measured
// differences). Non-projectable parameters (dimension <= 1) take a single pass.
//
// Front end: core/adamp.cpp (validation, dispatch); kernel: cpu/adamp.cpp. CPU only, float32 and
// float64: the Python layer sends CUDA, 16-bit and oddly laid out parameters to its multi-tensor
// path instead.
#pragma once

#include <cstdint>

#include "pcmekit/view.h"

namespace pcmekit {

enum class ProjectedOptimizer : int { AdamP = 0, SGDP = 1 };

// Outcome of the scale-invariance test for one parameter.
enum class Projection : int32_t { None = 0, Channel = 1, Layer = 2 };

// One parameter and its optimizer state, all with the same shape and the same memory order:
// rows of C consecutive elements (row_stride == C, col_stride == 1).
struct AdamPTensor {
  MatrixView param;       // [R, C], read and written. A projectable weight is viewed with
                          // R = size(0) (the channel view); any other parameter as [1, numel].
  MatrixView grad;        // [R, C], read
  MatrixView exp_avg;     // [R, C], read and written: AdamP's first moment, SGDP's momentum buffer
  MatrixView exp_avg_sq;  // [R, C], read and written: AdamP's second moment; absent for SGDP
  int64_t step = 1;       // AdamP: this step's count (>= 1), for the bias corrections; SGDP: unused
  bool projectable = false;  // dimension > 1: run the test and project when it passes
};

struct AdamPStepParams {
  ProjectedOptimizer algorithm = ProjectedOptimizer::AdamP;
  const AdamPTensor* tensors = nullptr;  // [count]; all of one dtype and device
  int64_t count = 0;
  double lr = 1e-3;            // >= 0
  double beta1 = 0.9;          // AdamP: in [0, 1)
  double beta2 = 0.999;        // AdamP: in [0, 1)
  double momentum = 0.0;       // SGDP: >= 0 (< 1 when weight_decay > 0)
  double dampening = 0.0;      // SGDP
  double eps = 1e-8;           // >= 0: Adam's denominator, the norm floor and the projection's norm
  double weight_decay = 0.0;   // >= 0
  double delta = 0.1;          // threshold of the test: delta / sqrt(row length)
  double wd_ratio = 0.1;       // weight-decay factor of projected parameters
  bool nesterov = false;
  Projection* projections = nullptr;  // [count] host memory, written: the test's outcome per tensor
  int num_threads = 0;         // CPU threads; 0 = hardware concurrency
};

// Validates (std::invalid_argument / pcmekit::TypeError naming the field, e.g. "tensors[3].grad")
// and runs the step in place.
void adamp_step(const AdamPStepParams& p);

namespace cpu {
void adamp_step(const AdamPStepParams& p);
}  // namespace cpu

}  // namespace pcmekit
