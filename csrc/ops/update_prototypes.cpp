#include "dispatch.h"

namespace metaedge {

static void check_update_prototypes(const Tensor& protos, const Tensor& counts, const Tensor& emb,
                                    const Tensor& labels) {
  check_ndim(protos, "protos", 2, "[C, d]");
  check_dtype(protos, "protos", {DType::kFloat32});
  check_ndim(counts, "counts", 1, "[C]");
  check_dtype(counts, "counts", {DType::kInt64});
  check_dim(counts, "counts", 0, protos.size(0), "one count per row of `protos`");
  check_ndim(emb, "emb", 2, "[m, d]");
  check_dtype(emb, "emb", {DType::kFloat32});
  check_dim(emb, "emb", 1, protos.size(1), "the embedding dim of `protos`");
  check_ndim(labels, "labels", 1, "[m]");
  check_dtype(labels, "labels", {DType::kInt64});
  check_dim(labels, "labels", 0, emb.size(0), "one label per row of `emb`");
  check_same_device(protos, "protos", counts, "counts");
  check_same_device(protos, "protos", emb, "emb");
  check_same_device(protos, "protos", labels, "labels");
  check_labels(labels, "labels", protos.size(0));
  check_finite(emb, "emb");
  if (!counts.is_cuda()) {
    const int64_t* c = counts.ptr<int64_t>();
    for (int64_t i = 0; i < counts.numel(); ++i)
      if (c[i] < 0)
        throw ArgumentError("`counts`: expected counts >= 0, got " + std::to_string(c[i]) + " at index " +
                            std::to_string(i));
  } else {
#if METAEDGE_WITH_CUDA
    const int64_t bad = cuda::first_negative(counts);
    if (bad >= 0)
      throw ArgumentError("`counts`: expected counts >= 0, got a negative count at index " + std::to_string(bad));
#else
    fail_cuda_not_built("update_prototypes");
#endif
  }
}

void update_prototypes(const Tensor& protos, const Tensor& counts, const Tensor& emb, const Tensor& labels) {
  check_update_prototypes(protos, counts, emb, labels);
  if (emb.size(0) == 0) return;
  METAEDGE_DISPATCH(update_prototypes, protos, protos, counts, emb, labels);
}

}  // namespace metaedge
