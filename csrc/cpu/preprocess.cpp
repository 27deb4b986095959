// uint8 HWC images -> float32 CHW network input on the CPU, one fused pass per output row: bilinear resize
// (half-pixel centres, no antialias), colour conversion, inversion, /255 and (x - mean)/std.
// Every step after the resize is affine in the pixel values, so they fold into one per-output-channel
// matrix and bias: out_oc = sum_k M[oc][k] * v_k + bias[oc], v = the interpolated input channels.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_kernels.h"
#include "metaedge/preprocess_plan.h"
#include "simd.h"

namespace metaedge::cpu {
namespace {

// Output index o samples the input at (o + 0.5) * in/out - 0.5 (clamped at 0), between `lo` and `hi` with
// weight `frac` on `hi`; past the last input pixel both taps are the last pixel.
struct Tap {
  int64_t lo, hi;
  float frac;
};

void fill_taps(std::vector<Tap>& taps, int64_t in, int64_t out, int64_t stride) {
  taps.resize(static_cast<size_t>(out));
  const double ratio = static_cast<double>(in) / static_cast<double>(out);
  for (int64_t o = 0; o < out; ++o) {
    const double src = std::max((static_cast<double>(o) + 0.5) * ratio - 0.5, 0.0);
    const int64_t lo = std::min(static_cast<int64_t>(src), in - 1);
    const int64_t hi = std::min(lo + 1, in - 1);
    taps[o] = {lo * stride, hi * stride, hi == lo ? 0.f : static_cast<float>(src - static_cast<double>(lo))};
  }
}

// The taps of the last call on this thread, reused while the sizes repeat (a camera's frames): no
// allocation or double maths per frame.
class TapCache {
 public:
  const Tap* get(int64_t in, int64_t out, int64_t stride) {
    if (in != in_ || out != out_ || stride != stride_) {
      fill_taps(taps_, in, out, stride);
      in_ = in, out_ = out, stride_ = stride;
    }
    return taps_.data();
  }

 private:
  int64_t in_ = -1, out_ = -1, stride_ = -1;
  std::vector<Tap> taps_;
};

// Which loop instance a call needs (input channels -> output channels), from dispatch_preprocess_layout.
enum class ResizeLayout { kGray, kGrayToRgb, kRgbToGray, kRgb, kRgbaToGray, kRgbaToRgb };

// Everything the row loops need, prepared once per call in baseline code.
struct ResizeJob {
  ResizeLayout layout;
  const uint8_t* src;
  float* dst;
  int64_t in_h, in_w, out_h, out_w;
  const Tap* xtaps;
  const Tap* ytaps;
  PreprocessAffine affine;
  bool separable;
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

using ResizeRowsFn = void (*)(const ResizeJob&, int64_t, int64_t, float*);

ResizeRowsFn resize_rows_loop() {
  switch (simd_target()) {
#if defined(__x86_64__)
    case SimdTarget::kAvx512: return preprocess_avx512::resize_rows;
    case SimdTarget::kAvx2: return preprocess_avx2::resize_rows;
#endif
    default: return preprocess_baseline::resize_rows;
  }
}

template <int kIn, int kOut, bool kDiagonal>
constexpr ResizeLayout layout_of() {
  if constexpr (kIn == 1) return kOut == 1 ? ResizeLayout::kGray : ResizeLayout::kGrayToRgb;
  else if constexpr (kIn == 3) return kOut == 1 ? ResizeLayout::kRgbToGray : ResizeLayout::kRgb;
  else return kOut == 1 ? ResizeLayout::kRgbaToGray : ResizeLayout::kRgbaToRgb;
}

}  // namespace

void preprocess(const Tensor& images, const PreprocessParams& params, const Tensor& out) {
  const int64_t b = images.size(0), h = images.size(1), w = images.size(2), c = images.size(3);
  const int64_t H = params.out_height, W = params.out_width, out_channels = out.size(1);
  static thread_local TapCache x_cache, y_cache;
  ResizeJob job{};
  dispatch_preprocess_layout(c, out_channels, params.color, [&](auto in, auto oc, auto diagonal) {
    job.layout = layout_of<decltype(in)::value, decltype(oc)::value, decltype(diagonal)::value>();
  });
  job.src = images.ptr<uint8_t>();
  job.dst = out.ptr<float>();
  job.in_h = h, job.in_w = w, job.out_h = H, job.out_w = W;
  job.xtaps = x_cache.get(w, W, c), job.ytaps = y_cache.get(h, H, w * c);
  job.affine = make_preprocess_affine(c, out_channels, params);
  // Blending whole source rows costs w per output row (a vectorised loop) against four scalar taps per output
  // pixel for sampling: blending wins up to about 8x shrinking (105x105 -> 28x28 gray: 2.6 vs 3.5 us a call).
  job.separable = w <= 8 * W;
  const ResizeRowsFn rows_loop = resize_rows_loop();
  const int64_t rows = b * H;
  const size_t blend_len = job.separable ? static_cast<size_t>(w * c) : 0;
  // A frame is well under a millisecond of work: threads pay off only for batches, and a team that waits
  // for a descheduled thread on a busy machine costs more than it saves. Below that size no OpenMP region is
  // entered at all (even a one-thread team costs about a microsecond).
  if (rows * W * out_channels <= (1 << 18)) {
    static thread_local std::vector<float> blend;  // one source row: a few KiB, kept
    blend.resize(blend_len);
    rows_loop(job, 0, rows, blend.data());
    return;
  }
#pragma omp parallel
  {
    std::vector<float> blend(blend_len);
#pragma omp for schedule(dynamic, 16)
    for (int64_t r = 0; r < rows; ++r) rows_loop(job, r, r + 1, blend.data());
  }
}

}  // namespace metaedge::cpu
