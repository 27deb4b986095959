#include "dispatch.h"

namespace metaedge {

static void check_class_prototypes(const Tensor& emb, const Tensor& labels, int64_t num_classes,
                                   const Tensor& protos, const Tensor& counts) {
  check_ndim(emb, "emb", 2, "[n, d]");
  check_dtype(emb, "emb", {DType::kFloat32});
  check_ndim(labels, "labels", 1, "[n]");
  check_dtype(labels, "labels", {DType::kInt64});
  check_dim(labels, "labels", 0, emb.size(0), "one label per row of `emb`");
  if (num_classes < 0)
    throw ArgumentError("`num_classes`: expected >= 0, got " + std::to_string(num_classes));
  check_ndim(protos, "protos", 2, "[num_classes, d]");
  check_dtype(protos, "protos", {DType::kFloat32});
  check_dim(protos, "protos", 0, num_classes, "`num_classes`");
  check_dim(protos, "protos", 1, emb.size(1), "the embedding dim of `emb`");
  check_ndim(counts, "counts", 1, "[num_classes]");
  check_dtype(counts, "counts", {DType::kInt64});
  check_dim(counts, "counts", 0, num_classes, "`num_classes`");
  check_same_device(emb, "emb", labels, "labels");
  check_same_device(emb, "emb", protos, "protos");
  check_same_device(emb, "emb", counts, "counts");
  check_labels(labels, "labels", num_classes);
  check_finite(emb, "emb");
}

void class_prototypes(const Tensor& emb, const Tensor& labels, int64_t num_classes, const Tensor& protos,
                      const Tensor& counts) {
  check_class_prototypes(emb, labels, num_classes, protos, counts);
  METAEDGE_DISPATCH(class_prototypes, emb, emb, labels, num_classes, protos, counts);
}

}  // namespace metaedge
