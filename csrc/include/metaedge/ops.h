// The ops of metaedge (semantics: DESIGN.md section 5). Each op validates its arguments once with the
// shared checker in csrc/ops/<op>.cpp and dispatches to cpu:: or cuda:: by the device of its inputs.
// Outputs are passed in preallocated by the caller; in-place ops say so.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "metaedge/tensor.h"

namespace metaedge {

enum class Metric { kCosine, kDot, kEuclidean };
Metric parse_metric(const std::string& name);
const char* metric_name(Metric metric);

enum class ColorMode { kKeep, kToGray, kToRGB };  // output channels: gray frames 1, others 3 / 1 / 3
ColorMode parse_color_mode(const std::string& name);

// How the pixels of a frame are laid out (uint8; see metaedge.kernels.preprocess for the array shapes).
enum class PixelFormat { kGray, kRGB, kBGR, kRGBA, kBGRA, kNV12, kYUYV };
PixelFormat parse_pixel_format(const std::string& name);
const char* pixel_format_name(PixelFormat format);

// How a region is fitted to the network input: stretched, fitted whole with padding, or cropped to fill.
enum class ResizeMode { kSqueeze, kLetterbox, kCenterCrop };
ResizeMode parse_resize_mode(const std::string& name);

// YUV -> RGB conversion of NV12/YUYV frames: BT.601 or BT.709, limited ("video", Y in 16..235) or full range.
enum class YuvMatrix { kBT601, kBT709, kBT601Full, kBT709Full };
YuvMatrix parse_yuv_matrix(const std::string& name);

struct PreprocessParams {
  int64_t out_height = 0;
  int64_t out_width = 0;
  ColorMode color = ColorMode::kKeep;
  std::vector<float> mean;  // one per output channel
  std::vector<float> std;   // one per output channel, > 0
  bool invert = false;      // x -> 255 - x before scaling (e.g. Omniglot strokes = 1)
  ResizeMode resize = ResizeMode::kSqueeze;
  bool antialias = false;   // box prefilter (integer factor) when an axis shrinks by more than 2x
  float pad = 0.f;          // letterbox fill: a pixel value 0..255 in the network's colour, before inversion
  YuvMatrix yuv = YuvMatrix::kBT601;
};

// x[n,d] -> out[n,d], rows divided by max(||row||, eps). out may alias x.
void l2_normalize(const Tensor& x, const Tensor& out, double eps);

// emb[n,d], labels[n] (int64) -> protos[C,d] (float32), counts[C] (int64). Empty classes: zero row, count 0.
void class_prototypes(const Tensor& emb, const Tensor& labels, int64_t num_classes, const Tensor& protos,
                      const Tensor& counts);

// In place: protos[C,d] <- (protos*counts + sum of emb rows of each class) / (counts + m); counts += m.
void update_prototypes(const Tensor& protos, const Tensor& counts, const Tensor& emb, const Tensor& labels);

// queries[b,d], protos[c,d] -> scores[b,k] (descending; ties -> lower index first), indices[b,k] (int64).
// `packed` (CPU only, optional): pack_prototypes(protos, metric, ...) of these very `protos` and `metric`, for
// faster scoring of small batches. Nothing can check that it matches, so only the bound matcher of the
// bindings (metaedge.kernels.PrototypeMatcher), which packs its own copy, passes one.
void topk(const Tensor& queries, const Tensor& protos, int64_t k, Metric metric, const Tensor& scores,
          const Tensor& indices, const Tensor* packed = nullptr);

// protos[C,d] float32 -> packed[ceil(C/16), d, 16]: groups of 16 classes, one class per lane, the last group
// zero-padded (the CPU layout topk streams without horizontal sums). For "cosine" the rows are normalised
// first (exactly, in double; a zero row stays zero), so scoring is a dot product with the unit query.
void pack_prototypes(const Tensor& protos, Metric metric, const Tensor& packed);

// The compact class matrix (metaedge.kernels.CompactClassMatrix): beside the exact float32 rows, an int8 code
// row per class, scaled per row, which a first pass streams at a quarter of the bytes; a second pass re-scores
// the candidates it cannot rule out in float32 (semantics and the error bound: docs/matching.md). The codes
// approximate v = x - center, where x is the row (dot, euclidean) or the unit row (cosine) and `center` [d]
// float32 is any fixed vector (results never depend on it; a center near the rows' mean makes v, its error and
// so the bound small). Layout, the same on CPU and GPU:
//   codes [G, S, 16, 4] uint8: groups of 16 classes (G >= ceil(C / 16)), S = ceil(d / 4) steps of 4 dims; dims
//         4s .. 4s+3 of class 16 g + l at codes[g, s, l, 0..3], each stored as code + 128 with code in
//         [-127, 127] (padding dims and empty slots: 128, i.e. code 0).
//   meta  [G, 4, 16] float32: per class (lane l of group g) its scale, ||v - scale * code|| and ||scale * code||
//         (both rounded up), and ||x|| (dot, cosine) or ||v|| (euclidean).
constexpr int64_t kCompactLanes = 16;
constexpr int64_t kCompactStep = 4;
constexpr int64_t kCompactMetaFields = 4;
constexpr int kCompactCodeMax = 127;

// Encodes rows[n, d] (finite float32) into the slots `slots[n]` (int64, distinct, in [0, 16 G)) of
// codes/meta for `metric` and `center[d]` (finite float32); nothing else is touched. An empty slot is what
// encoding a zero row with a zero center writes.
void compact_encode(const Tensor& rows, const Tensor& slots, Metric metric, const Tensor& center, const Tensor& codes,
                    const Tensor& meta);

// topk of queries[b, d] against rows[C, d] (float32) through their compact copy (codes/meta: compact_encode of
// exactly these rows in slots 0..C-1 with this metric and center; only CompactClassMatrix, which keeps them in
// step, calls it). scores/indices: as topk returns them for each query on its own (bit for bit on the CPU);
// fp32_rows[b] (int64): how many rows each query re-scored in float32 (C when it scanned the whole matrix).
void compact_topk(const Tensor& queries, const Tensor& rows, const Tensor& codes, const Tensor& meta,
                  const Tensor& center, int64_t k, Metric metric, const Tensor& scores, const Tensor& indices,
                  const Tensor& fp32_rows);
// The CPU variant of the compact first pass this machine runs ("avx512-vnni", "avx2", "portable").
std::string compact_kernel_name();

// Cosine-classifier fine-tuning; weights[c,d] updated in place, velocity[c,d] is the momentum buffer
// (in/out, zeros for a fresh start), losses[steps] receives the loss before each step's update.
void adapt_head(const Tensor& weights, const Tensor& velocity, const Tensor& support, const Tensor& labels,
                int64_t steps, double lr, double momentum, double weight_decay, double scale,
                const Tensor& losses);

// Channels that preprocess writes for frames of `format` under `color`.
int64_t preprocess_output_channels(PixelFormat format, ColorMode color);

// How a frame batch lies in memory, from check_frames (which refuses anything the kernels cannot read).
struct FrameLayout {
  int64_t count = 0;          // frames
  int64_t height = 0, width = 0;  // pixels (nv12: of the Y plane)
  int64_t pixel_bytes = 0;    // bytes per pixel in a row (nv12: 1 in the Y plane; yuyv: 2)
  int64_t plane_rows = 0;     // rows per frame in memory (nv12: h * 3 / 2)
  int64_t row_stride = 0;     // bytes from one row to the next
  int64_t frame_stride = 0;   // bytes from one frame to the next
};
// The pixel format of a frame named "auto": gray, rgb or rgba by the channel count; anything else raises.
PixelFormat infer_pixel_format(const Tensor& frames);
FrameLayout check_frames(const Tensor& frames, PixelFormat format);
void check_rois(const Tensor& rois, const FrameLayout& layout);
int64_t preprocess_output_count(const FrameLayout& layout, const Tensor* rois);

// frames (uint8, strides in bytes allowed) -> out[n, C, H, W] float32. Layout of `frames` by `format`:
// gray/rgb/bgr/rgba/bgra [b, h, w, c] (c = 1/3/3/4/4), nv12 [b, h*3/2, w], yuyv [b, h, w, 2]. `rois`: nullptr
// (n = b, whole frames) or int64 [n, 4] boxes (x, y, w, h) on a single frame (b == 1).
void preprocess(const Tensor& frames, PixelFormat format, const Tensor* rois, const PreprocessParams& params,
                const Tensor& out);

// Information for build_info(): SIMD level compiled in, OpenMP threads.
std::string simd_level();
int openmp_max_threads();

}  // namespace metaedge
