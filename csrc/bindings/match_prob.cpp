// pcmekit._C.match_prob_forward / match_prob_backward: views in, core call, GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include "bindings/views.h"
#include "pcmekit/match_prob.h"

namespace py = pybind11;
using pcmekit::bindings::to_view;
using pcmekit::bindings::ViewTuple;

namespace {

using OptView = std::optional<ViewTuple>;

void match_prob_forward_py(const ViewTuple& a_mean, const ViewTuple& a_logvar,
                           const ViewTuple& b_mean, const ViewTuple& b_logvar,
                           const ViewTuple& eps_a, const ViewTuple& eps_b, int64_t num_samples,
                           double scale, double shift, bool squared, const ViewTuple& log_p,
                           const ViewTuple& log_q, int num_threads, uintptr_t stream, int precision) {
  pcmekit::MatchProbForwardParams p;
  p.a_mean = to_view(a_mean, "a_mean");
  p.a_logvar = to_view(a_logvar, "a_logvar");
  p.b_mean = to_view(b_mean, "b_mean");
  p.b_logvar = to_view(b_logvar, "b_logvar");
  p.eps_a = to_view(eps_a, "eps_a");
  p.eps_b = to_view(eps_b, "eps_b");
  p.num_samples = num_samples;
  p.scale = scale;
  p.shift = shift;
  p.squared = squared;
  p.log_p = to_view(log_p, "log_p");
  p.log_q = to_view(log_q, "log_q");
  p.num_threads = num_threads;
  p.stream = reinterpret_cast<void*>(stream);
  p.precision = static_cast<pcmekit::MatmulPrecision>(precision);
  py::gil_scoped_release release;
  pcmekit::match_prob_forward(p);
}

void match_prob_backward_py(const OptView& grad_log_p, const OptView& grad_log_q,
                            const ViewTuple& log_p, const ViewTuple& log_q,
                            const ViewTuple& a_mean, const ViewTuple& a_logvar,
                            const ViewTuple& b_mean, const ViewTuple& b_logvar,
                            const ViewTuple& eps_a, const ViewTuple& eps_b, int64_t num_samples,
                            double scale, double shift, bool squared, const OptView& grad_a_mean,
                            const OptView& grad_a_logvar, const OptView& grad_b_mean,
                            const OptView& grad_b_logvar, const OptView& grad_scale_shift,
                            int num_threads, uintptr_t stream, int precision) {
  pcmekit::MatchProbBackwardParams p;
  p.grad_log_p = to_view(grad_log_p, "grad_log_p");
  p.grad_log_q = to_view(grad_log_q, "grad_log_q");
  p.log_p = to_view(log_p, "log_p");
  p.log_q = to_view(log_q, "log_q");
  p.a_mean = to_view(a_mean, "a_mean");
  p.a_logvar = to_view(a_logvar, "a_logvar");
  p.b_mean = to_view(b_mean, "b_mean");
  p.b_logvar = to_view(b_logvar, "b_logvar");
  p.eps_a = to_view(eps_a, "eps_a");
  p.eps_b = to_view(eps_b, "eps_b");
  p.num_samples = num_samples;
  p.scale = scale;
  p.shift = shift;
  p.squared = squared;
  p.grad_a_mean = to_view(grad_a_mean, "grad_a_mean");
  p.grad_a_logvar = to_view(grad_a_logvar, "grad_a_logvar");
  p.grad_b_mean = to_view(grad_b_mean, "grad_b_mean");
  p.grad_b_logvar = to_view(grad_b_logvar, "grad_b_logvar");
  p.grad_scale_shift = to_view(grad_scale_shift, "grad_scale_shift");
  p.num_threads = num_threads;
  p.stream = reinterpret_cast<void*>(stream);
  p.precision = static_cast<pcmekit::MatmulPrecision>(precision);
  py::gil_scoped_release release;
  pcmekit::match_prob_backward(p);
}

}  // namespace

void register_match_prob(py::module_& m) {
  m.def("match_prob_forward", &match_prob_forward_py, py::arg("a_mean"), py::arg("a_logvar"),
        py::arg("b_mean"), py::arg("b_logvar"), py::arg("eps_a"), py::arg("eps_b"),
        py::arg("num_samples"), py::arg("scale"), py::arg("shift"), py::arg("squared"),
        py::arg("log_p"), py::arg("log_q"), py::arg("num_threads"), py::arg("stream"), py::arg("precision") = 0);
  m.def("match_prob_backward", &match_prob_backward_py, py::arg("grad_log_p"),
        py::arg("grad_log_q"), py::arg("log_p"), py::arg("log_q"), py::arg("a_mean"),
        py::arg("a_logvar"), py::arg("b_mean"), py::arg("b_logvar"), py::arg("eps_a"),
        py::arg("eps_b"), py::arg("num_samples"), py::arg("scale"), py::arg("shift"),
        py::arg("squared"), py::arg("grad_a_mean"), py::arg("grad_a_logvar"),
        py::arg("grad_b_mean"), py::arg("grad_b_logvar"), py::arg("grad_scale_shift"),
        py::arg("num_threads"), py::arg("stream"), py::arg("precision") = 0);
}
