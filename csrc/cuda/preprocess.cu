// uint8 frames (gray, RGB, BGR, RGBA, BGRA, NV12, YUYV; whole frames or regions) -> float32 CHW network input in
// one pass on the GPU, as jetson-inference's cudaTensorNormMean does: one thread per output pixel. The
// geometry (resize mode, box prefilter factors), the taps of each axis and the affine colour map are the
// CPU kernel's (metaedge/preprocess_plan.h); a thread sums the (at most 2 x 2) boxes its bilinear taps read,
// in float (box sums of uint8 stay exact below 2^24), and applies the affine map.
#include <algorithm>
#include <cstdint>

#include "cuda_common.cuh"
#include "cuda_kernels.h"
#include "metaedge/preprocess_plan.h"

namespace metaedge::cuda {
namespace {

constexpr int kImagesPerLaunch = 16;  // geometry passed by value, within the 4 KiB of kernel parameters

struct LaunchImages {
  ImageGeometry g[kImagesPerLaunch];
  int64_t first;  // index of g[0] in the output batch
  int64_t count;
};

struct FrameMemory {
  const uint8_t* data;
  int64_t row_stride, frame_stride, height;
};

// The raw channels of pixel (x, y) of frame `base`: gray 1, R/B,G,B/R 3, Y,U,V 3 (alpha never read).
template <PixelFormat F>
__device__ __forceinline__ void read_pixel(const FrameMemory& m, const uint8_t* base, int64_t x, int64_t y,
                                           float* v) {
  const uint8_t* row = base + y * m.row_stride;
  if constexpr (F == PixelFormat::kGray) {
    v[0] = row[x];
  } else if constexpr (F == PixelFormat::kRGB || F == PixelFormat::kBGR) {
    v[0] = row[3 * x], v[1] = row[3 * x + 1], v[2] = row[3 * x + 2];
  } else if constexpr (F == PixelFormat::kRGBA || F == PixelFormat::kBGRA) {
    v[0] = row[4 * x], v[1] = row[4 * x + 1], v[2] = row[4 * x + 2];
  } else if constexpr (F == PixelFormat::kNV12) {
    const uint8_t* uv = base + (m.height + (y >> 1)) * m.row_stride + 2 * (x >> 1);
    v[0] = row[x], v[1] = uv[0], v[2] = uv[1];
  } else {  // YUYV
    const uint8_t* pair = row + 4 * (x >> 1);
    v[0] = pair[2 * (x & 1)], v[1] = pair[1], v[2] = pair[3];
  }
}

template <PixelFormat F, int kOut>
__global__ void preprocess_kernel(FrameMemory m, LaunchImages images, int64_t H, int64_t W, PreprocessAffine f,
                                  float* __restrict__ out) {
  constexpr int kUsed = F == PixelFormat::kGray ? 1 : 3;
  const int64_t plane = H * W, total = images.count * plane;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int64_t local = idx / plane, pix = idx % plane;
    const int64_t oy = pix / W, ox = pix % W;
    const ImageGeometry& g = images.g[local];
    float* o = out + (images.first + local) * kOut * plane + pix;
    const int64_t y = oy - g.dst_y, x = ox - g.dst_x;
    if (y < 0 || y >= g.dst_h || x < 0 || x >= g.dst_w) {
#pragma unroll
      for (int oc = 0; oc < kOut; ++oc) o[oc * plane] = f.pad[oc];
      continue;
    }
    const uint8_t* base = m.data + g.frame * m.frame_stride;
    const AxisTap ty = axis_tap(y, g.src_h, g.dst_h, g.fy);
    const AxisTap tx = axis_tap(x, g.src_w, g.dst_w, g.fx);
    float v[kUsed] = {};
    for (int a = 0; a < 2; ++a) {
      const int64_t jy = a ? ty.hi : ty.lo;
      const float wy = (a ? ty.frac : 1.f - ty.frac) / static_cast<float>(box_size(jy, g.src_h, g.fy));
      for (int b = 0; b < 2; ++b) {
        const int64_t jx = b ? tx.hi : tx.lo;
        const float wx = (b ? tx.frac : 1.f - tx.frac) / static_cast<float>(box_size(jx, g.src_w, g.fx));
        float s[kUsed] = {};
        const int64_t y0 = g.src_y + jy * g.fy, y1 = y0 + box_size(jy, g.src_h, g.fy);
        const int64_t x0 = g.src_x + jx * g.fx, x1 = x0 + box_size(jx, g.src_w, g.fx);
        for (int64_t sy = y0; sy < y1; ++sy) {
          for (int64_t sx = x0; sx < x1; ++sx) {
            float p[3];
            read_pixel<F>(m, base, sx, sy, p);
#pragma unroll
            for (int k = 0; k < kUsed; ++k) s[k] += p[k];
          }
        }
#pragma unroll
        for (int k = 0; k < kUsed; ++k) v[k] += wy * wx * s[k];
      }
    }
#pragma unroll
    for (int oc = 0; oc < kOut; ++oc) {
      float acc = f.bias[oc];
#pragma unroll
      for (int k = 0; k < kUsed; ++k) acc += f.m[oc][k] * v[k];
      o[oc * plane] = acc;
    }
  }
}

template <PixelFormat F, int kOut>
void launch(const Tensor& frames, const FrameMemory& m, const LaunchImages& images, const PreprocessParams& p,
            const PreprocessAffine& f, const Tensor& out) {
  const int64_t total = images.count * p.out_height * p.out_width;
  const int threads = 256;
  const LaunchLimits lim = launch_limits(frames.device_index);
  const int64_t blocks = std::min<int64_t>(ceil_div(total, threads), static_cast<int64_t>(lim.multiprocessors) * 32);
  preprocess_kernel<F, kOut><<<static_cast<unsigned>(blocks), threads, 0, stream_of(frames)>>>(
      m, images, p.out_height, p.out_width, f, out.ptr<float>());
  METAEDGE_CUDA_CHECK_LAUNCH("preprocess");
}

template <PixelFormat F>
void launch_format(const Tensor& frames, const FrameMemory& m, const LaunchImages& images, const PreprocessParams& p,
                   const PreprocessAffine& f, const Tensor& out) {
  if (out.size(1) == 1) launch<F, 1>(frames, m, images, p, f, out);
  else launch<F, 3>(frames, m, images, p, f, out);
}

}  // namespace

void preprocess(const Tensor& frames, const FrameLayout& layout, PixelFormat format, const Tensor* rois,
                const PreprocessParams& params, const Tensor& out) {
  DeviceGuard guard(frames.device_index);
  const int64_t n = out.size(0);
  const PreprocessAffine f = make_preprocess_affine(format, out.size(1), params);
  const FrameMemory m{frames.ptr<uint8_t>(), layout.row_stride, layout.frame_stride, layout.height};
  const int64_t* boxes = rois ? rois->ptr<int64_t>() : nullptr;  // host memory (checked)
  for (int64_t first = 0; first < n; first += kImagesPerLaunch) {
    LaunchImages images{};
    images.first = first;
    images.count = std::min<int64_t>(kImagesPerLaunch, n - first);
    for (int64_t k = 0; k < images.count; ++k) {
      const int64_t i = first + k;
      images.g[k] = boxes ? plan_geometry(0, boxes[4 * i], boxes[4 * i + 1], boxes[4 * i + 2], boxes[4 * i + 3], params)
                          : plan_geometry(i, 0, 0, layout.width, layout.height, params);
    }
    switch (format) {
      case PixelFormat::kGray: launch_format<PixelFormat::kGray>(frames, m, images, params, f, out); break;
      case PixelFormat::kRGB:
      case PixelFormat::kBGR: launch_format<PixelFormat::kRGB>(frames, m, images, params, f, out); break;
      case PixelFormat::kRGBA:
      case PixelFormat::kBGRA: launch_format<PixelFormat::kRGBA>(frames, m, images, params, f, out); break;
      case PixelFormat::kNV12: launch_format<PixelFormat::kNV12>(frames, m, images, params, f, out); break;
      case PixelFormat::kYUYV: launch_format<PixelFormat::kYUYV>(frames, m, images, params, f, out); break;
    }
  }
}

}  // namespace metaedge::cuda
