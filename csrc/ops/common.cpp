// Tensor helpers and the argument checks shared by all ops (see checks.h).
#include <cmath>
#include <sstream>

#include "../cpu/cpu_kernels.h"
#include "metaedge/checks.h"
#include "metaedge/ops.h"
#include "metaedge/tensor.h"
#if METAEDGE_WITH_CUDA
#include "../cuda/cuda_kernels.h"
#endif

namespace metaedge {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kInt64: return "int64";
    case DType::kInt32: return "int32";
    case DType::kUInt8: return "uint8";
  }
  return "unknown";
}

int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kInt64: return 8;
    case DType::kInt32: return 4;
    case DType::kUInt8: return 1;
  }
  return 0;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

std::string Tensor::describe() const {
  return std::string(dtype_name(dtype)) + shape_str(shape) + (is_cuda() ? " on cuda" : " on cpu");
}

void check_ndim(const Tensor& t, const char* name, int64_t ndim, const char* layout) {
  if (t.ndim() != ndim) {
    throw ArgumentError(std::string("`") + name + "`: expected a " + std::to_string(ndim) + "-d array " +
                        layout + ", got shape " + shape_str(t.shape));
  }
}

void check_dtype(const Tensor& t, const char* name, std::initializer_list<DType> allowed) {
  for (DType d : allowed)
    if (t.dtype == d) return;
  std::string expected;
  for (DType d : allowed) expected += (expected.empty() ? "" : " or ") + std::string(dtype_name(d));
  throw ArgumentTypeError(std::string("`") + name + "`: expected dtype " + expected + ", got " +
                          dtype_name(t.dtype));
}

void check_dim(const Tensor& t, const char* name, int64_t axis, int64_t expected, const char* why) {
  if (t.size(axis) != expected) {
    throw ArgumentError(std::string("`") + name + "`: expected size " + std::to_string(expected) +
                        " along axis " + std::to_string(axis) + " (" + why + "), got shape " +
                        shape_str(t.shape));
  }
}

void check_same_device(const Tensor& a, const char* name_a, const Tensor& b, const char* name_b) {
  if (a.device != b.device || (a.is_cuda() && a.device_index != b.device_index)) {
    throw ArgumentError(std::string("`") + name_b + "` must be on the same device as `" + name_a +
                        "`: got " + b.describe() + " and " + a.describe());
  }
}

void check_finite(const Tensor& t, const char* name) {
  if (t.numel() == 0) return;
  int64_t bad = -1;
  if (t.is_cuda()) {
#if METAEDGE_WITH_CUDA
    bad = cuda::first_non_finite(t);
#else
    fail_cuda_not_built("check_finite");
#endif
  } else {
    bad = cpu::first_non_finite(t);
  }
  if (bad >= 0) {
    throw ArgumentError(std::string("`") + name + "`: expected finite values, got NaN or Inf at flat index " +
                        std::to_string(bad) + " of " + t.describe());
  }
}

void check_labels(const Tensor& labels, const char* name, int64_t num_classes) {
  if (labels.numel() == 0) return;
  int64_t bad = -1;
  if (labels.is_cuda()) {
#if METAEDGE_WITH_CUDA
    bad = cuda::first_label_out_of_range(labels, num_classes);
#else
    fail_cuda_not_built("check_labels");
#endif
  } else {
    bad = cpu::first_label_out_of_range(labels, num_classes);
  }
  if (bad >= 0) {
    std::string value;
    if (!labels.is_cuda()) value = " (value " + std::to_string(labels.ptr<int64_t>()[bad]) + ")";
    throw ArgumentError(std::string("`") + name + "`: expected labels in [0, " + std::to_string(num_classes) +
                        "), got an out-of-range label at index " + std::to_string(bad) + value);
  }
}

void check_positive(double value, const char* name) {
  if (!(value > 0) || !std::isfinite(value))
    throw ArgumentError(std::string("`") + name + "`: expected a finite value > 0, got " + std::to_string(value));
}

void check_non_negative(double value, const char* name) {
  if (!(value >= 0) || !std::isfinite(value))
    throw ArgumentError(std::string("`") + name + "`: expected a finite value >= 0, got " + std::to_string(value));
}

void check_finite_scalar(double value, const char* name) {
  if (!std::isfinite(value))
    throw ArgumentError(std::string("`") + name + "`: expected a finite value, got " + std::to_string(value));
}

void fail_cuda_not_built(const char* op) {
  throw ArgumentError(std::string(op) +
                      ": got CUDA arrays, but this metaedge was built without CUDA. Rebuild it with the CUDA "
                      "toolkit on PATH (or CUDA_HOME set): METAEDGE_CUDA=1 pip install --no-build-isolation .");
}

Metric parse_metric(const std::string& name) {
  if (name == "cosine") return Metric::kCosine;
  if (name == "dot") return Metric::kDot;
  if (name == "euclidean") return Metric::kEuclidean;
  throw ArgumentError("`metric`: expected 'cosine', 'dot' or 'euclidean', got '" + name + "'");
}

const char* metric_name(Metric metric) {
  switch (metric) {
    case Metric::kCosine: return "cosine";
    case Metric::kDot: return "dot";
    case Metric::kEuclidean: return "euclidean";
  }
  return "unknown";
}

}  // namespace metaedge
