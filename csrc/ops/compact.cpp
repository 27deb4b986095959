// The compact class matrix ops (ops.h): one argument checker each, shared by the CPU and CUDA paths.
#include <utility>

#include "dispatch.h"

namespace metaedge {

namespace {

int64_t groups_for(int64_t classes) { return (classes + kCompactLanes - 1) / kCompactLanes; }

// codes [G, ceil(d / 4), 16, 4] uint8 and meta [G, 4, 16] float32 with the same G; returns G.
int64_t check_compact_layout(const Tensor& codes, const Tensor& meta, int64_t d) {
  check_ndim(codes, "codes", 4, "[G, ceil(d / 4), 16, 4]");
  check_dtype(codes, "codes", {DType::kUInt8});
  check_dim(codes, "codes", 1, (d + kCompactStep - 1) / kCompactStep, "ceil(d / 4) steps of the embedding dim");
  check_dim(codes, "codes", 2, kCompactLanes, "16 classes per group");
  check_dim(codes, "codes", 3, kCompactStep, "4 dims per step");
  check_ndim(meta, "meta", 3, "[G, 4, 16]");
  check_dtype(meta, "meta", {DType::kFloat32});
  check_dim(meta, "meta", 0, codes.size(0), "groups of `codes`");
  check_dim(meta, "meta", 1, kCompactMetaFields, "scale, error norm, code norm, row norm");
  check_dim(meta, "meta", 2, kCompactLanes, "16 classes per group");
  check_same_device(codes, "codes", meta, "meta");
  return codes.size(0);
}

void check_center(const Tensor& center, int64_t d, const Tensor& like) {
  check_ndim(center, "center", 1, "[d]");
  check_dtype(center, "center", {DType::kFloat32});
  check_dim(center, "center", 0, d, "the embedding dim");
  check_same_device(like, "rows", center, "center");
  if (!center.is_cuda()) check_finite(center, "center");  // (CompactClassMatrix checks its center when set)
}

}  // namespace

void compact_encode(const Tensor& rows, const Tensor& slots, Metric metric, const Tensor& center, const Tensor& codes,
                    const Tensor& meta) {
  check_ndim(rows, "rows", 2, "[n, d]");
  check_dtype(rows, "rows", {DType::kFloat32});
  const int64_t groups = check_compact_layout(codes, meta, rows.size(1));
  check_ndim(slots, "slots", 1, "[n]");
  check_dtype(slots, "slots", {DType::kInt64});
  check_dim(slots, "slots", 0, rows.size(0), "rows of `rows`");
  check_same_device(rows, "rows", slots, "slots");
  check_same_device(rows, "rows", codes, "codes");
  check_labels(slots, "slots", groups * kCompactLanes);
  check_center(center, rows.size(1), rows);
  check_finite(rows, "rows");
  if (rows.size(0) == 0) return;
  METAEDGE_DISPATCH(compact_encode, rows, rows, slots, metric, center, codes, meta);
}

void compact_topk(const Tensor& queries, const Tensor& rows, const Tensor& codes, const Tensor& meta,
                  const Tensor& center, int64_t k, Metric metric, const Tensor& scores, const Tensor& indices,
                  const Tensor& fp32_rows) {
  check_ndim(queries, "queries", 2, "[b, d]");
  check_dtype(queries, "queries", {DType::kFloat32});
  check_ndim(rows, "rows", 2, "[C, d]");
  check_dtype(rows, "rows", {DType::kFloat32});
  check_dim(rows, "rows", 1, queries.size(1), "the embedding dim of `queries`");
  const int64_t C = rows.size(0);
  if (C == 0) throw ArgumentError("`rows`: expected at least one class, got shape [0, d]");
  const int64_t groups = check_compact_layout(codes, meta, rows.size(1));
  if (groups < groups_for(C))
    throw ArgumentError("`codes`: expected at least " + std::to_string(groups_for(C)) + " groups of 16 classes (for " +
                        std::to_string(C) + " rows), got shape " + shape_str(codes.shape));
  check_center(center, rows.size(1), rows);
  check_topk_k(k, C);
  const int64_t b = queries.size(0);
  check_topk_outputs(scores, indices, b, k);
  check_ndim(fp32_rows, "fp32_rows", 1, "[b]");
  check_dtype(fp32_rows, "fp32_rows", {DType::kInt64});
  check_dim(fp32_rows, "fp32_rows", 0, b, "rows of `queries`");
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&rows, "rows"}, {&codes, "codes"},
                                {&scores, "scores"}, {&indices, "indices"}, {&fp32_rows, "fp32_rows"}})
    check_same_device(queries, "queries", *t, name);
  // As in topk: on the GPU the queries are checked inside the kernels (no blocking round trip here).
  if (!queries.is_cuda()) check_finite(queries, "queries");
  if (b == 0) return;
  METAEDGE_DISPATCH(compact_topk, queries, queries, rows, codes, meta, center, k, metric, scores, indices, fp32_rows);
}

}  // namespace metaedge
