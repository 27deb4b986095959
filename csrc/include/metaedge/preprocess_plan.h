// The maths of frame pre-processing that the CPU and CUDA kernels share, so both compute exactly the same
// thing: the per-output-channel affine map (pixel format -> RGB/gray -> network colour, inversion, /255,
// (x - mean)/std), where the region of each output image comes from and where it lands (resize mode), and
// the sampling taps of one axis (integer box prefilter, then bilinear with half-pixel centres).
//
// Every step after sampling is affine in the pixel values and every sampling weight set sums to one, so
// sampling the raw channels (B,G,R or Y,U,V) and converting afterwards equals converting first: the kernels
// sample raw channels and apply one 3x4 matrix per output pixel. (YUV values are not clamped to 0..255 after
// conversion; in-gamut frames are unaffected.)
#pragma once

#include <cmath>
#include <cstdint>

#include "metaedge/ops.h"

#if defined(__CUDACC__)
#define METAEDGE_HD __host__ __device__ __forceinline__
#else
#define METAEDGE_HD inline
#endif

namespace metaedge {

// Raw channels the kernels sample per pixel ("canonical" channels): gray 1; R,G,B or B,G,R 3; with alpha 4
// (alpha is never read); Y,U,V 3 for nv12 and yuyv (U and V of the pixel's 2x2 / 2x1 chroma site).
inline int canonical_channels(PixelFormat f) {
  switch (f) {
    case PixelFormat::kGray: return 1;
    case PixelFormat::kRGBA:
    case PixelFormat::kBGRA: return 4;
    default: return 3;
  }
}
// Of those, the ones that carry colour (alpha is dropped).
inline int used_channels(PixelFormat f) { return f == PixelFormat::kGray ? 1 : 3; }

// out_oc = sum_k m[oc][k] * v_k + bias[oc], v = the sampled canonical channels. A plain struct: the CUDA
// kernel takes it by value.
struct PreprocessAffine {
  float m[3][4];  // [output channel][canonical channel]
  float bias[3];
  float pad[3];   // the value of a letterbox pad pixel per output channel
};

// rgb = a[c][k] * v_k + b[c]: canonical channels -> R, G, B (0..255 scale).
struct ToRgb {
  double a[3][4];
  double b[3];
};

inline ToRgb to_rgb_map(PixelFormat f, YuvMatrix yuv) {
  ToRgb t{};
  switch (f) {
    case PixelFormat::kGray:
      for (int c = 0; c < 3; ++c) t.a[c][0] = 1.0;
      break;
    case PixelFormat::kRGB:
    case PixelFormat::kRGBA:
      for (int c = 0; c < 3; ++c) t.a[c][c] = 1.0;
      break;
    case PixelFormat::kBGR:
    case PixelFormat::kBGRA:
      for (int c = 0; c < 3; ++c) t.a[c][2 - c] = 1.0;
      break;
    case PixelFormat::kNV12:
    case PixelFormat::kYUYV: {
      const bool bt709 = yuv == YuvMatrix::kBT709 || yuv == YuvMatrix::kBT709Full;
      const bool full = yuv == YuvMatrix::kBT601Full || yuv == YuvMatrix::kBT709Full;
      const double kr = bt709 ? 0.2126 : 0.299, kb = bt709 ? 0.0722 : 0.114, kg = 1.0 - kr - kb;
      const double sy = full ? 1.0 : 255.0 / 219.0, sc = full ? 1.0 : 255.0 / 224.0, y0 = full ? 0.0 : 16.0;
      const double rv = 2.0 * (1.0 - kr) * sc, bu = 2.0 * (1.0 - kb) * sc;
      const double gu = -2.0 * kb * (1.0 - kb) / kg * sc, gv = -2.0 * kr * (1.0 - kr) / kg * sc;
      // R = sy (Y - y0) + rv (V - 128); G = sy (Y - y0) + gu (U - 128) + gv (V - 128); B = sy (Y - y0) + bu (U - 128)
      t.a[0][0] = sy, t.a[0][2] = rv, t.b[0] = -sy * y0 - rv * 128.0;
      t.a[1][0] = sy, t.a[1][1] = gu, t.a[1][2] = gv, t.b[1] = -sy * y0 - (gu + gv) * 128.0;
      t.a[2][0] = sy, t.a[2][1] = bu, t.b[2] = -sy * y0 - bu * 128.0;
      break;
    }
  }
  return t;
}

inline int64_t output_channels_of(PixelFormat f, ColorMode color) {
  if (color == ColorMode::kToGray) return 1;
  if (color == ColorMode::kToRGB) return 3;
  return f == PixelFormat::kGray ? 1 : 3;
}

inline PreprocessAffine make_preprocess_affine(PixelFormat f, int64_t out_channels, const PreprocessParams& p) {
  static const double kLuma[3] = {0.299, 0.587, 0.114};
  const ToRgb rgb = to_rgb_map(f, p.yuv);
  PreprocessAffine out{};
  const double sign = p.invert ? -1.0 : 1.0;
  for (int64_t oc = 0; oc < out_channels; ++oc) {
    // The network's value v (0..255) of this channel, as an affine map of the canonical channels.
    double a[4] = {0, 0, 0, 0}, b = 0;
    if (out_channels == 1) {
      if (f == PixelFormat::kGray) {
        a[0] = 1.0;
      } else {
        for (int c = 0; c < 3; ++c) {
          for (int k = 0; k < 4; ++k) a[k] += kLuma[c] * rgb.a[c][k];
          b += kLuma[c] * rgb.b[c];
        }
      }
    } else {
      for (int k = 0; k < 4; ++k) a[k] = rgb.a[oc][k];
      b = rgb.b[oc];
    }
    // out = ((invert ? 255 - v : v) / 255 - mean) / std
    const double gain = sign / (255.0 * p.std[oc]);
    const double offset = ((p.invert ? 1.0 : 0.0) - p.mean[oc]) / p.std[oc];
    for (int k = 0; k < 4; ++k) out.m[oc][k] = static_cast<float>(a[k] * gain);
    out.bias[oc] = static_cast<float>(b * gain + offset);
    out.pad[oc] = static_cast<float>(static_cast<double>(p.pad) * gain + offset);
  }
  return out;
}

// Where output image i comes from and where it lands. The content [dst_h, dst_w] at (dst_y, dst_x) of the
// [H, W] output is the source rectangle resampled; the rest (letterbox only) is pad.
struct ImageGeometry {
  int64_t frame;
  int64_t src_x, src_y, src_w, src_h;
  int64_t dst_x, dst_y, dst_w, dst_h;
  int64_t fx, fy;  // box prefilter factor per axis (1: none)
};

inline int64_t round_half_up(double v) { return static_cast<int64_t>(std::floor(v + 0.5)); }
inline int64_t clamp_int(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Box factor of one axis: shrinking by more than 2x with antialiasing averages blocks of floor(in/out) pixels
// first (as PIL's reduce()), which leaves a bilinear step of less than 2x. Capped at 256 (so a box sum of
// uint8 pixels fits 16 bits per axis).
inline int64_t box_factor(int64_t in, int64_t out, bool antialias) {
  if (!antialias || in <= 2 * out) return 1;
  const int64_t f = in / out;
  return f > 256 ? 256 : f;
}

inline ImageGeometry plan_geometry(int64_t frame, int64_t x, int64_t y, int64_t w, int64_t h,
                                   const PreprocessParams& p) {
  const int64_t H = p.out_height, W = p.out_width;
  ImageGeometry g{frame, x, y, w, h, 0, 0, W, H, 1, 1};
  if (p.resize == ResizeMode::kLetterbox) {
    const double s = std::fmin(static_cast<double>(H) / h, static_cast<double>(W) / w);
    g.dst_h = clamp_int(round_half_up(h * s), 1, H);
    g.dst_w = clamp_int(round_half_up(w * s), 1, W);
    g.dst_y = (H - g.dst_h) / 2;
    g.dst_x = (W - g.dst_w) / 2;
  } else if (p.resize == ResizeMode::kCenterCrop) {
    const double s = std::fmax(static_cast<double>(H) / h, static_cast<double>(W) / w);
    const int64_t crop_h = clamp_int(round_half_up(H / s), 1, h), crop_w = clamp_int(round_half_up(W / s), 1, w);
    g.src_y = y + (h - crop_h) / 2;
    g.src_x = x + (w - crop_w) / 2;
    g.src_h = crop_h;
    g.src_w = crop_w;
  }
  g.fy = box_factor(g.src_h, g.dst_h, p.antialias);
  g.fx = box_factor(g.src_w, g.dst_w, p.antialias);
  return g;
}

// One output sample of one axis: it blends box samples `lo` and `hi` (box j averages source pixels
// [j*f, min(j*f + f, in))) with weight `frac` on `hi`. Output o sits at box coordinate
// (o + 0.5) * in / (out * f) - 0.5, clamped at 0; past the last box both taps are the last box.
struct AxisTap {
  int64_t lo, hi;
  float frac;
};

METAEDGE_HD int64_t box_count(int64_t in, int64_t f) { return (in + f - 1) / f; }
METAEDGE_HD int64_t box_size(int64_t j, int64_t in, int64_t f) {
  const int64_t rest = in - j * f;
  return rest < f ? rest : f;
}

METAEDGE_HD AxisTap axis_tap(int64_t o, int64_t in, int64_t out, int64_t f) {
  const double ratio = static_cast<double>(in) / (static_cast<double>(out) * static_cast<double>(f));
  double src = (static_cast<double>(o) + 0.5) * ratio - 0.5;
  src = src > 0.0 ? src : 0.0;
  const int64_t boxes = box_count(in, f);
  int64_t lo = static_cast<int64_t>(src);
  lo = lo < boxes - 1 ? lo : boxes - 1;
  const int64_t hi = lo + 1 < boxes - 1 ? lo + 1 : boxes - 1;
  return {lo, hi, hi == lo ? 0.f : static_cast<float>(src - static_cast<double>(lo))};
}

}  // namespace metaedge
