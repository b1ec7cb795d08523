// pcmekit._C: turns Python-side array descriptions into core views and calls the core.
//
// It registers functions and converts errors; it implements nothing. The GIL is released
// around every kernel.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <thread>
#include <tuple>

#include "bindings/views.h"
#include "cpu/gemm.h"
#include "cpu/parallel.h"
#include "cpu/peak.h"
#include "pcmekit/bce.h"
#include "pcmekit/pairwise.h"
#include "pcmekit/topk.h"
#ifdef PCMEKIT_WITH_CUDA
#include "cuda/device.h"
#endif

namespace py = pybind11;
using namespace pcmekit;

namespace {

using bindings::ViewTuple;
using bindings::to_view;

Metric to_metric(int code) { return static_cast<Metric>(code); }

void pairwise_forward_py(int metric, const ViewTuple& a_mean, const std::optional<ViewTuple>& a_logvar,
                         const ViewTuple& b_mean, const std::optional<ViewTuple>& b_logvar,
                         const ViewTuple& out, int num_threads, uintptr_t stream, int precision) {
  PairwiseForwardParams p;
  p.precision = static_cast<MatmulPrecision>(precision);  // the core validates the code
  p.metric = to_metric(metric);
  p.a_mean = to_view(a_mean, "a_mean");
  p.a_logvar = to_view(a_logvar, "a_logvar");
  p.b_mean = to_view(b_mean, "b_mean");
  p.b_logvar = to_view(b_logvar, "b_logvar");
  p.out = to_view(out, "out");
  p.num_threads = num_threads;
  p.stream = reinterpret_cast<void*>(stream);
  py::gil_scoped_release release;
  pairwise_forward(p);
}

void pairwise_backward_py(int metric, const ViewTuple& grad_out, const ViewTuple& a_mean,
                          const std::optional<ViewTuple>& a_logvar, const ViewTuple& b_mean,
                          const std::optional<ViewTuple>& b_logvar,
                          const std::optional<ViewTuple>& grad_a_mean,
                          const std::optional<ViewTuple>& grad_a_logvar,
                          const std::optional<ViewTuple>& grad_b_mean,
                          const std::optional<ViewTuple>& grad_b_logvar, int num_threads,
                          uintptr_t stream, int precision) {
  PairwiseBackwardParams p;
  p.precision = static_cast<MatmulPrecision>(precision);  // the core validates the code
  p.metric = to_metric(metric);
  p.grad_out = to_view(grad_out, "grad_out");
  p.a_mean = to_view(a_mean, "a_mean");
  p.a_logvar = to_view(a_logvar, "a_logvar");
  p.b_mean = to_view(b_mean, "b_mean");
  p.b_logvar = to_view(b_logvar, "b_logvar");
  p.grad_a_mean = to_view(grad_a_mean, "grad_a_mean");
  p.grad_a_logvar = to_view(grad_a_logvar, "grad_a_logvar");
  p.grad_b_mean = to_view(grad_b_mean, "grad_b_mean");
  p.grad_b_logvar = to_view(grad_b_logvar, "grad_b_logvar");
  p.num_threads = num_threads;
  p.stream = reinterpret_cast<void*>(stream);
  py::gil_scoped_release release;
  pairwise_backward(p);
}

py::dict build_config() {
  py::dict info;
  info["version"] = PCMEKIT_VERSION;
#ifdef PCMEKIT_WITH_CUDA
  info["cuda_compiled"] = true;
  info["cuda_archs"] = std::string(PCMEKIT_CUDA_ARCHS);
  info["cuda_runtime"] = cuda::runtime_version_string();
#ifdef PCMEKIT_CUDA_EMU
  // The CUDA back end runs on the CPU emulator of tests/cuemu: CPU memory is its device memory.
  info["cuda_emulated"] = true;
#else
  info["cuda_emulated"] = false;
#endif
#else
  info["cuda_emulated"] = false;
  info["cuda_compiled"] = false;
  info["cuda_archs"] = std::string();
  info["cuda_runtime"] = py::none();
#endif
  info["cpu_simd"] = cpu::simd_path();
  info["cpu_threading"] = cpu::detail::threading_backend();
  info["hardware_threads"] = std::thread::hardware_concurrency();
  // The core's limits, published so that the Python layer and its docs never restate them.
  info["cuda_max_topk"] = kCudaMaxTopk;
  info["cuda_bce_sums_rows"] = kBceSumsRows;
  return info;
}

// Measured multiply-add rate of one ISA on `threads` threads at once (pcmekit.bench.peak).
py::dict fma_peak(const std::string& isa, bool double_precision, int threads, double seconds) {
  cpu::Isa which;
  if (isa == "avx512") {
    which = cpu::Isa::avx512;
  } else if (isa == "avx2") {
    which = cpu::Isa::avx2;
  } else if (isa == "generic") {
    which = cpu::Isa::generic;
  } else {
    throw py::value_error("isa must be 'avx512', 'avx2' or 'generic', got '" + isa + "'");
  }
  cpu::FmaPeak peak;
  {
    py::gil_scoped_release release;
    peak = cpu::measure_fma_peak(which, double_precision, threads, seconds);
  }
  py::dict out;
  out["gflops"] = peak.gflops;
  out["seconds"] = peak.seconds;
  out["flops"] = peak.flops;
  out["threads"] = peak.threads;
  return out;
}

// The ISAs this CPU supports, whatever PCMEKIT_CPU_CAPABILITY says (the cap only picks the
// kernels' path; a benchmark may still measure every path).
py::list supported_isas() {
  py::list out;
  for (cpu::Isa isa : {cpu::Isa::generic, cpu::Isa::avx2, cpu::Isa::avx512})
    if (cpu::isa_supported(isa)) out.append(cpu::isa_name(isa));
  return out;
}

int cuda_device_count() {
#if defined(PCMEKIT_CUDA_EMU)
  return 0;  // the emulated device runs on CPU memory; torch has no CUDA tensors for it
#elif defined(PCMEKIT_WITH_CUDA)
  return cuda::device_count();
#else
  return 0;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pcmekit's compiled core (internal; use the pcmekit package)";
  py::register_exception<TypeError>(m, "CoreTypeError", PyExc_TypeError);

  m.def("pairwise_forward", &pairwise_forward_py, py::arg("metric"), py::arg("a_mean"),
        py::arg("a_logvar"), py::arg("b_mean"), py::arg("b_logvar"), py::arg("out"),
        py::arg("num_threads"), py::arg("stream"), py::arg("precision") = 0);
  m.def("pairwise_backward", &pairwise_backward_py, py::arg("metric"), py::arg("grad_out"),
        py::arg("a_mean"), py::arg("a_logvar"), py::arg("b_mean"), py::arg("b_logvar"),
        py::arg("grad_a_mean"), py::arg("grad_a_logvar"), py::arg("grad_b_mean"),
        py::arg("grad_b_logvar"), py::arg("num_threads"), py::arg("stream"),
        py::arg("precision") = 0);
  register_match_prob(m);
  register_topk(m);
  register_adamp(m);
  register_bce(m);
  m.def("build_config", &build_config);
  m.def("cuda_device_count", &cuda_device_count);
  m.def("fma_peak", &fma_peak, py::arg("isa"), py::arg("double_precision"), py::arg("threads"),
        py::arg("seconds"));
  m.def("supported_isas", &supported_isas);
}
