#include "dispatch.h"

namespace metaedge {

static void check_adapt_head(const Tensor& weights, const Tensor& velocity, const Tensor& support,
                             const Tensor& labels, int64_t steps, double lr, double momentum,
                             double weight_decay, double scale, const Tensor& losses) {
  check_ndim(weights, "weights", 2, "[C, d]");
  check_dtype(weights, "weights", {DType::kFloat32});
  if (weights.size(0) == 0) throw ArgumentError("`weights`: expected at least one class, got shape [0, d]");
  check_ndim(velocity, "velocity", 2, "[C, d]");
  check_dtype(velocity, "velocity", {DType::kFloat32});
  check_dim(velocity, "velocity", 0, weights.size(0), "rows of `weights`");
  check_dim(velocity, "velocity", 1, weights.size(1), "columns of `weights`");
  check_ndim(support, "support", 2, "[n, d]");
  check_dtype(support, "support", {DType::kFloat32});
  check_dim(support, "support", 1, weights.size(1), "the embedding dim of `weights`");
  check_ndim(labels, "labels", 1, "[n]");
  check_dtype(labels, "labels", {DType::kInt64});
  check_dim(labels, "labels", 0, support.size(0), "one label per row of `support`");
  if (steps < 0) throw ArgumentError("`steps`: expected >= 0, got " + std::to_string(steps));
  if (steps > 0 && support.size(0) == 0)
    throw ArgumentError("`support`: expected at least one support embedding to adapt on, got shape " +
                        shape_str(support.shape));
  check_non_negative(lr, "lr");  // lr = 0 evaluates the loss at the given weights
  if (!(momentum >= 0 && momentum < 1))
    throw ArgumentError("`momentum`: expected 0 <= momentum < 1, got " + std::to_string(momentum));
  check_non_negative(weight_decay, "weight_decay");
  check_positive(scale, "scale");
  check_ndim(losses, "losses", 1, "[steps]");
  check_dtype(losses, "losses", {DType::kFloat32});
  check_dim(losses, "losses", 0, steps, "`steps`");
  check_same_device(weights, "weights", velocity, "velocity");
  check_same_device(weights, "weights", support, "support");
  check_same_device(weights, "weights", labels, "labels");
  check_same_device(weights, "weights", losses, "losses");
  check_labels(labels, "labels", weights.size(0));
  check_finite(weights, "weights");
  check_finite(velocity, "velocity");
  check_finite(support, "support");
}

void adapt_head(const Tensor& weights, const Tensor& velocity, const Tensor& support, const Tensor& labels,
                int64_t steps, double lr, double momentum, double weight_decay, double scale,
                const Tensor& losses) {
  check_adapt_head(weights, velocity, support, labels, steps, lr, momentum, weight_decay, scale, losses);
  if (steps == 0) return;
  METAEDGE_DISPATCH(adapt_head, weights, weights, velocity, support, labels, steps, lr, momentum, weight_decay,
                    scale, losses);
}

}  // namespace metaedge
