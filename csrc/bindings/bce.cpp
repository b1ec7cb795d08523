// pcmekit._C.distance_bce: views in, core call, GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <tuple>

#include "bindings/views.h"
#include "pcmekit/bce.h"

namespace py = pybind11;
using pcmekit::bindings::to_view;
using pcmekit::bindings::ViewTuple;

namespace {

// Returns (loss, dloss/dscale, dloss/dshift); dloss/ddistance goes into `grad`.
std::tuple<double, double, double> distance_bce_py(const ViewTuple& distance,
                                                   const std::optional<ViewTuple>& target,
                                                   const ViewTuple& grad, double scale,
                                                   double shift, bool mean, int num_threads) {
  pcmekit::DistanceBceParams p;
  p.distance = to_view(distance, "distance");
  p.target = to_view(target, "target");
  p.grad = to_view(grad, "grad");
  p.scale = scale;
  p.shift = shift;
  p.mean = mean;
  p.num_threads = num_threads;
  pcmekit::DistanceBceResult r;
  {
    py::gil_scoped_release release;
    r = pcmekit::distance_bce(p);
  }
  return {r.loss, r.grad_scale, r.grad_shift};
}

}  // namespace

void register_bce(py::module_& m) {
  m.def("distance_bce", &distance_bce_py, py::arg("distance"), py::arg("target"), py::arg("grad"),
        py::arg("scale"), py::arg("shift"), py::arg("mean"), py::arg("num_threads"));
}
