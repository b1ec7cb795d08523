// Front end of the top-k op: validate the views and k, then run on the inputs' device.
#include "pcmekit/topk.h"

#include <cmath>
#include <cstdint>

#include "core/checks.h"

namespace pcmekit {
namespace {

using detail::check_matrix;

// The micro-kernels read packed panels with aligned vector loads.
void check_packed_alignment(const MatrixView& v, const char* name) {
  PCMEKIT_CHECK(v.empty() || (v.col_stride == 1 && reinterpret_cast<uintptr_t>(v.data) % 64 == 0),
                name, " must be contiguous and 64-byte aligned (a fresh torch CPU tensor is)");
}

// The gallery's prepared form must be the one topk_prepare_gallery makes for this metric, dtype,
// shape and SIMD path: a packing of another is not a gallery the kernel could read.
void check_prepared(const TopkParams& p) {
  const MatrixView& g = p.g_mean;
  PCMEKIT_CHECK(g.device == Device::CPU, "a prepared gallery (g_packed, g_terms) is CPU only, got ",
                device_name(g.device), " tensors");
  PCMEKIT_CHECK(p.score == TopkScore::Distance && has_inner_product_metric(p.metric),
                "a prepared gallery (g_packed, g_terms) serves csd, w2, l2 and kl, not ",
                p.score == TopkScore::MatchProb ? "match_prob" : metric_name(p.metric));
  const TopkPreparedLayout layout = cpu::topk_prepared_layout(p.metric, g.dtype, g.rows, g.cols);
  check_matrix(p.g_packed, "g_packed", 1, layout.packed_elements, "[1, packed elements]", g.dtype,
               g.device, g.device_index);
  check_matrix(p.g_terms, "g_terms", g.rows, 1, "[N, 1]", g.dtype, g.device, g.device_index);
  check_packed_alignment(p.g_packed, "g_packed");
  // The kernel reads the terms as one array, as topk_prepare_gallery writes them.
  PCMEKIT_CHECK(g.rows <= 1 || p.g_terms.row_stride == 1,
                "g_terms must be contiguous ([N, 1] with row stride 1, as topk_prepare_gallery "
                "writes it), got row stride ", p.g_terms.row_stride);
  PCMEKIT_CHECK(p.g_layout_tag == layout.tag, "g_packed was packed with layout tag ",
                p.g_layout_tag, ", but this process's kernels read layout ", layout.tag,
                " (another SIMD path or version): prepare the gallery again");
}

void check_inputs(const TopkParams& p) {
  const MatrixView& q = p.q_mean;
  const int64_t nq = q.rows, n = p.g_mean.rows, d = q.cols;
  const DType dt = q.dtype;
  const Device dev = q.device;
  const int idx = q.device_index;
  const bool match = p.score == TopkScore::MatchProb;
  PCMEKIT_CHECK(p.score == TopkScore::Distance || match, "unknown top-k score code ",
                static_cast<int>(p.score));
  detail::check_matmul_precision(p.precision);
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
  if (p.g_packed.present() || p.g_terms.present()) check_prepared(p);
  PCMEKIT_CHECK(p.k >= 1 && p.k <= n, "k must be between 1 and the gallery size N = ", n, ", got ", p.k);
  PCMEKIT_CHECK(dev != Device::CUDA || p.k <= kCudaMaxTopk, "k must be at most ", kCudaMaxTopk,
                " on CUDA, got ", p.k, "; search on the CPU or in several passes");
}

}  // namespace

TopkPreparedLayout topk_prepared_layout(Metric metric, DType dtype, int64_t n, int64_t d) {
  PCMEKIT_CHECK(has_inner_product_metric(metric),
                "a prepared gallery serves csd, w2, l2 and kl, not ", metric_name(metric));
  PCMEKIT_CHECK_TYPE(dtype == DType::Float32 || dtype == DType::Float64,
                     "a prepared gallery is float32 or float64, got ", dtype_name(dtype));
  PCMEKIT_CHECK(n >= 0 && d >= 0, "gallery shape must be non-negative, got [", n, ", ", d, "]");
  return cpu::topk_prepared_layout(metric, dtype, n, d);
}

void topk_prepare_gallery(const TopkPrepareParams& p) {
  const MatrixView& g = p.g_mean;
  PCMEKIT_CHECK(g.device == Device::CPU, "topk_prepare_gallery: g_mean must be on the CPU, got ",
                device_name(g.device));
  const TopkPreparedLayout layout = topk_prepared_layout(p.metric, g.dtype, g.rows, g.cols);
  check_matrix(g, "g_mean", g.rows, g.cols, "[N, D]", g.dtype, g.device, g.device_index);
  const bool need_logvar = metric_needs_logvar(p.metric);
  if (need_logvar || p.g_logvar.present())
    check_matrix(p.g_logvar, "g_logvar", g.rows, g.cols, "[N, D]", g.dtype, g.device,
                 g.device_index);
  PCMEKIT_CHECK(!need_logvar || p.g_logvar.present() || g.rows * g.cols == 0, "metric '",
                metric_name(p.metric), "' needs g_logvar");
  check_matrix(p.packed, "packed", 1, layout.packed_elements, "[1, packed elements]", g.dtype,
               g.device, g.device_index);
  check_matrix(p.terms, "terms", g.rows, 1, "[N, 1]", g.dtype, g.device, g.device_index);
  check_packed_alignment(p.packed, "packed");
  cpu::topk_prepare_gallery(p);
}

int64_t topk_workspace_bytes(const TopkParams& p) {
  detail::check_matmul_precision(p.precision);
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
