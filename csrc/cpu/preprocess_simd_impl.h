// The row loops of the CPU pre-processing for one SIMD variant. Included by preprocess.cpp once per variant,
// inside namespace metaedge::cpu::preprocess_<variant> and its `#pragma GCC target` region: no include guard
// on purpose, and no standard-library templates in here (an instantiation made inside a target region could
// be shared with baseline code). The vectorisable loop (blending two source rows) is where wider vectors pay.

// Output channels from the interpolated input channels v[0..kUsed). `f` is a local copy: stores through `out`
// then cannot alias it, so its values stay in registers.
template <int kUsed, int kOut, bool kDiagonal>
static inline void store_pixel(const float* v, const PreprocessAffine& f, float* out, int64_t plane) {
  for (int oc = 0; oc < kOut; ++oc) {
    float acc = f.bias[oc];
    if (kDiagonal) {
      acc += f.m[oc][oc] * v[oc];
    } else {
      for (int k = 0; k < kUsed; ++k) acc += f.m[oc][k] * v[k];
    }
    out[oc * plane] = acc;
  }
}

// One output row straight from the four taps of every pixel: best when the image shrinks a lot, since
// only the pixels that are sampled are read.
template <int kIn, int kOut, bool kDiagonal>
static void resize_row_sampled(const uint8_t* row_top, const uint8_t* row_bottom, float wy, const Tap* xtaps,
                               int64_t out_w, const PreprocessAffine f, float* out, int64_t plane) {
  constexpr int kUsed = kIn == 4 ? 3 : kIn;  // alpha is never read
  for (int64_t x = 0; x < out_w; ++x) {
    const Tap& t = xtaps[x];
    float v[kUsed];
    for (int k = 0; k < kUsed; ++k) {
      const float a = row_top[t.lo + k], b = row_top[t.hi + k];
      const float c = row_bottom[t.lo + k], d = row_bottom[t.hi + k];
      const float top = a + t.frac * (b - a);
      const float bottom = c + t.frac * (d - c);
      v[k] = top + wy * (bottom - top);
    }
    store_pixel<kUsed, kOut, kDiagonal>(v, f, out + x, plane);
  }
}

// One output row in two passes: the two source rows blended vertically over their whole width (a
// contiguous, vectorised loop), then two taps per pixel along x. Best for moderate scale factors.
template <int kIn, int kOut, bool kDiagonal>
static void resize_row_separable(const uint8_t* __restrict row_top, const uint8_t* __restrict row_bottom, float wy,
                                 const Tap* xtaps, int64_t out_w, const PreprocessAffine f, float* out,
                                 int64_t plane, float* __restrict blend, int64_t row_len) {
  constexpr int kUsed = kIn == 4 ? 3 : kIn;
#pragma omp simd
  for (int64_t j = 0; j < row_len; ++j) {
    const float a = row_top[j];
    blend[j] = a + wy * (static_cast<float>(row_bottom[j]) - a);
  }
  for (int64_t x = 0; x < out_w; ++x) {
    const Tap& t = xtaps[x];
    float v[kUsed];
    for (int k = 0; k < kUsed; ++k) {
      const float a = blend[t.lo + k];
      v[k] = a + t.frac * (blend[t.hi + k] - a);
    }
    store_pixel<kUsed, kOut, kDiagonal>(v, f, out + x, plane);
  }
}

template <int kIn, int kOut, bool kDiagonal>
static void resize_rows_impl(const ResizeJob& job, int64_t r_begin, int64_t r_end, float* blend) {
  const int64_t H = job.out_h, W = job.out_w, plane = H * W;
  for (int64_t r = r_begin; r < r_end; ++r) {
    const int64_t img = r / H, y = r % H;
    const uint8_t* base = job.src + img * job.in_h * job.in_w * kIn;
    const Tap& ty = job.ytaps[y];
    float* out_row = job.dst + img * kOut * plane + y * W;
    if (job.separable)
      resize_row_separable<kIn, kOut, kDiagonal>(base + ty.lo, base + ty.hi, ty.frac, job.xtaps, W, job.affine,
                                                 out_row, plane, blend, job.in_w * kIn);
    else
      resize_row_sampled<kIn, kOut, kDiagonal>(base + ty.lo, base + ty.hi, ty.frac, job.xtaps, W, job.affine,
                                               out_row, plane);
  }
}

// Output rows [r_begin, r_end) of the batch (row r = image r / H, row r % H); `blend` holds in_w * in channels.
void resize_rows(const ResizeJob& job, int64_t r_begin, int64_t r_end, float* blend) {
  switch (job.layout) {
    case ResizeLayout::kGray: return resize_rows_impl<1, 1, true>(job, r_begin, r_end, blend);
    case ResizeLayout::kGrayToRgb: return resize_rows_impl<1, 3, false>(job, r_begin, r_end, blend);
    case ResizeLayout::kRgbToGray: return resize_rows_impl<3, 1, false>(job, r_begin, r_end, blend);
    case ResizeLayout::kRgb: return resize_rows_impl<3, 3, true>(job, r_begin, r_end, blend);
    case ResizeLayout::kRgbaToGray: return resize_rows_impl<4, 1, false>(job, r_begin, r_end, blend);
    case ResizeLayout::kRgbaToRgb: return resize_rows_impl<4, 3, true>(job, r_begin, r_end, blend);
  }
}
