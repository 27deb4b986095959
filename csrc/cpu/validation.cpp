// Scans behind check_finite / check_labels for host memory.
#include <cmath>
#include <cstring>

#include "cpu_kernels.h"

namespace metaedge::cpu {

int64_t first_non_finite(const Tensor& t) {
  const int64_t n = t.numel();
  if (t.dtype == DType::kFloat32) {
    const float* x = t.ptr<float>();
    // Fast path: x * 0 is 0 for finite x and NaN otherwise, so one vectorised sum finds whether to look.
    float probe = 0.f;
#pragma omp simd reduction(+ : probe)
    for (int64_t i = 0; i < n; ++i) probe += x[i] * 0.f;
    if (probe == 0.f) return -1;
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(x[i])) return i;
    return -1;
  }
  if (t.dtype == DType::kFloat16) {
    const uint16_t* x = t.ptr<uint16_t>();
    for (int64_t i = 0; i < n; ++i)
      if ((x[i] & 0x7c00u) == 0x7c00u) return i;  // exponent all ones: Inf or NaN
    return -1;
  }
  return -1;  // integer tensors are always finite
}

int64_t first_label_out_of_range(const Tensor& labels, int64_t num_classes) {
  const int64_t* y = labels.ptr<int64_t>();
  const int64_t n = labels.numel();
  for (int64_t i = 0; i < n; ++i)
    if (y[i] < 0 || y[i] >= num_classes) return i;
  return -1;
}

}  // namespace metaedge::cpu
