#include "dispatch.h"

namespace metaedge {

void check_topk_k(int64_t k, int64_t classes) {
  if (k < 1 || k > classes)
    throw ArgumentError("`k`: expected 1 <= k <= number of classes (" + std::to_string(classes) + "), got " +
                        std::to_string(k));
}

void check_topk_outputs(const Tensor& scores, const Tensor& indices, int64_t b, int64_t k) {
  check_ndim(scores, "scores", 2, "[b, k]");
  check_dtype(scores, "scores", {DType::kFloat32});
  check_dim(scores, "scores", 0, b, "rows of `queries`");
  check_dim(scores, "scores", 1, k, "`k`");
  check_ndim(indices, "indices", 2, "[b, k]");
  check_dtype(indices, "indices", {DType::kInt64});
  check_dim(indices, "indices", 0, b, "rows of `queries`");
  check_dim(indices, "indices", 1, k, "`k`");
}

static void check_topk(const Tensor& queries, const Tensor& protos, int64_t k, const Tensor& scores,
                       const Tensor& indices) {
  check_ndim(queries, "queries", 2, "[b, d]");
  check_dtype(queries, "queries", {DType::kFloat32, DType::kFloat16});
  check_ndim(protos, "protos", 2, "[C, d]");
  check_dtype(protos, "protos", {DType::kFloat32, DType::kFloat16});
  check_dim(protos, "protos", 1, queries.size(1), "the embedding dim of `queries`");
  if (protos.size(0) == 0) throw ArgumentError("`protos`: expected at least one class, got shape [0, d]");
  check_topk_k(k, protos.size(0));
  check_topk_outputs(scores, indices, queries.size(0), k);
  check_same_device(queries, "queries", protos, "protos");
  check_same_device(queries, "queries", scores, "scores");
  check_same_device(queries, "queries", indices, "indices");
  // `protos` is checked for NaN/Inf inside the kernels, fused with scoring: a separate pass would double
  // the memory traffic of batch-1 matching, which is bandwidth-bound. On the GPU `queries` is checked inside
  // the kernels too (same message), which saves a blocking device-to-host round trip per call.
  if (!queries.is_cuda()) check_finite(queries, "queries");
}

static void check_packed(const Tensor& protos, const Tensor& packed) {
  check_ndim(packed, "packed", 3, "[ceil(C / 16), d, 16]");
  check_dtype(packed, "packed", {DType::kFloat32});
  check_dim(packed, "packed", 0, (protos.size(0) + cpu::kPackedLanes - 1) / cpu::kPackedLanes,
            "groups of 16 classes of `protos`");
  check_dim(packed, "packed", 1, protos.size(1), "the embedding dim of `protos`");
  check_dim(packed, "packed", 2, cpu::kPackedLanes, "16 classes per group");
  if (packed.is_cuda()) throw ArgumentError("`packed`: the packed class matrix is a CPU layout, got " +
                                            packed.describe());
}

void topk(const Tensor& queries, const Tensor& protos, int64_t k, Metric metric, const Tensor& scores,
          const Tensor& indices, const Tensor* packed) {
  check_topk(queries, protos, k, scores, indices);
  if (packed != nullptr) {
    check_packed(protos, *packed);
    if (queries.is_cuda()) throw ArgumentError("`packed`: only for the CPU path, got `queries` " + queries.describe());
  }
  if (queries.size(0) == 0) return;
  if (packed != nullptr) return cpu::topk(queries, protos, k, metric, scores, indices, packed);
  METAEDGE_DISPATCH(topk, queries, queries, protos, k, metric, scores, indices);
}

void pack_prototypes(const Tensor& protos, Metric metric, const Tensor& packed) {
  check_ndim(protos, "protos", 2, "[C, d]");
  check_dtype(protos, "protos", {DType::kFloat32});
  if (protos.is_cuda()) throw ArgumentError("`protos`: pack_prototypes works on host arrays, got " +
                                            protos.describe());
  check_packed(protos, packed);
  cpu::pack_prototypes(protos, metric, packed);
}

}  // namespace metaedge
