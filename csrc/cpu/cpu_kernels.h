// CPU implementations. Called only from csrc/ops/*.cpp after the shared checks passed, so arguments are
// valid, C-contiguous (frames: as their FrameLayout says) and on the host.
#pragma once

#include <cstdint>

#include "metaedge/ops.h"

namespace metaedge::cpu {

// Classes per group of the packed class matrix (pack_prototypes: [ceil(C / 16), d, 16], one class per lane).
// Fixed for every SIMD variant, so a packed matrix does not depend on the CPU that runs it.
constexpr int64_t kPackedLanes = 16;

void l2_normalize(const Tensor& x, const Tensor& out, double eps);
void class_prototypes(const Tensor& emb, const Tensor& labels, int64_t num_classes, const Tensor& protos,
                      const Tensor& counts);
void update_prototypes(const Tensor& protos, const Tensor& counts, const Tensor& emb, const Tensor& labels);
// `packed` (optional): pack_prototypes(protos, metric), used for batches scored by streaming (small ones).
void topk(const Tensor& queries, const Tensor& protos, int64_t k, Metric metric, const Tensor& scores,
          const Tensor& indices, const Tensor* packed = nullptr);
void pack_prototypes(const Tensor& protos, Metric metric, const Tensor& packed);
void compact_encode(const Tensor& rows, const Tensor& slots, Metric metric, const Tensor& center, const Tensor& codes,
                    const Tensor& meta);
void compact_topk(const Tensor& queries, const Tensor& rows, const Tensor& codes, const Tensor& meta,
                  const Tensor& center, int64_t k, Metric metric, const Tensor& scores, const Tensor& indices,
                  const Tensor& fp32_rows);
void adapt_head(const Tensor& weights, const Tensor& velocity, const Tensor& support, const Tensor& labels,
                int64_t steps, double lr, double momentum, double weight_decay, double scale,
                const Tensor& losses);
// Arguments checked by metaedge::preprocess (frames laid out as `layout` says; rois in the frame).
void preprocess(const Tensor& frames, const FrameLayout& layout, PixelFormat format, const Tensor* rois,
                const PreprocessParams& params, const Tensor& out);

// Index of the first non-finite element of a float32/float16 tensor, or -1.
int64_t first_non_finite(const Tensor& t);
// Index of the first label outside [0, num_classes), or -1.
int64_t first_label_out_of_range(const Tensor& labels, int64_t num_classes);

}  // namespace metaedge::cpu
