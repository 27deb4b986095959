// uint8 frames (gray, RGB, BGR, RGBA, BGRA, NV12, YUYV; whole frames or regions) -> float32 CHW network input on
// the CPU, one fused pass per output image: region and placement (resize mode), optional box prefilter,
// bilinear resampling, colour conversion, inversion, /255 and (x - mean)/std. The shared maths is in
// metaedge/preprocess_plan.h; the row loops, compiled per SIMD variant, in preprocess_simd_impl.h.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

#include "cpu_kernels.h"
#include "metaedge/preprocess_plan.h"
#include "simd.h"

namespace metaedge::cpu {
namespace {

// Everything the row loops need for one output image, prepared in baseline code.
struct ImageJob {
  PixelFormat format;
  const uint8_t* frame;   // first byte of the frame
  int64_t row_stride;     // bytes
  int64_t frame_height;   // rows of the (Y) plane: nv12's chroma rows follow it
  int64_t frame_width;    // pixels per row
  ImageGeometry g;
  float* out;             // [out_channels, out_h, out_w] of this image
  int64_t out_h, out_w, out_channels;
  PreprocessAffine affine;
  // Horizontal taps per content column: with the box prefilter, box indices (relative to the region); without,
  // absolute pixel columns. Weights include the 1 / (box width) of the averages.
  const int64_t* x_lo;
  const int64_t* x_hi;
  const float* x_w0;
  const float* x_w1;
  // Vertical taps per content row: reduced rows (relative to the region), weights / (box height).
  const int64_t* y_lo;
  const int64_t* y_hi;
  const float* y_w0;
  const float* y_w1;
  bool wide_sums;         // 32-bit horizontal box sums (fx * fy > 257), else 16-bit
  uint16_t* scratch_acc;  // vertical sums of a reduced row (+ padding)
  uint16_t* scratch_acc2; // chroma sums at pixel resolution
  uint16_t* scratch_pairs;  // nv12 chroma sums per cell
  void* scratch_wide;     // a plane widened to 32 bits
  void* scratch_partial;  // sliding-sum partials
  float* scratch_sums;    // a reduced row's box sums, dense float planes [channel][box]
  const uint8_t** scratch_rows;  // pointers to the source rows of one box (<= 256)
  float* cache;           // two reduced rows of H: 2 * used channels * dst_w floats
  int64_t row_begin, row_end;
};

}  // namespace

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4,prefer-vector-width=512")
namespace preprocess_avx512 {
#include "preprocess_simd_impl.h"
}  // namespace preprocess_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace preprocess_avx2 {
#include "preprocess_simd_impl.h"
}  // namespace preprocess_avx2
#pragma GCC pop_options
#endif

namespace preprocess_baseline {
#include "preprocess_simd_impl.h"
}  // namespace preprocess_baseline

namespace {

using ImageRowsFn = void (*)(const ImageJob&);

ImageRowsFn image_rows_loop() {
  switch (simd_target()) {
#if defined(__x86_64__)
    case SimdTarget::kAvx512: return preprocess_avx512::image_rows;
    case SimdTarget::kAvx2: return preprocess_avx2::image_rows;
#endif
    default: return preprocess_baseline::image_rows;
  }
}

// 64-byte aligned storage (the box sums are read as 16-byte vectors).
template <typename T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) {
    void* p = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  template <typename U>
  bool operator==(const AlignedAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const AlignedAllocator<U>&) const { return false; }
};

// Taps of one axis for one (in, out, f, origin) - reused while they repeat (a camera's frames, one ROI size).
class AxisTaps {
 public:
  // `scale`: multiplies tap positions (pixels per box: f; or 1 for absolute pixels),
  // `origin`: added to them. With `normalise`, weights are divided by the size of the box they read.
  void prepare(int64_t in, int64_t out, int64_t f, int64_t scale, int64_t origin, bool normalise) {
    if (in == in_ && out == out_ && f == f_ && scale == scale_ && origin == origin_ && normalise == normalise_) return;
    lo.resize(static_cast<size_t>(out));
    hi.resize(static_cast<size_t>(out));
    w0.resize(static_cast<size_t>(out));
    w1.resize(static_cast<size_t>(out));
    for (int64_t o = 0; o < out; ++o) {
      const AxisTap t = axis_tap(o, in, out, f);
      const float n_lo = normalise ? static_cast<float>(box_size(t.lo, in, f)) : 1.f;
      const float n_hi = normalise ? static_cast<float>(box_size(t.hi, in, f)) : 1.f;
      lo[o] = origin + t.lo * scale;
      hi[o] = origin + t.hi * scale;
      w0[o] = (1.f - t.frac) / n_lo;
      w1[o] = t.frac / n_hi;
    }
    in_ = in, out_ = out, f_ = f, scale_ = scale, origin_ = origin, normalise_ = normalise;
  }
  std::vector<int64_t> lo, hi;
  std::vector<float> w0, w1;

 private:
  int64_t in_ = -1, out_ = -1, f_ = -1, scale_ = -1, origin_ = -1;
  bool normalise_ = false;
};

struct Scratch {
  AxisTaps xt, yt;
  std::vector<uint16_t> acc, acc2, pairs;
  std::vector<uint32_t> wide, partial;  // (the 16-bit path uses `partial` as twice as many halves)
  std::vector<float, AlignedAllocator<float>> sums;
  std::vector<const uint8_t*> rows = std::vector<const uint8_t*>(256);
  std::vector<float> cache;
};

void run_image(const ImageJob& base, Scratch& s, ImageRowsFn rows_loop) {
  ImageJob job = base;
  const ImageGeometry& g = job.g;
  const int used = used_channels(job.format);
  const bool box = g.fx > 1 || g.fy > 1;
  // With the box prefilter the taps are the first pixels of boxes (f pixels each) and divide by the box size;
  // without it they are absolute source columns.
  s.xt.prepare(g.src_w, g.dst_w, g.fx, 1, box ? 0 : g.src_x, box);
  s.yt.prepare(g.src_h, g.dst_h, g.fy, 1, 0, box);
  job.x_lo = s.xt.lo.data(), job.x_hi = s.xt.hi.data(), job.x_w0 = s.xt.w0.data(), job.x_w1 = s.xt.w1.data();
  job.y_lo = s.yt.lo.data(), job.y_hi = s.yt.hi.data(), job.y_w0 = s.yt.w0.data(), job.y_w1 = s.yt.w1.data();
  job.wide_sums = g.fx * g.fy > 257;  // 255 * fx * fy must fit 16 bits
  if (box) {
    // Room for any format: 4 elements per pixel (interleaved rgba, or yuyv's Y/U/Y/V), chroma at pixel
    // resolution (2 per pixel), the sliding sums' padding, and the float planes.
    const size_t elems = static_cast<size_t>(4 * (g.src_w + g.fx + 4));
    s.acc.resize(elems);
    s.acc2.resize(elems);
    s.pairs.resize(elems);
    s.wide.resize(elems);
    s.partial.resize(elems);
    s.sums.resize(elems);
    job.scratch_acc = s.acc.data();
    job.scratch_acc2 = s.acc2.data();
    job.scratch_pairs = s.pairs.data();
    job.scratch_wide = s.wide.data();
    job.scratch_partial = s.partial.data();
    job.scratch_sums = s.sums.data();
    job.scratch_rows = s.rows.data();
  }
  s.cache.resize(static_cast<size_t>(2 * used * g.dst_w));
  job.cache = s.cache.data();
  rows_loop(job);
}

}  // namespace

void preprocess(const Tensor& frames, const FrameLayout& layout, PixelFormat format, const Tensor* rois,
                const PreprocessParams& params, const Tensor& out) {
  const int64_t n = out.size(0), C = out.size(1), H = params.out_height, W = params.out_width;
  const ImageRowsFn rows_loop = image_rows_loop();
  ImageJob base{};
  base.format = format;
  base.row_stride = layout.row_stride;
  base.frame_height = layout.height;
  base.frame_width = layout.width;
  base.out_h = H, base.out_w = W, base.out_channels = C;
  base.affine = make_preprocess_affine(format, C, params);
  base.row_begin = 0, base.row_end = H;
  const uint8_t* data = frames.ptr<uint8_t>();
  const int64_t* boxes = rois ? rois->ptr<int64_t>() : nullptr;
  auto job_of = [&](int64_t i) {
    ImageJob job = base;
    job.g = boxes ? plan_geometry(0, boxes[4 * i], boxes[4 * i + 1], boxes[4 * i + 2], boxes[4 * i + 3], params)
                  : plan_geometry(i, 0, 0, layout.width, layout.height, params);
    job.frame = data + job.g.frame * layout.frame_stride;
    job.out = out.ptr<float>() + i * C * H * W;
    return job;
  };
  // A frame is well under a millisecond of work: threads pay off only for batches, and a team that waits
  // for a descheduled thread on a busy machine costs more than it saves. Below that size no OpenMP region is
  // entered at all (even a one-thread team costs about a microsecond).
  if (n == 1 || n * H * W * C <= (1 << 18)) {
    static thread_local Scratch scratch;
    for (int64_t i = 0; i < n; ++i) run_image(job_of(i), scratch, rows_loop);
    return;
  }
#pragma omp parallel
  {
    Scratch scratch;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) run_image(job_of(i), scratch, rows_loop);
  }
}

}  // namespace metaedge::cpu
