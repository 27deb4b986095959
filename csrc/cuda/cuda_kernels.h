// CUDA implementations, mirroring cpu_kernels.h. Called only from csrc/ops/*.cpp after the shared checks.
// Every function runs on the stream of its first tensor argument and raises CudaError on failure.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "metaedge/ops.h"

namespace metaedge::cuda {

// Device query (the CUDA runtime linked statically; the driver is looked up at first use).
struct DeviceProperties {
  std::string name;
  int major = 0;
  int minor = 0;
  int64_t total_memory = 0;
  int multiprocessors = 0;
  bool integrated = false;  // Jetson: GPU shares DRAM with the CPU
  bool can_map_host_memory = false;
};
// Number of visible devices; 0 with `why` filled when the driver or a device is missing.
int device_count(std::string* why);
int runtime_version();
int driver_version();  // 0 when no driver
DeviceProperties device_properties(int device);

}  // namespace metaedge::cuda

namespace metaedge::cuda {
int64_t first_non_finite(const Tensor& t);
int64_t first_label_out_of_range(const Tensor& labels, int64_t num_classes);
int64_t first_negative(const Tensor& values);  // int64 tensors: index of the first value < 0, or -1
void l2_normalize(const Tensor& x, const Tensor& out, double eps);
void class_prototypes(const Tensor& emb, const Tensor& labels, int64_t num_classes, const Tensor& protos,
                      const Tensor& counts);
void update_prototypes(const Tensor& protos, const Tensor& counts, const Tensor& emb, const Tensor& labels);
void topk(const Tensor& queries, const Tensor& protos, int64_t k, Metric metric, const Tensor& scores,
          const Tensor& indices);
void compact_encode(const Tensor& rows, const Tensor& slots, Metric metric, const Tensor& center, const Tensor& codes,
                    const Tensor& meta);
void compact_topk(const Tensor& queries, const Tensor& rows, const Tensor& codes, const Tensor& meta,
                  const Tensor& center, int64_t k, Metric metric, const Tensor& scores, const Tensor& indices,
                  const Tensor& fp32_rows);
void adapt_head(const Tensor& weights, const Tensor& velocity, const Tensor& support, const Tensor& labels,
                int64_t steps, double lr, double momentum, double weight_decay, double scale,
                const Tensor& losses);
void preprocess(const Tensor& frames, const FrameLayout& layout, PixelFormat format, const Tensor* rois,
                const PreprocessParams& params, const Tensor& out);
}  // namespace metaedge::cuda
