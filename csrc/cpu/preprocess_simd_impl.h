// The row loops of the CPU frame pre-processing for one SIMD variant. Included by preprocess.cpp once per
// variant, inside namespace metaedge::cpu::preprocess_<variant> and its `#pragma GCC target` region: no include
// guard on purpose, and no standard-library templates in here (an instantiation made inside a target region
// could be shared with baseline code).
//
// One output image is made row by row. Each output row blends two "reduced rows" of the source region
// (vertical taps), and each reduced row is turned once into `H`: its horizontally resampled samples, one plane
// per raw channel ([used channels][dst_w] floats, kept in a two-row cache so consecutive output rows share it).
// A reduced row is either one source row read in place (no prefilter), or - with the box prefilter - the sum of
// fy source rows (integer, exact), laid out as raw channels per pixel, then summed over fx pixels (sliding
// sums by doubling), from which the taps read. Box averages are divided out by the tap weights.

template <typename Acc>
static inline Acc add_to(Acc a, uint8_t b) {
  return static_cast<Acc>(a + static_cast<Acc>(b));
}

// dst[i] (=|+=) src[i] for i < n: the vertical box sum of one source row (vectorised: bytes -> 16/32 bits).
template <typename Acc>
static void accumulate_bytes(Acc* __restrict dst, const uint8_t* __restrict src, int64_t n, bool first) {
  if (first) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Acc>(src[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = add_to(dst[i], src[i]);
  }
}

// The fy source rows of reduced row j summed into canon[src_w * kCanon] (raw channels per pixel), followed by
// kCanon * fx zeros (the sliding sums read past the region's last pixel).
template <PixelFormat F, typename Acc>
static void vertical_box(const ImageJob& job, int64_t j, Acc* __restrict canon, Acc* __restrict tmp) {
  constexpr int kCanon = F == PixelFormat::kGray ? 1 : (F == PixelFormat::kRGBA || F == PixelFormat::kBGRA) ? 4 : 3;
  const ImageGeometry& g = job.g;
  const int64_t r0 = g.src_y + j * g.fy, r1 = r0 + box_size(j, g.src_h, g.fy);
  const int64_t n = g.src_w * kCanon;
  if constexpr (F == PixelFormat::kNV12) {
    // Y sums in tmp[0, src_w), chroma (U,V pairs of the cells under the region) in tmp[src_w, ...).
    const int64_t c0 = g.src_x >> 1, cells = ((g.src_x + g.src_w - 1) >> 1) - c0 + 1;
    Acc* ys = tmp;
    Acc* uv = tmp + g.src_w;
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* y_row = job.frame + r * job.row_stride;
      const uint8_t* uv_row = job.frame + (job.frame_height + (r >> 1)) * job.row_stride;
      accumulate_bytes(ys, y_row + g.src_x, g.src_w, r == r0);
      accumulate_bytes(uv, uv_row + 2 * c0, 2 * cells, r == r0);
    }
    for (int64_t i = 0; i < g.src_w; ++i) {
      const int64_t cell = ((g.src_x + i) >> 1) - c0;
      canon[3 * i] = ys[i];
      canon[3 * i + 1] = uv[2 * cell];
      canon[3 * i + 2] = uv[2 * cell + 1];
    }
  } else if constexpr (F == PixelFormat::kYUYV) {
    const int64_t c0 = g.src_x >> 1, cells = ((g.src_x + g.src_w - 1) >> 1) - c0 + 1;
    for (int64_t r = r0; r < r1; ++r)
      accumulate_bytes(tmp, job.frame + r * job.row_stride + 4 * c0, 4 * cells, r == r0);
    for (int64_t i = 0; i < g.src_w; ++i) {
      const int64_t x = g.src_x + i, cell = (x >> 1) - c0;
      canon[3 * i] = tmp[4 * cell + 2 * (x & 1)];
      canon[3 * i + 1] = tmp[4 * cell + 1];
      canon[3 * i + 2] = tmp[4 * cell + 3];
    }
  } else {
    for (int64_t r = r0; r < r1; ++r)
      accumulate_bytes(canon, job.frame + r * job.row_stride + g.src_x * kCanon, n, r == r0);
  }
  for (int64_t i = n; i < n + g.fx * kCanon; ++i) canon[i] = 0;
}

// out[i] = sum over t < f of a[i + t * step] for i < n, by doubling windows (log2(f) vectorised passes).
// `a` is overwritten; it must hold n + f * step elements (zeros past the data).
template <typename Acc>
static const Acc* sliding_sums(Acc* __restrict a, Acc* __restrict out, int64_t n, int64_t f, int64_t step) {
  if (f == 1) return a;
  const int64_t total = n + f * step;
  int64_t len = 1, offset = 0;
  bool started = false;
  for (int64_t bit = 1; bit <= f; bit <<= 1) {
    if (f & bit) {
      if (f == bit && !started) return a;  // a power of two: the window itself
      if (!started) {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) out[i] = a[i + offset * step];
        started = true;
      } else {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) out[i] = static_cast<Acc>(out[i] + a[i + offset * step]);
      }
      offset += len;
    }
    if (2 * bit > f) break;
    // windows of len -> 2 len (in place: each element reads one further along, not yet updated)
    const int64_t limit = total - 2 * len * step;
#pragma omp simd
    for (int64_t i = 0; i < limit; ++i) a[i] = static_cast<Acc>(a[i] + a[i + len * step]);
    len *= 2;
  }
  return out;
}

// H[k][x] = w0[x] * s[lo[x] + k] + w1[x] * s[hi[x] + k] for the colour channels k of the sums.
template <int kUsed, typename T>
static void gather_taps(const T* __restrict s, const ImageJob& job, float* __restrict h) {
  const int64_t w = job.g.dst_w;
  for (int64_t x = 0; x < w; ++x) {
    const T* a = s + job.x_lo[x];
    const T* b = s + job.x_hi[x];
    const float w0 = job.x_w0[x], w1 = job.x_w1[x];
    for (int k = 0; k < kUsed; ++k)
      h[k * w + x] = w0 * static_cast<float>(a[k]) + w1 * static_cast<float>(b[k]);
  }
}

// H of source row sy read in place (no prefilter): taps are absolute pixel positions.
template <PixelFormat F>
static void gather_direct(const ImageJob& job, int64_t sy, float* __restrict h) {
  const int64_t w = job.g.dst_w;
  const uint8_t* row = job.frame + sy * job.row_stride;
  if constexpr (F == PixelFormat::kNV12) {
    const uint8_t* uv = job.frame + (job.frame_height + (sy >> 1)) * job.row_stride;
    for (int64_t x = 0; x < w; ++x) {
      const int64_t a = job.x_lo[x], b = job.x_hi[x];
      const float w0 = job.x_w0[x], w1 = job.x_w1[x];
      h[x] = w0 * row[a] + w1 * row[b];
      h[w + x] = w0 * uv[2 * (a >> 1)] + w1 * uv[2 * (b >> 1)];
      h[2 * w + x] = w0 * uv[2 * (a >> 1) + 1] + w1 * uv[2 * (b >> 1) + 1];
    }
  } else if constexpr (F == PixelFormat::kYUYV) {
    for (int64_t x = 0; x < w; ++x) {
      const int64_t a = job.x_lo[x], b = job.x_hi[x];
      const float w0 = job.x_w0[x], w1 = job.x_w1[x];
      h[x] = w0 * row[2 * a] + w1 * row[2 * b];
      h[w + x] = w0 * row[4 * (a >> 1) + 1] + w1 * row[4 * (b >> 1) + 1];
      h[2 * w + x] = w0 * row[4 * (a >> 1) + 3] + w1 * row[4 * (b >> 1) + 3];
    }
  } else {
    constexpr int kCanon = F == PixelFormat::kGray ? 1 : (F == PixelFormat::kRGBA || F == PixelFormat::kBGRA) ? 4 : 3;
    constexpr int kUsed = F == PixelFormat::kGray ? 1 : 3;
    for (int64_t x = 0; x < w; ++x) {
      const uint8_t* a = row + job.x_lo[x] * kCanon;
      const uint8_t* b = row + job.x_hi[x] * kCanon;
      const float w0 = job.x_w0[x], w1 = job.x_w1[x];
      for (int k = 0; k < kUsed; ++k) h[k * w + x] = w0 * a[k] + w1 * b[k];
    }
  }
}

template <PixelFormat F, typename Acc>
static void reduced_row(const ImageJob& job, int64_t j, float* h) {
  constexpr int kCanon = F == PixelFormat::kGray ? 1 : (F == PixelFormat::kRGBA || F == PixelFormat::kBGRA) ? 4 : 3;
  constexpr int kUsed = F == PixelFormat::kGray ? 1 : 3;
  const ImageGeometry& g = job.g;
  if (g.fx == 1 && g.fy == 1) return gather_direct<F>(job, g.src_y + j, h);
  Acc* canon = static_cast<Acc*>(job.scratch_canon);
  Acc* spare = static_cast<Acc*>(job.scratch_spare);
  vertical_box<F, Acc>(job, j, canon, spare);
  const Acc* sums = sliding_sums(canon, spare, g.src_w * kCanon, g.fx, kCanon);
  gather_taps<kUsed>(sums, job, h);
}

// Output rows [row_begin, row_end) of one image: v_k = a * H_lo[k] + b * H_hi[k], out = M v + bias.
template <PixelFormat F, typename Acc, int kOut>
static void image_rows_impl(const ImageJob& job) {
  constexpr int kUsed = F == PixelFormat::kGray ? 1 : 3;
  const ImageGeometry& g = job.g;
  const int64_t W = job.out_w, plane = job.out_h * job.out_w, cw = g.dst_w;
  const PreprocessAffine f = job.affine;
  int64_t tag[2] = {-1, -1};
  float* rows[2] = {job.cache, job.cache + kUsed * cw};
  auto fetch = [&](int64_t j, int64_t keep) -> const float* {
    if (tag[0] == j) return rows[0];
    if (tag[1] == j) return rows[1];
    const int slot = tag[0] == keep ? 1 : 0;
    reduced_row<F, Acc>(job, j, rows[slot]);
    tag[slot] = j;
    return rows[slot];
  };
  for (int64_t oy = job.row_begin; oy < job.row_end; ++oy) {
    float* out_row = job.out + oy * W;
    const int64_t y = oy - g.dst_y;
    if (y < 0 || y >= g.dst_h) {
      for (int oc = 0; oc < kOut; ++oc)
        for (int64_t x = 0; x < W; ++x) out_row[oc * plane + x] = f.pad[oc];
      continue;
    }
    const int64_t j0 = job.y_lo[y], j1 = job.y_hi[y];
    const float* h0 = fetch(j0, j1);
    const float* h1 = fetch(j1, j0);
    const float a = job.y_w0[y], b = job.y_w1[y];
    for (int oc = 0; oc < kOut; ++oc) {
      float* o = out_row + oc * plane;
      for (int64_t x = 0; x < g.dst_x; ++x) o[x] = f.pad[oc];
      for (int64_t x = g.dst_x + cw; x < W; ++x) o[x] = f.pad[oc];
      o += g.dst_x;
      float m[kUsed];
      for (int k = 0; k < kUsed; ++k) m[k] = f.m[oc][k];
      const float bias = f.bias[oc];
#pragma omp simd
      for (int64_t x = 0; x < cw; ++x) {
        float acc = bias;
        for (int k = 0; k < kUsed; ++k) acc += m[k] * (a * h0[k * cw + x] + b * h1[k * cw + x]);
        o[x] = acc;
      }
    }
  }
}

template <PixelFormat F, typename Acc>
static void image_rows_out(const ImageJob& job) {
  if (job.out_channels == 1) image_rows_impl<F, Acc, 1>(job);
  else image_rows_impl<F, Acc, 3>(job);
}

template <PixelFormat F>
static void image_rows_format(const ImageJob& job) {
  if (job.wide_sums) image_rows_out<F, uint32_t>(job);
  else image_rows_out<F, uint16_t>(job);
}

// Output rows [job.row_begin, job.row_end) of one image.
void image_rows(const ImageJob& job) {
  switch (job.format) {
    case PixelFormat::kGray: return image_rows_format<PixelFormat::kGray>(job);
    // B,G,R frames sample like R,G,B ones; the affine map puts the channels in their place.
    case PixelFormat::kRGB:
    case PixelFormat::kBGR: return image_rows_format<PixelFormat::kRGB>(job);
    case PixelFormat::kRGBA:
    case PixelFormat::kBGRA: return image_rows_format<PixelFormat::kRGBA>(job);
    case PixelFormat::kNV12: return image_rows_format<PixelFormat::kNV12>(job);
    case PixelFormat::kYUYV: return image_rows_format<PixelFormat::kYUYV>(job);
  }
}
