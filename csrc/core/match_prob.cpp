// Front end of the Monte-Carlo match probability op: validate the views, then run on the
// inputs' device.
#include "pcmekit/match_prob.h"

#include <cmath>

#include "core/checks.h"

namespace pcmekit {
namespace {

using detail::check_matrix;

// Checks the six inputs and the scalars; a_mean fixes N, D, dtype and device.
void check_inputs(const MatrixView& a_mean, const MatrixView& a_logvar, const MatrixView& b_mean,
                  const MatrixView& b_logvar, const MatrixView& eps_a, const MatrixView& eps_b,
                  int64_t num_samples, double scale, double shift) {
  const int64_t n = a_mean.rows, m = b_mean.rows, d = a_mean.cols;
  const DType dt = a_mean.dtype;
  const Device dev = a_mean.device;
  const int idx = a_mean.device_index;
  PCMEKIT_CHECK_TYPE(dt == DType::Float32 || dt == DType::Float64, "a_mean has dtype ", dtype_name(dt),
                     "; match_prob computes in float32 or float64 (convert 16-bit inputs to "
                     "float32 first)");
  PCMEKIT_CHECK(num_samples >= 1, "num_samples must be >= 1, got ", num_samples);
  PCMEKIT_CHECK(std::isfinite(scale), "scale must be finite, got ", scale);
  PCMEKIT_CHECK(std::isfinite(shift), "shift must be finite, got ", shift);
  check_matrix(a_mean, "a_mean", n, d, "[N, D]", dt, dev, idx);
  check_matrix(a_logvar, "a_logvar", n, d, "[N, D]", dt, dev, idx);
  check_matrix(b_mean, "b_mean", m, d, "[M, D]", dt, dev, idx);
  check_matrix(b_logvar, "b_logvar", m, d, "[M, D]", dt, dev, idx);
  check_matrix(eps_a, "eps_a", n * num_samples, d, "[N * J, D]", dt, dev, idx);
  check_matrix(eps_b, "eps_b", m * num_samples, d, "[M * J, D]", dt, dev, idx);
}

template <typename Params>
void check_out_pair(const Params& p, const MatrixView& x, const char* name, bool optional) {
  if (optional && !x.present() && x.rows == 0 && x.cols == 0) return;
  const MatrixView& a = p.a_mean;
  check_matrix(x, name, a.rows, p.b_mean.rows, "[N, M]", a.dtype, a.device, a.device_index);
}

}  // namespace

void match_prob_forward(const MatchProbForwardParams& p) {
  check_inputs(p.a_mean, p.a_logvar, p.b_mean, p.b_logvar, p.eps_a, p.eps_b, p.num_samples,
               p.scale, p.shift);
  check_out_pair(p, p.log_p, "log_p", false);
  check_out_pair(p, p.log_q, "log_q", false);
  detail::check_matmul_precision(p.precision);
  if (p.a_mean.device == Device::CUDA) {
#ifdef PCMEKIT_WITH_CUDA
    cuda::match_prob_forward(p);
#else
    detail::throw_no_cuda();
#endif
  } else {
    cpu::match_prob_forward(p);
  }
}

void match_prob_backward(const MatchProbBackwardParams& p) {
  check_inputs(p.a_mean, p.a_logvar, p.b_mean, p.b_logvar, p.eps_a, p.eps_b, p.num_samples,
               p.scale, p.shift);
  check_out_pair(p, p.grad_log_p, "grad_log_p", true);
  check_out_pair(p, p.grad_log_q, "grad_log_q", true);
  check_out_pair(p, p.log_p, "log_p", false);
  check_out_pair(p, p.log_q, "log_q", false);
  detail::check_matmul_precision(p.precision);
  const MatrixView& a = p.a_mean;
  const int64_t n = a.rows, m = p.b_mean.rows, d = a.cols;
  struct Out {
    const MatrixView& view;
    const char* name;
    int64_t rows, cols;
    const char* doc;
  };
  for (const Out& o : {Out{p.grad_a_mean, "grad_a_mean", n, d, "[N, D]"},
                       Out{p.grad_a_logvar, "grad_a_logvar", n, d, "[N, D]"},
                       Out{p.grad_b_mean, "grad_b_mean", m, d, "[M, D]"},
                       Out{p.grad_b_logvar, "grad_b_logvar", m, d, "[M, D]"},
                       Out{p.grad_scale_shift, "grad_scale_shift", 1, 2, "[1, 2]"}}) {
    if (o.view.present())
      check_matrix(o.view, o.name, o.rows, o.cols, o.doc, a.dtype, a.device, a.device_index);
  }
  if (a.device == Device::CUDA) {
#ifdef PCMEKIT_WITH_CUDA
    cuda::match_prob_backward(p);
#else
    detail::throw_no_cuda();
#endif
  } else {
    cpu::match_prob_backward(p);
  }
}

}  // namespace pcmekit
