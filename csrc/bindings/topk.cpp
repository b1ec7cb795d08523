// pcmekit._C.topk / topk_workspace_bytes: views in, core call, GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <tuple>

#include "bindings/views.h"
#include "pcmekit/topk.h"

namespace py = pybind11;
using pcmekit::bindings::to_view;
using pcmekit::bindings::ViewTuple;

namespace {

using OptView = std::optional<ViewTuple>;

// score: 0 = distance (`metric` is a metric code), 1 = match probability.
pcmekit::TopkParams make_params(int score, int metric, const ViewTuple& q_mean,
                                const OptView& q_logvar, const ViewTuple& g_mean,
                                const OptView& g_logvar, const OptView& eps_q,
                                const OptView& eps_g, int64_t num_samples, double scale,
                                double shift, bool squared, int64_t k, int precision) {
  pcmekit::TopkParams p;
  p.score = static_cast<pcmekit::TopkScore>(score);
  p.metric = static_cast<pcmekit::Metric>(metric);
  p.q_mean = to_view(q_mean, "q_mean");
  p.q_logvar = to_view(q_logvar, "q_logvar");
  p.g_mean = to_view(g_mean, "g_mean");
  p.g_logvar = to_view(g_logvar, "g_logvar");
  p.eps_q = to_view(eps_q, "eps_q");
  p.eps_g = to_view(eps_g, "eps_g");
  p.num_samples = num_samples;
  p.scale = scale;
  p.shift = shift;
  p.squared = squared;
  p.k = k;
  p.precision = static_cast<pcmekit::MatmulPrecision>(precision);  // the core checks the code
  return p;
}

void topk_py(int score, int metric, const ViewTuple& q_mean, const OptView& q_logvar,
             const ViewTuple& g_mean, const OptView& g_logvar, const OptView& eps_q,
             const OptView& eps_g, int64_t num_samples, double scale, double shift, bool squared,
             int64_t k, const ViewTuple& values, const ViewTuple& indices, uintptr_t workspace,
             int64_t workspace_bytes, int num_threads, uintptr_t stream, const OptView& g_packed,
             const OptView& g_terms, int64_t g_layout_tag, int precision) {
  pcmekit::TopkParams p = make_params(score, metric, q_mean, q_logvar, g_mean, g_logvar, eps_q,
                                      eps_g, num_samples, scale, shift, squared, k, precision);
  p.g_packed = to_view(g_packed, "g_packed");
  p.g_terms = to_view(g_terms, "g_terms");
  p.g_layout_tag = g_layout_tag;
  p.values = to_view(values, "values");
  p.indices = to_view(indices, "indices");
  p.workspace = reinterpret_cast<void*>(workspace);
  p.workspace_bytes = workspace_bytes;
  p.num_threads = num_threads;
  p.stream = reinterpret_cast<void*>(stream);
  py::gil_scoped_release release;
  pcmekit::topk(p);
}

int64_t topk_workspace_bytes_py(int score, int metric, const ViewTuple& q_mean,
                                const OptView& q_logvar, const ViewTuple& g_mean,
                                const OptView& g_logvar, int64_t num_samples, int64_t k,
                                int precision) {
  const pcmekit::TopkParams p = make_params(score, metric, q_mean, q_logvar, g_mean, g_logvar,
                                            std::nullopt, std::nullopt, num_samples, 1.0, 0.0,
                                            false, k, precision);
  return pcmekit::topk_workspace_bytes(p);
}

// (packed elements, layout tag) of a prepared gallery.
std::tuple<int64_t, int64_t> topk_prepared_layout_py(int metric, int dtype, int64_t n, int64_t d) {
  const pcmekit::TopkPreparedLayout l = pcmekit::topk_prepared_layout(
      static_cast<pcmekit::Metric>(metric), static_cast<pcmekit::DType>(dtype), n, d);
  return {l.packed_elements, l.tag};
}

void topk_prepare_gallery_py(int metric, const ViewTuple& g_mean, const OptView& g_logvar,
                             const ViewTuple& packed, const ViewTuple& terms, int num_threads) {
  pcmekit::TopkPrepareParams p;
  p.metric = static_cast<pcmekit::Metric>(metric);
  p.g_mean = to_view(g_mean, "g_mean");
  p.g_logvar = to_view(g_logvar, "g_logvar");
  p.packed = to_view(packed, "packed");
  p.terms = to_view(terms, "terms");
  p.num_threads = num_threads;
  py::gil_scoped_release release;
  pcmekit::topk_prepare_gallery(p);
}

}  // namespace

void register_topk(py::module_& m) {
  m.def("topk", &topk_py, py::arg("score"), py::arg("metric"), py::arg("q_mean"),
        py::arg("q_logvar"), py::arg("g_mean"), py::arg("g_logvar"), py::arg("eps_q"),
        py::arg("eps_g"), py::arg("num_samples"), py::arg("scale"), py::arg("shift"),
        py::arg("squared"), py::arg("k"), py::arg("values"), py::arg("indices"),
        py::arg("workspace"), py::arg("workspace_bytes"), py::arg("num_threads"),
        py::arg("stream"), py::arg("g_packed") = std::nullopt, py::arg("g_terms") = std::nullopt,
        py::arg("g_layout_tag") = 0, py::arg("precision") = 0);
  m.def("topk_prepared_layout", &topk_prepared_layout_py, py::arg("metric"), py::arg("dtype"),
        py::arg("n"), py::arg("d"));
  m.def("topk_prepare_gallery", &topk_prepare_gallery_py, py::arg("metric"), py::arg("g_mean"),
        py::arg("g_logvar"), py::arg("packed"), py::arg("terms"), py::arg("num_threads"));
  m.def("topk_workspace_bytes", &topk_workspace_bytes_py, py::arg("score"), py::arg("metric"),
        py::arg("q_mean"), py::arg("q_logvar"), py::arg("g_mean"), py::arg("g_logvar"),
        py::arg("num_samples"), py::arg("k"), py::arg("precision") = 0);
}
