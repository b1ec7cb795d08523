// Front end of the fused AdamP / SGDP step: validate the tensors and hyper-parameters, then run.
#include "pcmekit/adamp.h"

#include <cmath>
#include <cstdint>
#include <string>

#include "core/checks.h"

namespace pcmekit {
namespace {

using detail::check_matrix;
using detail::concat;

void check_finite(double value, const char* name) {
  PCMEKIT_CHECK(std::isfinite(value), name, " must be finite, got ", value);
}

void check_at_least_zero(double value, const char* name) {
  PCMEKIT_CHECK(value >= 0.0, name, " must be >= 0, got ", value);
}

void check_hyper(const AdamPStepParams& p) {
  check_finite(p.lr, "lr");
  check_finite(p.eps, "eps");
  check_finite(p.weight_decay, "weight_decay");
  check_finite(p.delta, "delta");
  check_finite(p.wd_ratio, "wd_ratio");
  check_at_least_zero(p.lr, "lr");
  check_at_least_zero(p.eps, "eps");
  check_at_least_zero(p.weight_decay, "weight_decay");
  if (p.algorithm == ProjectedOptimizer::AdamP) {
    PCMEKIT_CHECK(p.beta1 >= 0.0 && p.beta1 < 1.0, "beta1 must be in [0, 1), got ", p.beta1);
    PCMEKIT_CHECK(p.beta2 >= 0.0 && p.beta2 < 1.0, "beta2 must be in [0, 1), got ", p.beta2);
  } else if (p.algorithm == ProjectedOptimizer::SGDP) {
    check_finite(p.momentum, "momentum");
    check_finite(p.dampening, "dampening");
    check_at_least_zero(p.momentum, "momentum");
    PCMEKIT_CHECK(!(p.weight_decay > 0 && p.momentum == 1.0),
                  "momentum must be < 1 when weight_decay > 0 (the decay is divided by 1 - momentum), got 1");
  } else {
    PCMEKIT_CHECK(false, "unknown optimizer code ", static_cast<int>(p.algorithm), " (0 AdamP, 1 SGDP)");
  }
}

// Rows of C consecutive elements: what the kernel walks.
void check_dense_rows(const MatrixView& v, const std::string& name) {
  const bool dense = v.rows <= 1 || v.row_stride == v.cols;
  PCMEKIT_CHECK(dense && (v.cols <= 1 || v.col_stride == 1), name, " must be contiguous (strides [",
                v.cols, ", 1]), got strides [", v.row_stride, ", ", v.col_stride, "]");
}

void check_tensor(const AdamPStepParams& p, int64_t i) {
  const AdamPTensor& t = p.tensors[i];
  const MatrixView& first = p.tensors[0].param;
  const std::string at = concat("tensors[", i, "].");
  const MatrixView& w = t.param;
  PCMEKIT_CHECK_TYPE(i != 0 || w.dtype == DType::Float32 || w.dtype == DType::Float64, at,
                     "param must have dtype float32 or float64, got ", dtype_name(w.dtype));
  PCMEKIT_CHECK(i != 0 || w.device == Device::CPU, at, "param is on ", device_name(w.device),
                "; the fused step runs on the CPU only (CUDA parameters take the multi-tensor path)");
  const std::string shape = concat("that of ", at, "param");
  const std::string pname = at + "param";
  check_matrix(w, pname.c_str(), w.rows, w.cols, "[R, C]", first.dtype, first.device, first.device_index);
  check_dense_rows(w, pname);
  const bool adam = p.algorithm == ProjectedOptimizer::AdamP;
  struct Companion {
    const MatrixView& view;
    const char* field;
    bool needed;
  };
  for (const Companion& c : {Companion{t.grad, "grad", true},
                             Companion{t.exp_avg, adam ? "exp_avg" : "exp_avg (the momentum buffer)", true},
                             Companion{t.exp_avg_sq, "exp_avg_sq", adam}}) {
    const std::string name = at + c.field;
    if (!c.needed) {
      PCMEKIT_CHECK(!c.view.present(), name, " must be absent for SGDP, got ", c.view.shape_string());
      continue;
    }
    PCMEKIT_CHECK(c.view.present() || w.rows * w.cols == 0, name, " is missing (null data pointer)");
    check_matrix(c.view, name.c_str(), w.rows, w.cols, shape.c_str(), first.dtype, first.device,
                 first.device_index);
    check_dense_rows(c.view, name);
  }
  PCMEKIT_CHECK(!adam || t.step >= 1, at, "step must be >= 1, got ", t.step);
  // The kernel reads and writes the four arrays as distinct memory.
  const int64_t bytes = w.rows * w.cols * (w.dtype == DType::Float64 ? 8 : 4);
  const MatrixView* views[4] = {&t.param, &t.grad, &t.exp_avg, &t.exp_avg_sq};
  const char* names[4] = {"param", "grad", "exp_avg", "exp_avg_sq"};
  for (int a = 0; a < 4; ++a)
    for (int b = a + 1; b < 4; ++b) {
      if (bytes == 0 || !views[a]->present() || !views[b]->present()) continue;
      const auto lo_a = reinterpret_cast<uintptr_t>(views[a]->data);
      const auto lo_b = reinterpret_cast<uintptr_t>(views[b]->data);
      PCMEKIT_CHECK(!(lo_a < lo_b + uintptr_t(bytes) && lo_b < lo_a + uintptr_t(bytes)), at, names[a],
                    " and ", at, names[b], " overlap in memory; they must be distinct tensors");
    }
}

}  // namespace

void adamp_step(const AdamPStepParams& p) {
  check_hyper(p);
  PCMEKIT_CHECK(p.count >= 0, "count must be >= 0, got ", p.count);
  if (p.count == 0) return;
  PCMEKIT_CHECK(p.tensors != nullptr, "tensors is missing (null pointer)");
  PCMEKIT_CHECK(p.projections != nullptr, "projections is missing (null pointer)");
  for (int64_t i = 0; i < p.count; ++i) check_tensor(p, i);
  cpu::adamp_step(p);
}

}  // namespace pcmekit
