#include "dispatch.h"

namespace metaedge {

static void check_l2_normalize(const Tensor& x, const Tensor& out, double eps) {
  check_ndim(x, "x", 2, "[n, d]");
  check_dtype(x, "x", {DType::kFloat32});
  check_ndim(out, "out", 2, "[n, d]");
  check_dtype(out, "out", {DType::kFloat32});
  check_same_device(x, "x", out, "out");
  check_dim(out, "out", 0, x.size(0), "rows of `x`");
  check_dim(out, "out", 1, x.size(1), "columns of `x`");
  check_positive(eps, "eps");
  check_finite(x, "x");
}

void l2_normalize(const Tensor& x, const Tensor& out, double eps) {
  check_l2_normalize(x, out, eps);
  if (x.numel() == 0) return;
  METAEDGE_DISPATCH(l2_normalize, x, x, out, eps);
}

}  // namespace metaedge
