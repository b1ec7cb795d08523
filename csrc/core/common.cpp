#include <sstream>

#include "pcmekit/metrics.h"
#include "pcmekit/view.h"

namespace pcmekit {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int64: return "int64";
  }
  return "unknown dtype";
}

const char* device_name(Device device) {
  switch (device) {
    case Device::CPU: return "cpu";
    case Device::CUDA: return "cuda";
  }
  return "unknown device";
}

const char* metric_name(Metric metric) {
  switch (metric) {
    case Metric::CSD: return "csd";
    case Metric::W2: return "w2";
    case Metric::L2: return "l2";
    case Metric::KL: return "kl";
    case Metric::Bhattacharyya: return "bhattacharyya";
    case Metric::ELK: return "elk";
    case Metric::Inclusion: return "inclusion";
  }
  return "unknown metric";
}

std::string MatrixView::shape_string() const {
  std::ostringstream s;
  s << "[" << rows << ", " << cols << "]";
  return s.str();
}

}  // namespace pcmekit
