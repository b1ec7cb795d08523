// Front end of the pairwise distance op: validate the views, then run on the inputs' device.
#include "pcmekit/pairwise.h"

#include "core/checks.h"

namespace pcmekit {
namespace {

using detail::check_matrix;

// Checks the four inputs against a_mean, which fixes N, D, dtype and device.
void check_inputs(const MatrixView& a_mean, const MatrixView& a_logvar, const MatrixView& b_mean,
                  const MatrixView& b_logvar, Metric metric) {
  const int64_t n = a_mean.rows, m = b_mean.rows, d = a_mean.cols;
  const DType dt = a_mean.dtype;
  const Device dev = a_mean.device;
  const int idx = a_mean.device_index;
  PCMEKIT_CHECK_TYPE(dev != Device::CPU || !detail::is_half(dt), "a_mean has dtype ", dtype_name(dt),
                     ", which pcmekit supports on CUDA only; use float32 or float64 on the CPU");
  check_matrix(a_mean, "a_mean", n, d, "[N, D]", dt, dev, idx);
  check_matrix(b_mean, "b_mean", m, d, "[M, D]", dt, dev, idx);
  const bool need_logvar = metric_needs_logvar(metric);
  if (need_logvar || a_logvar.present())
    check_matrix(a_logvar, "a_logvar", n, d, "[N, D]", dt, dev, idx);
  if (need_logvar || b_logvar.present())
    check_matrix(b_logvar, "b_logvar", m, d, "[M, D]", dt, dev, idx);
  PCMEKIT_CHECK(!need_logvar || ((a_logvar.present() || n * d == 0) && (b_logvar.present() || m * d == 0)),
                "metric '", metric_name(metric), "' needs a_logvar and b_logvar");
}

void check_metric(Metric metric) {
  const int code = static_cast<int>(metric);
  PCMEKIT_CHECK(code >= 0 && code <= static_cast<int>(kLastMetric), "unknown metric code ", code);
}

}  // namespace

namespace detail {

void check_pairwise_forward(const PairwiseForwardParams& p) {
  check_metric(p.metric);
  check_matmul_precision(p.precision);
  check_inputs(p.a_mean, p.a_logvar, p.b_mean, p.b_logvar, p.metric);
  const MatrixView& a = p.a_mean;
  check_matrix(p.out, "out", a.rows, p.b_mean.rows, "[N, M]", detail::accumulate_dtype(a.dtype),
               a.device, a.device_index);
}

}  // namespace detail

void pairwise_forward(const PairwiseForwardParams& p) {
  detail::check_pairwise_forward(p);
  const MatrixView& a = p.a_mean;
  if (a.device == Device::CUDA) {
#ifdef PCMEKIT_WITH_CUDA
    cuda::pairwise_forward(p);
#else
    detail::throw_no_cuda();
#endif
  } else {
    cpu::pairwise_forward(p);
  }
}

void pairwise_backward(const PairwiseBackwardParams& p) {
  check_metric(p.metric);
  detail::check_matmul_precision(p.precision);
  check_inputs(p.a_mean, p.a_logvar, p.b_mean, p.b_logvar, p.metric);
  const MatrixView& a = p.a_mean;
  const int64_t n = a.rows, m = p.b_mean.rows, d = a.cols;
  check_matrix(p.grad_out, "grad_out", n, m, "[N, M]", detail::accumulate_dtype(a.dtype),
               a.device, a.device_index);
  struct Out {
    const MatrixView& view;
    const char* name;
    int64_t rows;
    const char* doc;
  };
  for (const Out& o : {Out{p.grad_a_mean, "grad_a_mean", n, "[N, D]"},
                       Out{p.grad_a_logvar, "grad_a_logvar", n, "[N, D]"},
                       Out{p.grad_b_mean, "grad_b_mean", m, "[M, D]"},
                       Out{p.grad_b_logvar, "grad_b_logvar", m, "[M, D]"}}) {
    if (o.view.present()) check_matrix(o.view, o.name, o.rows, d, o.doc, a.dtype, a.device, a.device_index);
  }
  if (a.device == Device::CUDA) {
#ifdef PCMEKIT_WITH_CUDA
    cuda::pairwise_backward(p);
#else
    detail::throw_no_cuda();
#endif
  } else {
    cpu::pairwise_backward(p);
  }
}

}  // namespace pcmekit
