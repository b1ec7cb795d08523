// pcmekit._C.adamp_step: lists of views in, one core call for all of them, GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "bindings/views.h"
#include "pcmekit/adamp.h"

namespace py = pybind11;
using pcmekit::bindings::to_view;
using pcmekit::bindings::ViewTuple;

namespace {

std::vector<int> adamp_step_py(int algorithm, const std::vector<ViewTuple>& params,
                               const std::vector<ViewTuple>& grads,
                               const std::vector<ViewTuple>& exp_avgs,
                               const std::optional<std::vector<ViewTuple>>& exp_avg_sqs,
                               const std::vector<int64_t>& steps,
                               const std::vector<bool>& projectable, double lr, double beta1,
                               double beta2, double momentum, double dampening, double eps,
                               double weight_decay, double delta, double wd_ratio, bool nesterov,
                               int num_threads) {
  const size_t n = params.size();
  auto check_length = [n](size_t got, const char* name) {
    if (got != n)
      throw std::invalid_argument(std::string(name) + " must have one entry per parameter (" +
                                  std::to_string(n) + "), got " + std::to_string(got));
  };
  check_length(grads.size(), "grads");
  check_length(exp_avgs.size(), "exp_avgs");
  if (exp_avg_sqs) check_length(exp_avg_sqs->size(), "exp_avg_sqs");
  check_length(steps.size(), "steps");
  check_length(projectable.size(), "projectable");
  std::vector<pcmekit::AdamPTensor> tensors(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string at = "tensors[" + std::to_string(i) + "].";
    pcmekit::AdamPTensor& t = tensors[i];
    t.param = to_view(params[i], (at + "param").c_str());
    t.grad = to_view(grads[i], (at + "grad").c_str());
    t.exp_avg = to_view(exp_avgs[i], (at + "exp_avg").c_str());
    if (exp_avg_sqs) t.exp_avg_sq = to_view((*exp_avg_sqs)[i], (at + "exp_avg_sq").c_str());
    t.step = steps[i];
    t.projectable = projectable[i];
  }
  std::vector<pcmekit::Projection> outcome(n, pcmekit::Projection::None);
  pcmekit::AdamPStepParams p;
  p.algorithm = static_cast<pcmekit::ProjectedOptimizer>(algorithm);
  p.tensors = tensors.data();
  p.count = static_cast<int64_t>(n);
  p.lr = lr;
  p.beta1 = beta1;
  p.beta2 = beta2;
  p.momentum = momentum;
  p.dampening = dampening;
  p.eps = eps;
  p.weight_decay = weight_decay;
  p.delta = delta;
  p.wd_ratio = wd_ratio;
  p.nesterov = nesterov;
  p.projections = outcome.data();
  p.num_threads = num_threads;
  {
    py::gil_scoped_release release;
    pcmekit::adamp_step(p);
  }
  std::vector<int> codes(n);
  for (size_t i = 0; i < n; ++i) codes[i] = static_cast<int>(outcome[i]);
  return codes;
}

}  // namespace

void register_adamp(py::module_& m) {
  m.def("adamp_step", &adamp_step_py, py::arg("algorithm"), py::arg("params"), py::arg("grads"),
        py::arg("exp_avgs"), py::arg("exp_avg_sqs"), py::arg("steps"), py::arg("projectable"),
        py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("momentum"),
        py::arg("dampening"), py::arg("eps"), py::arg("weight_decay"), py::arg("delta"),
        py::arg("wd_ratio"), py::arg("nesterov"), py::arg("num_threads"));
}
