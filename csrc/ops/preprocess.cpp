// preprocess: the argument checks shared by the CPU and CUDA kernels, the frame layout of each pixel format,
// and dispatch.
#include <cmath>

#include "dispatch.h"
#include "metaedge/preprocess_plan.h"

namespace metaedge {

ColorMode parse_color_mode(const std::string& name) {
  if (name == "keep") return ColorMode::kKeep;
  if (name == "gray") return ColorMode::kToGray;
  if (name == "rgb") return ColorMode::kToRGB;
  throw ArgumentError("`color`: expected 'keep', 'gray' or 'rgb', got '" + name + "'");
}

PixelFormat parse_pixel_format(const std::string& name) {
  if (name == "gray") return PixelFormat::kGray;
  if (name == "rgb") return PixelFormat::kRGB;
  if (name == "bgr") return PixelFormat::kBGR;
  if (name == "rgba") return PixelFormat::kRGBA;
  if (name == "bgra") return PixelFormat::kBGRA;
  if (name == "nv12") return PixelFormat::kNV12;
  if (name == "yuyv") return PixelFormat::kYUYV;
  throw ArgumentError("`pixel_format`: expected 'gray', 'rgb', 'bgr', 'rgba', 'bgra', 'nv12' or 'yuyv', got '" +
                      name + "'");
}

const char* pixel_format_name(PixelFormat format) {
  switch (format) {
    case PixelFormat::kGray: return "gray";
    case PixelFormat::kRGB: return "rgb";
    case PixelFormat::kBGR: return "bgr";
    case PixelFormat::kRGBA: return "rgba";
    case PixelFormat::kBGRA: return "bgra";
    case PixelFormat::kNV12: return "nv12";
    case PixelFormat::kYUYV: return "yuyv";
  }
  return "unknown";
}

ResizeMode parse_resize_mode(const std::string& name) {
  if (name == "squeeze") return ResizeMode::kSqueeze;
  if (name == "letterbox") return ResizeMode::kLetterbox;
  if (name == "center_crop") return ResizeMode::kCenterCrop;
  throw ArgumentError("`resize`: expected 'squeeze', 'letterbox' or 'center_crop', got '" + name + "'");
}

YuvMatrix parse_yuv_matrix(const std::string& name) {
  if (name == "bt601") return YuvMatrix::kBT601;
  if (name == "bt709") return YuvMatrix::kBT709;
  if (name == "bt601-full") return YuvMatrix::kBT601Full;
  if (name == "bt709-full") return YuvMatrix::kBT709Full;
  throw ArgumentError("`yuv_matrix`: expected 'bt601', 'bt709', 'bt601-full' or 'bt709-full', got '" + name + "'");
}

int64_t preprocess_output_channels(PixelFormat format, ColorMode color) { return output_channels_of(format, color); }

namespace {

[[noreturn]] void bad_layout(const Tensor& frames, PixelFormat format, const std::string& why) {
  const char* name = pixel_format_name(format);
  std::string layout;
  switch (format) {
    case PixelFormat::kGray: layout = "[h, w] or [h, w, 1] (a batch: [b, h, w, 1])"; break;
    case PixelFormat::kNV12:
      layout = "[h*3/2, w] with h and w even: h rows of Y, then h/2 rows of interleaved U,V (a batch: "
               "[b, h*3/2, w])";
      break;
    case PixelFormat::kYUYV: layout = "[h, w, 2] with w even: Y0 U Y1 V per pixel pair (a batch: [b, h, w, 2])"; break;
    default: {
      const int c = canonical_channels(format);
      layout = "[h, w, " + std::to_string(c) + "] (a batch: [b, h, w, " + std::to_string(c) + "])";
    }
  }
  throw ArgumentError(std::string("`frames`: pixel format '") + name + "' expects " + layout + ", got shape " +
                      shape_str(frames.shape) + (why.empty() ? "" : " (" + why + ")"));
}

}  // namespace

PixelFormat infer_pixel_format(const Tensor& frames) {
  const int64_t nd = frames.ndim();
  if (nd == 2) return PixelFormat::kGray;
  if (nd == 3 || nd == 4) {
    switch (frames.size(nd - 1)) {
      case 1: return PixelFormat::kGray;
      case 3: return PixelFormat::kRGB;
      case 4: return PixelFormat::kRGBA;
      case 2:
        throw ArgumentError("`frames`: 2 channels in the last axis, got shape " + shape_str(frames.shape) +
                            ": for YUYV camera frames pass pixel_format='yuyv'");
      default: break;
    }
  }
  throw ArgumentError("`frames`: expected [h, w], [h, w, c] or [b, h, w, c] with c = 1, 3 or 4 (gray, RGB, RGBA; "
                      "or name the pixel format: bgr, bgra, nv12, yuyv), got shape " + shape_str(frames.shape));
}

FrameLayout check_frames(const Tensor& frames, PixelFormat format) {
  if (frames.dtype != DType::kUInt8)
    throw ArgumentTypeError(std::string("`frames`: expected uint8 pixels, got ") + dtype_name(frames.dtype));
  const int64_t nd = frames.ndim();
  FrameLayout l{};
  int64_t row_axis = 0, channels = canonical_channels(format);
  // Single frames have one axis less than batches; gray also takes [h, w].
  if (format == PixelFormat::kNV12) {
    if (nd != 2 && nd != 3) bad_layout(frames, format, "");
    l.count = nd == 3 ? frames.size(0) : 1;
    row_axis = nd - 2;
    const int64_t rows = frames.size(row_axis);
    l.width = frames.size(nd - 1);
    if (rows % 3 != 0 || rows == 0) bad_layout(frames, format, "the row count is not a multiple of 3");
    l.height = rows / 3 * 2;
    if (l.width % 2 != 0 || l.width == 0) bad_layout(frames, format, "odd width");
    l.pixel_bytes = 1;
    l.plane_rows = rows;
  } else {
    if (format == PixelFormat::kGray && nd == 2) {
      l.count = 1;
      row_axis = 0;
    } else {
      if (nd != 3 && nd != 4) bad_layout(frames, format, "");
      const int64_t c = frames.size(nd - 1);
      const int64_t want = format == PixelFormat::kYUYV ? 2 : channels;
      if (c != want) {
        std::string hint = std::to_string(c) + " channels";
        if (format == PixelFormat::kRGB && c == 4) hint += ": use 'rgba'";
        if (format == PixelFormat::kBGR && c == 4) hint += ": use 'bgra'";
        if ((format == PixelFormat::kRGBA || format == PixelFormat::kBGRA) && c == 3) hint += ": use 'rgb' or 'bgr'";
        bad_layout(frames, format, hint);
      }
      l.count = nd == 4 ? frames.size(0) : 1;
      row_axis = nd == 4 ? 1 : 0;
      if (frames.size(nd - 1) > 1 && frames.stride(nd - 1) != 1)
        bad_layout(frames, format, "the channels of a pixel are not adjacent bytes");
    }
    l.height = frames.size(row_axis);
    l.width = frames.size(row_axis + 1);
    if (format == PixelFormat::kYUYV && (l.width % 2 != 0)) bad_layout(frames, format, "odd width");
    l.pixel_bytes = format == PixelFormat::kYUYV ? 2 : channels;
    l.plane_rows = l.height;
  }
  if (l.count == 0) return l;
  if (l.height < 1 || l.width < 1) bad_layout(frames, format, "empty frame");
  if (l.width > 1 && frames.stride(row_axis + 1) != l.pixel_bytes)
    throw ArgumentError("`frames`: the pixels of a row must be adjacent (a pixel stride of " +
                        std::to_string(l.pixel_bytes) + " bytes), got stride " +
                        std::to_string(frames.stride(row_axis + 1)) + " for shape " + shape_str(frames.shape) +
                        " (a channel-reversed view such as frame[..., ::-1] is not: pass the frame itself with "
                        "pixel_format='bgr')");
  // (A stride along an axis of size 1 is never used: numpy may report anything there.)
  l.row_stride = l.plane_rows > 1 ? frames.stride(row_axis) : l.width * l.pixel_bytes;
  l.frame_stride = row_axis > 0 && l.count > 1 ? frames.stride(0) : l.row_stride * l.plane_rows;
  if (l.row_stride < l.width * l.pixel_bytes || l.frame_stride < l.row_stride * l.plane_rows)
    throw ArgumentError("`frames`: rows or frames overlap (strides " + shape_str(frames.strides) + " for shape " +
                        shape_str(frames.shape) + ")");
  return l;
}

int64_t preprocess_output_count(const FrameLayout& layout, const Tensor* rois) {
  return rois ? rois->size(0) : layout.count;
}

void check_rois(const Tensor& rois, const FrameLayout& layout) {
  check_ndim(rois, "rois", 2, "[n, 4] boxes (x, y, w, h)");
  check_dtype(rois, "rois", {DType::kInt64});
  check_dim(rois, "rois", 1, 4, "(x, y, w, h)");
  if (rois.is_cuda()) throw ArgumentError("`rois`: expected a host (numpy) array, got a CUDA array");
  if (layout.count != 1)
    throw ArgumentError("`rois`: boxes apply to one frame, got a batch of " + std::to_string(layout.count) +
                        " frames");
  const int64_t* r = rois.ptr<int64_t>();
  for (int64_t i = 0; i < rois.size(0); ++i) {
    const int64_t x = r[4 * i], y = r[4 * i + 1], w = r[4 * i + 2], h = r[4 * i + 3];
    const bool inside = x >= 0 && y >= 0 && w >= 1 && h >= 1 && w <= layout.width - x && h <= layout.height - y;
    if (!inside)
      throw ArgumentError("`rois`: box " + std::to_string(i) + " (x=" + std::to_string(x) + ", y=" +
                          std::to_string(y) + ", w=" + std::to_string(w) + ", h=" + std::to_string(h) +
                          ") is not inside the " + std::to_string(layout.width) + "x" +
                          std::to_string(layout.height) + " frame (w and h >= 1, x + w <= width, y + h <= height)");
  }
}

static void check_params(PixelFormat format, const PreprocessParams& p) {
  if (p.out_height < 1 || p.out_width < 1)
    throw ArgumentError("`size`: expected (height, width) >= 1, got (" + std::to_string(p.out_height) + ", " +
                        std::to_string(p.out_width) + ")");
  const int64_t oc = output_channels_of(format, p.color);
  if (static_cast<int64_t>(p.mean.size()) != oc)
    throw ArgumentError("`mean`: expected " + std::to_string(oc) + " values (one per output channel), got " +
                        std::to_string(p.mean.size()));
  if (static_cast<int64_t>(p.std.size()) != oc)
    throw ArgumentError("`std`: expected " + std::to_string(oc) + " values (one per output channel), got " +
                        std::to_string(p.std.size()));
  for (float m : p.mean) check_finite_scalar(m, "mean");
  for (float s : p.std) check_positive(s, "std");
  if (!std::isfinite(p.pad) || p.pad < 0.f || p.pad > 255.f)
    throw ArgumentError("`pad`: expected a pixel value in [0, 255], got " + std::to_string(p.pad));
}

void preprocess(const Tensor& frames, PixelFormat format, const Tensor* rois, const PreprocessParams& params,
                const Tensor& out) {
  const FrameLayout layout = check_frames(frames, format);
  if (rois) check_rois(*rois, layout);
  check_params(format, params);
  check_ndim(out, "out", 4, "[n, C, H, W]");
  check_dtype(out, "out", {DType::kFloat32});
  check_dim(out, "out", 0, preprocess_output_count(layout, rois), rois ? "boxes in `rois`" : "frames");
  check_dim(out, "out", 1, output_channels_of(format, params.color), "output channels");
  check_dim(out, "out", 2, params.out_height, "`size` height");
  check_dim(out, "out", 3, params.out_width, "`size` width");
  check_same_device(frames, "frames", out, "out");
  if (out.size(0) == 0) return;
  METAEDGE_DISPATCH(preprocess, frames, frames, layout, format, rois, params, out);
}

}  // namespace metaedge
