// pcmekit._C.distance_bce and pcmekit._C.pairwise_bce: views in, core call, GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "bindings/views.h"
#include "pcmekit/bce.h"

namespace py = pybind11;
using pcmekit::bindings::to_view;
using pcmekit::bindings::ViewTuple;

namespace {

using Sums = std::tuple<double, double, double>;

Sums as_tuple(const pcmekit::DistanceBceResult& r) { return {r.loss, r.grad_scale, r.grad_shift}; }

// Returns (loss, dloss/dscale, dloss/dshift) on the CPU; dloss/ddistance goes into `grad`. On
// CUDA the three go to row 0 of `sums` (asynchronously) and the tuple is zeros.
Sums distance_bce_py(const ViewTuple& distance, const std::optional<ViewTuple>& target,
                     const ViewTuple& grad, double scale, double shift, bool mean, int num_threads,
                     uintptr_t stream, const std::optional<ViewTuple>& sums) {
  pcmekit::DistanceBceParams p;
  p.distance = to_view(distance, "distance");
  p.target = to_view(target, "target");
  p.grad = to_view(grad, "grad");
  p.scale = scale;
  p.shift = shift;
  p.mean = mean;
  p.num_threads = num_threads;
  p.sums = to_view(sums, "sums");
  p.stream = reinterpret_cast<void*>(stream);
  pcmekit::DistanceBceResult r;
  {
    py::gil_scoped_release release;
    r = pcmekit::distance_bce(p);
  }
  return as_tuple(r);
}

// The BCE on pairwise_distance(a, b): `out` receives dloss/ddistance; the rest as distance_bce.
Sums pairwise_bce_py(int metric, const ViewTuple& a_mean, const std::optional<ViewTuple>& a_logvar,
                     const ViewTuple& b_mean, const std::optional<ViewTuple>& b_logvar,
                     const ViewTuple& out, const std::optional<ViewTuple>& target, double scale,
                     double shift, bool mean, int num_threads, uintptr_t stream, int precision,
                     const std::optional<ViewTuple>& sums) {
  pcmekit::PairwiseBceParams p;
  p.forward.metric = static_cast<pcmekit::Metric>(metric);
  p.forward.precision = static_cast<pcmekit::MatmulPrecision>(precision);  // the core validates it
  p.forward.a_mean = to_view(a_mean, "a_mean");
  p.forward.a_logvar = to_view(a_logvar, "a_logvar");
  p.forward.b_mean = to_view(b_mean, "b_mean");
  p.forward.b_logvar = to_view(b_logvar, "b_logvar");
  p.forward.out = to_view(out, "out");
  p.forward.num_threads = num_threads;
  p.forward.stream = reinterpret_cast<void*>(stream);
  p.target = to_view(target, "target");
  p.scale = scale;
  p.shift = shift;
  p.mean = mean;
  p.sums = to_view(sums, "sums");
  pcmekit::DistanceBceResult r;
  {
    py::gil_scoped_release release;
    r = pcmekit::pairwise_bce(p);
  }
  return as_tuple(r);
}

}  // namespace

void register_bce(py::module_& m) {
  m.def("distance_bce", &distance_bce_py, py::arg("distance"), py::arg("target"), py::arg("grad"),
        py::arg("scale"), py::arg("shift"), py::arg("mean"), py::arg("num_threads"),
        py::arg("stream") = 0, py::arg("sums") = py::none());
  m.def("pairwise_bce", &pairwise_bce_py, py::arg("metric"), py::arg("a_mean"), py::arg("a_logvar"),
        py::arg("b_mean"), py::arg("b_logvar"), py::arg("out"), py::arg("target"), py::arg("scale"),
        py::arg("shift"), py::arg("mean"), py::arg("num_threads"), py::arg("stream") = 0,
        py::arg("precision") = 0, py::arg("sums") = py::none());
}
