// Shared by the binding files: the Python-side description of an array, turned into a core view.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>

#include "pcmekit/view.h"

namespace pcmekit::bindings {

// (data_ptr, rows, cols, row_stride, col_stride, dtype code, device code, device index), as built
// by pcmekit._core.matrix_view; None for an absent array.
using ViewTuple = std::tuple<uintptr_t, int64_t, int64_t, int64_t, int64_t, int, int, int>;

inline MatrixView to_view(const std::optional<ViewTuple>& t, const char* name) {
  MatrixView v;
  if (!t) return v;
  const auto& [ptr, rows, cols, rs, cs, dtype, device, index] = *t;
  if (dtype < 0 || dtype > static_cast<int>(DType::Int64))
    throw TypeError(std::string(name) + ": unknown dtype code " + std::to_string(dtype));
  if (device < 0 || device > static_cast<int>(Device::CUDA))
    throw std::invalid_argument(std::string(name) + ": unknown device code " + std::to_string(device));
  v.data = reinterpret_cast<void*>(ptr);
  v.rows = rows;
  v.cols = cols;
  v.row_stride = rs;
  v.col_stride = cs;
  v.dtype = static_cast<DType>(dtype);
  v.device = static_cast<Device>(device);
  v.device_index = index;
  return v;
}

}  // namespace pcmekit::bindings

// Per-op registration, one binding file each; called from PYBIND11_MODULE in module.cpp.
void register_match_prob(pybind11::module_& m);  // bindings/match_prob.cpp
void register_topk(pybind11::module_& m);        // bindings/topk.cpp
void register_adamp(pybind11::module_& m);       // bindings/adamp.cpp
void register_bce(pybind11::module_& m);         // bindings/bce.cpp
