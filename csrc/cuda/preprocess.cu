// uint8 HWC frames -> float32 CHW network input in one pass on the GPU, as jetson-inference's
// cudaTensorNormMean does: one thread per output pixel, bilinear taps (half-pixel centres, clamped at the
// borders, no antialias), colour conversion, inversion, /255 and (x - mean)/std folded into one affine map per
// output channel, planar writes coalesced along x. Same tap and affine arithmetic as csrc/cpu/preprocess.cpp
// (taps in double, interpolation and the affine map in float).
#include <algorithm>
#include <cstdint>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

namespace metaedge::cuda {
namespace {

struct Affine {
  float m[3][4];  // [output channel][input channel]
  float bias[3];
};

// Mirrors make_affine in csrc/cpu/preprocess.cpp: the luma weights sum to 1, so inverting before or after the
// gray conversion is the same.
Affine make_affine(int64_t in_channels, int64_t out_channels, const PreprocessParams& p) {
  static const float kLuma[3] = {0.299f, 0.587f, 0.114f};
  Affine f{};
  const float sign = p.invert ? -1.f : 1.f;
  for (int64_t oc = 0; oc < out_channels; ++oc) {
    const double gain = sign / (255.0 * p.std[oc]);
    if (p.color == ColorMode::kToGray && in_channels >= 3) {
      for (int k = 0; k < 3; ++k) f.m[oc][k] = static_cast<float>(kLuma[k] * gain);
    } else if (in_channels == 1) {
      f.m[oc][0] = static_cast<float>(gain);
    } else {
      f.m[oc][oc] = static_cast<float>(gain);
    }
    f.bias[oc] = static_cast<float>(((p.invert ? 1.0 : 0.0) - p.mean[oc]) / p.std[oc]);
  }
  return f;
}

struct Tap {
  int64_t lo, hi;
  float frac;
};

// Output index o samples the input at (o + 0.5) * in/out - 0.5, clamped at 0; past the last pixel both taps
// are the last pixel.
__device__ __forceinline__ Tap make_tap(int64_t o, int64_t in, double ratio) {
  const double src = fmax((static_cast<double>(o) + 0.5) * ratio - 0.5, 0.0);
  const int64_t lo = min(static_cast<int64_t>(src), in - 1);
  const int64_t hi = min(lo + 1, in - 1);
  return {lo, hi, hi == lo ? 0.f : static_cast<float>(src - static_cast<double>(lo))};
}

template <int kIn, int kOut, bool kDiagonal>
__global__ void preprocess_kernel(const uint8_t* __restrict__ src, int64_t b, int64_t h, int64_t w, int64_t H,
                                  int64_t W, double ratio_y, double ratio_x, Affine f, float* __restrict__ out) {
  constexpr int kUsed = kIn == 4 ? 3 : kIn;  // alpha is never read
  const int64_t total = b * H * W, plane = H * W;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int64_t x = idx % W;
    const int64_t rest = idx / W;
    const int64_t y = rest % H;
    const int64_t img = rest / H;
    const Tap tx = make_tap(x, w, ratio_x);
    const Tap ty = make_tap(y, h, ratio_y);
    const uint8_t* base = src + img * h * w * kIn;
    const uint8_t* top_row = base + ty.lo * w * kIn;
    const uint8_t* bottom_row = base + ty.hi * w * kIn;
    float v[kUsed];
#pragma unroll
    for (int k = 0; k < kUsed; ++k) {
      const float a = top_row[tx.lo * kIn + k], bb = top_row[tx.hi * kIn + k];
      const float c = bottom_row[tx.lo * kIn + k], dd = bottom_row[tx.hi * kIn + k];
      const float top = a + tx.frac * (bb - a);
      const float bottom = c + tx.frac * (dd - c);
      v[k] = top + ty.frac * (bottom - top);
    }
    float* o = out + img * kOut * plane + y * W + x;
#pragma unroll
    for (int oc = 0; oc < kOut; ++oc) {
      float acc = f.bias[oc];
      if (kDiagonal) {
        acc += f.m[oc][oc] * v[oc];
      } else {
#pragma unroll
        for (int k = 0; k < kUsed; ++k) acc += f.m[oc][k] * v[k];
      }
      o[oc * plane] = acc;
    }
  }
}

template <int kIn, int kOut, bool kDiagonal>
void launch(const Tensor& images, const PreprocessParams& p, const Tensor& out, const Affine& f) {
  const int64_t b = images.size(0), h = images.size(1), w = images.size(2);
  const int64_t H = p.out_height, W = p.out_width;
  const int64_t total = b * H * W;
  const int threads = 256;
  const LaunchLimits lim = launch_limits(images.device_index);
  const int64_t blocks = std::min<int64_t>(ceil_div(total, threads), static_cast<int64_t>(lim.multiprocessors) * 32);
  preprocess_kernel<kIn, kOut, kDiagonal><<<static_cast<unsigned>(blocks), threads, 0, stream_of(images)>>>(
      images.ptr<uint8_t>(), b, h, w, H, W, static_cast<double>(h) / static_cast<double>(H),
      static_cast<double>(w) / static_cast<double>(W), f, out.ptr<float>());
  METAEDGE_CUDA_CHECK_LAUNCH("preprocess");
}

}  // namespace

void preprocess(const Tensor& images, const PreprocessParams& params, const Tensor& out) {
  if (images.size(0) == 0) return;
  DeviceGuard guard(images.device_index);
  const int64_t in_channels = images.size(3);
  const int64_t out_channels = out.size(1);
  const Affine f = make_affine(in_channels, out_channels, params);
  const bool to_gray = params.color == ColorMode::kToGray;
  switch (in_channels) {
    case 1:
      if (out_channels == 1) launch<1, 1, true>(images, params, out, f);
      else launch<1, 3, false>(images, params, out, f);
      break;
    case 3:
      if (to_gray) launch<3, 1, false>(images, params, out, f);
      else launch<3, 3, true>(images, params, out, f);
      break;
    case 4:
      if (to_gray) launch<4, 1, false>(images, params, out, f);
      else launch<4, 3, true>(images, params, out, f);
      break;
    default:
      break;  // rejected by the checker
  }
}

}  // namespace metaedge::cuda
