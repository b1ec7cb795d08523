// Front end of the top-k op: validate the views and k, then run on the inputs' device.
#include "pcmekit/topk.h"

#include <cmath>

#include "core/checks.h"

namespace pcmekit {
namespace {

using detail::check_matrix;

void check_inputs(const TopkParams& p) {
  const MatrixView& q = p.q_mean;
  const int64_t nq = q.rows, n = p.g_mean.rows, d = q.cols;
  const DType dt = q.dtype;
  const Device dev = q.device;
  const int idx = q.device_index;
  const bool match = p.score == TopkScore::MatchProb;
  PCMEKIT_CHECK(p.score == TopkScore::Distance || match, "unknown top-k score code ",
                static_cast<int>(p.score));
  const int metric_code = static_cast<int>(p.metric);
  PCMEKIT_CHECK(match || (metric_code >= 0 && metric_code <= static_cast<int>(kLastMetric)),
                "unknown metric code ", metric_code);
  PCMEKIT_CHECK_TYPE(dt != DType::Int64, "q_mean must be floating point (float32 or float64), got int64");
  PCMEKIT_CHECK_TYPE(dev != Device::CPU || !detail::is_half(dt), "q_mean has dtype ", dtype_name(dt),
                     ", which pcmekit supports on CUDA only; use float32 or float64 on the CPU");
  PCMEKIT_CHECK_TYPE(!match || dt == DType::Float32 || dt == DType::Float64, "q_mean has dtype ",
                     dtype_name(dt), "; match_prob top-k computes in float32 or float64");
  check_matrix(q, "q_mean", nq, d, "[Q, D]", dt, dev, idx);
  check_matrix(p.g_mean, "g_mean", n, d, "[N, D]", dt, dev, idx);
  const bool need_logvar = match || metric_needs_logvar(p.metric);
  if (need_logvar || p.q_logvar.present())
    check_matrix(p.q_logvar, "q_logvar", nq, d, "[Q, D]", dt, dev, idx);
  if (need_logvar || p.g_logvar.present())
    check_matrix(p.g_logvar, "g_logvar", n, d, "[N, D]", dt, dev, idx);
  PCMEKIT_CHECK(!need_logvar || ((p.q_logvar.present() || nq * d == 0) && (p.g_logvar.present() || n * d == 0)),
                match ? std::string("match_prob") : detail::concat("metric '", metric_name(p.metric), "'"),
                " needs q_logvar and g_logvar");
  if (match) {
    PCMEKIT_CHECK(p.num_samples >= 1, "num_samples must be >= 1, got ", p.num_samples);
    PCMEKIT_CHECK(std::isfinite(p.scale), "scale must be finite, got ", p.scale);
    PCMEKIT_CHECK(std::isfinite(p.shift), "shift must be finite, got ", p.shift);
    check_matrix(p.eps_q, "eps_q", nq * p.num_samples, d, "[Q * J, D]", dt, dev, idx);
    check_matrix(p.eps_g, "eps_g", n * p.num_samples, d, "[N * J, D]", dt, dev, idx);
  }
  PCMEKIT_CHECK(p.k >= 1 && p.k <= n, "k must be between 1 and the gallery size N = ", n, ", got ", p.k);
  PCMEKIT_CHECK(dev != Device::CUDA || p.k <= kCudaMaxTopk, "k must be at most ", kCudaMaxTopk,
                " on CUDA, got ", p.k, "; search on the CPU or in several passes");
}

}  // namespace

int64_t topk_workspace_bytes(const TopkParams& p) {
  if (p.q_mean.device != Device::CUDA) return 0;
#ifdef PCMEKIT_WITH_CUDA
  return cuda::topk_workspace_bytes(p);
#else
  detail::throw_no_cuda();
#endif
}

void topk(const TopkParams& p) {
  check_inputs(p);
  const MatrixView& q = p.q_mean;
  check_matrix(p.values, "values", q.rows, p.k, "[Q, k]", detail::accumulate_dtype(q.dtype),
               q.device, q.device_index);
  check_matrix(p.indices, "indices", q.rows, p.k, "[Q, k]", DType::Int64, q.device,
               q.device_index);
  if (q.device == Device::CUDA) {
#ifdef PCMEKIT_WITH_CUDA
    const int64_t need = cuda::topk_workspace_bytes(p);
    PCMEKIT_CHECK(need <= 0 || (p.workspace != nullptr && p.workspace_bytes >= need),
                  "workspace must hold ", need, " bytes, got ",
                  p.workspace == nullptr ? 0 : p.workspace_bytes);
    cuda::topk(p);
#else
    detail::throw_no_cuda();
#endif
  } else {
    cpu::topk(p);
  }
}

}  // namespace pcmekit
