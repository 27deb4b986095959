// uint8 HWC frames -> float32 CHW network input in one pass on the GPU, as jetson-inference's
// cudaTensorNormMean does: one thread per output pixel, bilinear taps (half-pixel centres, clamped at the
// borders, no antialias), colour conversion, inversion, /255 and (x - mean)/std folded into one affine map per
// output channel, planar writes coalesced along x. Same tap and affine arithmetic as csrc/cpu/preprocess.cpp
// (taps in double, interpolation and the affine map in float; the affine map and the dispatch are shared, in
// metaedge/preprocess_plan.h).
#include <algorithm>
#include <cstdint>

#include "cuda_common.cuh"
#include "cuda_kernels.h"
#include "metaedge/preprocess_plan.h"

namespace metaedge::cuda {
namespace {

using Affine = PreprocessAffine;

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
  const Affine f = make_preprocess_affine(images.size(3), out.size(1), params);
  dispatch_preprocess_layout(images.size(3), out.size(1), params.color, [&](auto in, auto out_channels, auto diagonal) {
    launch<decltype(in)::value, decltype(out_channels)::value, decltype(diagonal)::value>(images, params, out, f);
  });
}

}  // namespace metaedge::cuda
