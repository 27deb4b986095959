#include <cmath>

#include "dispatch.h"

namespace metaedge {

int64_t preprocess_output_channels(int64_t input_channels, ColorMode color) {
  switch (color) {
    case ColorMode::kToGray: return 1;
    case ColorMode::kToRGB: return 3;
    case ColorMode::kKeep: return input_channels == 4 ? 3 : input_channels;  // alpha is dropped
  }
  return input_channels;
}

void check_image_channels(const Tensor& images) {
  const int64_t c = images.ndim() > 0 ? images.size(images.ndim() - 1) : 0;
  if (c != 1 && c != 3 && c != 4)
    throw ArgumentError("`images`: expected 1, 3 or 4 channels (gray, RGB, RGBA) in the last axis, got shape " +
                        shape_str(images.shape));
}

static void check_preprocess(const Tensor& images, const PreprocessParams& p, const Tensor& out) {
  check_ndim(images, "images", 4, "[b, h, w, c] (uint8, HWC)");
  check_dtype(images, "images", {DType::kUInt8});
  check_image_channels(images);
  if (images.size(0) > 0 && (images.size(1) < 1 || images.size(2) < 1))
    throw ArgumentError("`images`: expected height and width >= 1, got shape " + shape_str(images.shape));
  if (p.out_height < 1 || p.out_width < 1)
    throw ArgumentError("`size`: expected (height, width) >= 1, got (" + std::to_string(p.out_height) + ", " +
                        std::to_string(p.out_width) + ")");
  const int64_t oc = preprocess_output_channels(images.size(3), p.color);
  if (static_cast<int64_t>(p.mean.size()) != oc)
    throw ArgumentError("`mean`: expected " + std::to_string(oc) + " values (one per output channel), got " +
                        std::to_string(p.mean.size()));
  if (static_cast<int64_t>(p.std.size()) != oc)
    throw ArgumentError("`std`: expected " + std::to_string(oc) + " values (one per output channel), got " +
                        std::to_string(p.std.size()));
  for (float m : p.mean) check_finite_scalar(m, "mean");
  for (float s : p.std) check_positive(s, "std");
  check_ndim(out, "out", 4, "[b, C, H, W]");
  check_dtype(out, "out", {DType::kFloat32});
  check_dim(out, "out", 0, images.size(0), "batch of `images`");
  check_dim(out, "out", 1, oc, "output channels");
  check_dim(out, "out", 2, p.out_height, "`size` height");
  check_dim(out, "out", 3, p.out_width, "`size` width");
  check_same_device(images, "images", out, "out");
}

void preprocess(const Tensor& images, const PreprocessParams& params, const Tensor& out) {
  check_preprocess(images, params, out);
  if (images.size(0) == 0) return;
  METAEDGE_DISPATCH(preprocess, images, images, params, out);
}

}  // namespace metaedge
