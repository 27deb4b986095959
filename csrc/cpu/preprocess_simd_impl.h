// The row loops of the CPU frame pre-processing for one SIMD variant. Included by preprocess.cpp once per
// variant, inside namespace metaedge::cpu::preprocess_<variant> and its `#pragma GCC target` region: no include
// guard on purpose, and no standard-library templates in here (an instantiation made inside a target region
// could be shared with baseline code).
//
// One output image is made row by row. Each output row blends two "reduced rows" of the source region
// (vertical taps), and each reduced row is turned once into `H`: its horizontally resampled samples, one plane
// per raw channel ([used channels][dst_w] floats, kept in a two-row cache so consecutive output rows share it).
// A reduced row is either one source row read in place (no prefilter), or - with the box prefilter - the sum of
// fy source rows (integer, exact; nv12/yuyv chroma per cell, or repeated per pixel when boxes cut cells), then
// summed over fx pixels (sliding sums by doubling, written as floats), from which the taps read. Box averages
// are divided out by the tap weights.

// Four channels of one pixel in a vector: loaded from 4 bytes or 4 uint16 at once and converted in one go
// (the fourth lane is the next pixel's first channel, alpha or padding, and is never used).
typedef float F4 __attribute__((vector_size(16)));
typedef uint8_t U8x16 __attribute__((vector_size(16)));
typedef uint16_t U16x8 __attribute__((vector_size(16)));
typedef uint32_t U32x4 __attribute__((vector_size(16)));
typedef int32_t I32x4 __attribute__((vector_size(16)));

// (Zero-extension by a shuffle with a zero vector, then one int -> float conversion: converting a 4-byte vector
// directly is done lane by lane by the compiler.)
static inline F4 load4(const uint8_t* p) {
  U8x16 v = {};
  __builtin_memcpy(&v, p, 4);
  const U8x16 spread = __builtin_shuffle(v, U8x16{}, U8x16{0, 16, 16, 16, 1, 16, 16, 16, 2, 16, 16, 16, 3, 16, 16, 16});
  return __builtin_convertvector(__builtin_bit_cast(I32x4, spread), F4);
}
template <typename Sum>
static inline F4 load4(const Sum* p) {
  if constexpr (sizeof(Sum) == 2) {
    U16x8 v = {};
    __builtin_memcpy(&v, p, 8);
    const U16x8 spread = __builtin_shuffle(v, U16x8{}, U16x8{0, 8, 1, 8, 2, 8, 3, 8});
    return __builtin_convertvector(__builtin_bit_cast(I32x4, spread), F4);
  } else {  // 32-bit sums stay far below 2^31: exact as int32
    U32x4 v;
    __builtin_memcpy(&v, p, 16);
    return __builtin_convertvector(__builtin_bit_cast(I32x4, v), F4);
  }
}

// dst[i] (=|+=) the sum of rows[0..n_rows)[i] for i < n: the vertical box sum of source rows (vectorised: bytes
// -> 16/32 bits), up to four rows per pass over `dst`.
template <typename Acc>
static void accumulate_rows(Acc* __restrict dst, const uint8_t* const* rows, int64_t n_rows, int64_t n) {
  int64_t r = 0;
  bool first = true;
  for (; r + 4 <= n_rows; r += 4, first = false) {
    const uint8_t* __restrict a = rows[r];
    const uint8_t* __restrict b = rows[r + 1];
    const uint8_t* __restrict c = rows[r + 2];
    const uint8_t* __restrict d = rows[r + 3];
    if (first) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Acc>(Acc(a[i]) + Acc(b[i]) + Acc(c[i]) + Acc(d[i]));
    } else {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Acc>(dst[i] + Acc(a[i]) + Acc(b[i]) + Acc(c[i]) + Acc(d[i]));
    }
  }
  for (; r + 2 <= n_rows; r += 2, first = false) {
    const uint8_t* __restrict a = rows[r];
    const uint8_t* __restrict b = rows[r + 1];
    if (first) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Acc>(Acc(a[i]) + Acc(b[i]));
    } else {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Acc>(dst[i] + Acc(a[i]) + Acc(b[i]));
    }
  }
  if (r < n_rows) {
    const uint8_t* __restrict a = rows[r];
    if (first) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Acc>(a[i]);
    } else {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Acc>(dst[i] + Acc(a[i]));
    }
  }
}

// The sums of f consecutive elements a[i], a[i + step], ..., a[i + (f - 1) step] for i < n, by doubling windows
// (log2(f) vectorised passes); returns where they are (`a` itself, or `partial`). `a` is overwritten and holds
// n + f * step elements (zeros past n).
template <typename Acc>
static const Acc* sliding_sums(Acc* __restrict a, int64_t n, int64_t f, int64_t step, Acc* __restrict partial) {
  const int64_t total = n + f * step;
  int64_t len = 1, offset = 0;
  bool started = false;
  for (int64_t bit = 1; bit <= f; bit <<= 1) {
    if (f & bit) {
      if (2 * bit > f) {  // the highest bit: its window, plus what the lower bits gathered
        if (!started) return a + offset * step;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) partial[i] = static_cast<Acc>(partial[i] + a[i + offset * step]);
        return partial;
      }
      if (!started) {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) partial[i] = a[i + offset * step];
        started = true;
      } else {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) partial[i] = static_cast<Acc>(partial[i] + a[i + offset * step]);
      }
      offset += len;
    }
    // windows of len -> 2 len (in place: each element reads one further along, not yet updated)
    const int64_t limit = total - 2 * len * step;
#pragma omp simd
    for (int64_t i = 0; i < limit; ++i) a[i] = static_cast<Acc>(a[i] + a[i + len * step]);
    len *= 2;
  }
  return a;  // (f >= 1 always returns above)
}

// The (U, V) sums of each chroma cell repeated for the two pixels it covers: uv_full[2 i + {0, 1}] for the
// pixels i < n of a region starting at column x0 (cell c0 = x0 >> 1 first). `cells` holds (U, V) pairs (nv12) or
// (Y, U, Y, V) quads (yuyv). Written a pair (two Acc) at a time - a shuffle the compiler vectorises - from one
// pair before uv_full when x0 is odd (the caller leaves room).
template <typename Acc, bool kQuads>
static void chroma_per_pixel(const Acc* __restrict cells, Acc* __restrict uv_full, int64_t x0, int64_t n) {
  const int64_t c0 = x0 >> 1, count = ((x0 + n - 1) >> 1) - c0 + 1;
  Acc* __restrict out = uv_full - 2 * (x0 & 1);
  for (int64_t c = 0; c < count; ++c) {
    const Acc u = cells[kQuads ? 4 * c + 1 : 2 * c], v = cells[kQuads ? 4 * c + 3 : 2 * c + 1];
    out[4 * c] = u, out[4 * c + 1] = v, out[4 * c + 2] = u, out[4 * c + 3] = v;
  }
}

// The sliding sums of one plane of vertical sums (uint16: fy <= 256 rows of uint8 always fit), in Sum arithmetic
// (uint16 while fx * fy * 255 fits, else uint32: the plane is widened first); the planes hold n elements plus
// room for the padding.
template <typename Sum>
static const Sum* plane_sums(uint16_t* __restrict plane, int64_t n, int64_t f, int64_t step, Sum* __restrict wide,
                             Sum* __restrict partial) {
  Sum* a;
  if constexpr (sizeof(Sum) == sizeof(uint16_t)) {
    a = reinterpret_cast<Sum*>(plane);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) wide[i] = plane[i];
    a = wide;
  }
  for (int64_t i = n; i < n + f * step; ++i) a[i] = 0;
  return sliding_sums(a, n, f, step, partial);
}

// Reduced row j with the box prefilter: the fy source rows summed (exact integers), then fx pixels summed along
// the row (sliding sums), then each box's sums as floats: out[p] (gray), or out[4 p + k] for colour channels k
// (four floats a box, 16-byte aligned: one vector per box for the taps).
template <PixelFormat F, typename Sum>
static void box_sums(const ImageJob& job, int64_t j, float* __restrict out) {
  const ImageGeometry& g = job.g;
  const int64_t r0 = g.src_y + j * g.fy, rows = box_size(j, g.src_h, g.fy);
  const uint8_t** row_ptrs = job.scratch_rows;           // the source rows of the box (at most 256)
  uint16_t* acc = job.scratch_acc;                        // vertical sums, + padding
  uint16_t* acc2 = job.scratch_acc2 + 2;                  // chroma per pixel (room for one pair before it)
  Sum* wide = static_cast<Sum*>(job.scratch_wide);        // a plane widened to 32 bits (when Sum is)
  Sum* partial = static_cast<Sum*>(job.scratch_partial);
  const int64_t w = g.src_w, f = g.fx, boxes = box_count(w, f);
  if constexpr (F == PixelFormat::kNV12 || F == PixelFormat::kYUYV) {
    const int64_t c0 = g.src_x >> 1, cells = ((g.src_x + w - 1) >> 1) - c0 + 1;
    // With boxes of an even width on a region of whole chroma cells (a cell is two pixels wide), every box
    // holds whole cells: the sums are made over cells, in place (no copy of the chroma per pixel, one pass fewer
    // over each plane), and the chroma doubled (a cell's chroma stands for two pixels). Otherwise boxes cut
    // cells, and the chroma is first repeated for the two pixels of each cell. Both give the same integers.
    const bool whole_cells = f % 2 == 0 && (g.src_x & 1) == 0 && (w & 1) == 0;
    int64_t y_step = 1, y_offset = 0;
    uint16_t* cell_sums;  // the (U, V) pairs (nv12) or (Y, U, Y, V) quads (yuyv) of the region's cells
    if constexpr (F == PixelFormat::kNV12) {
      uint16_t* pairs = job.scratch_pairs;
      for (int64_t r = 0; r < rows; ++r) row_ptrs[r] = job.frame + (r0 + r) * job.row_stride + g.src_x;
      accumulate_rows(acc, row_ptrs, rows, w);
      for (int64_t r = 0; r < rows; ++r)  // a chroma row per luma row: rows of one cell pair count twice
        row_ptrs[r] = job.frame + (job.frame_height + ((r0 + r) >> 1)) * job.row_stride + 2 * c0;
      accumulate_rows(pairs, row_ptrs, rows, 2 * cells);
      cell_sums = pairs;
    } else {
      for (int64_t r = 0; r < rows; ++r) row_ptrs[r] = job.frame + (r0 + r) * job.row_stride + 4 * c0;
      accumulate_rows(acc, row_ptrs, rows, 4 * cells);
      cell_sums = acc;
      // Y of pixel i sits at 2 (i + (x0 & 1)): a plane with step 2 (the odd elements, U/V sums, are not read)
      y_step = 2, y_offset = 2 * (g.src_x & 1);
    }
    if (whole_cells) {
      // Every plane summed over f / 2 cells, a cell's elements apart (nv12: Y0 Y1 | U V; yuyv: Y0 U Y1 V), in
      // place; a box's Y is the sum of its cells' Y0 and Y1 sums, its U and V twice the cells'.
      if constexpr (F == PixelFormat::kNV12) {
        const Sum* ys = plane_sums(acc, w, f / 2, 2, wide, partial);
        for (int64_t p = 0; p < boxes; ++p)
          out[4 * p] = static_cast<float>(ys[f * p]) + static_cast<float>(ys[f * p + 1]);
        const Sum* uv = plane_sums(cell_sums, 2 * cells, f / 2, 2, wide, partial);
        for (int64_t p = 0; p < boxes; ++p) {
          out[4 * p + 1] = 2.f * static_cast<float>(uv[f * p]);
          out[4 * p + 2] = 2.f * static_cast<float>(uv[f * p + 1]);
          out[4 * p + 3] = 0.f;
        }
      } else {
        const Sum* q = plane_sums(acc, 4 * cells, f / 2, 4, wide, partial);
        for (int64_t p = 0; p < boxes; ++p) {
          const Sum* box = q + 2 * f * p;
          out[4 * p] = static_cast<float>(box[0]) + static_cast<float>(box[2]);
          out[4 * p + 1] = 2.f * static_cast<float>(box[1]);
          out[4 * p + 2] = 2.f * static_cast<float>(box[3]);
          out[4 * p + 3] = 0.f;
        }
      }
      return;
    }
    chroma_per_pixel<uint16_t, F == PixelFormat::kYUYV>(cell_sums, acc2, g.src_x, w);
    const Sum* ys = plane_sums(acc, w * y_step + y_offset, f, y_step, wide, partial);
    for (int64_t p = 0; p < boxes; ++p) out[4 * p] = static_cast<float>(ys[y_offset + p * f * y_step]);
    const Sum* uv = plane_sums(acc2, 2 * w, f, 2, wide, partial);
    for (int64_t p = 0; p < boxes; ++p) {
      out[4 * p + 1] = static_cast<float>(uv[2 * f * p]);
      out[4 * p + 2] = static_cast<float>(uv[2 * f * p + 1]);
      out[4 * p + 3] = 0.f;
    }
  } else {
    constexpr int kCanon = F == PixelFormat::kGray ? 1 : (F == PixelFormat::kRGBA || F == PixelFormat::kBGRA) ? 4 : 3;
    for (int64_t r = 0; r < rows; ++r) row_ptrs[r] = job.frame + (r0 + r) * job.row_stride + g.src_x * kCanon;
    accumulate_rows(acc, row_ptrs, rows, w * kCanon);
    // Boxes of an even width are summed in two halves - every other pixel, one doubling pass fewer - and a box
    // adds its even and its odd pixels' sums. (Made one pixel further, a zero: the odd half of a last box of one
    // pixel.)
    const int64_t halves = f % 2 == 0 ? 2 : 1, n = (w + halves - 1) * kCanon;
    for (int64_t i = w * kCanon; i < n; ++i) acc[i] = 0;
    const Sum* sums = plane_sums(acc, n, f / halves, halves * kCanon, wide, partial);
    if constexpr (kCanon == 1) {
      for (int64_t p = 0; p < boxes; ++p)
        out[p] = static_cast<float>(sums[p * f]) + (halves == 2 ? static_cast<float>(sums[p * f + 1]) : 0.f);
    } else {  // (the fourth element read is the next pixel's first, or the padding: in the buffer either way)
      for (int64_t p = 0; p < boxes; ++p) {
        F4 box = load4(sums + p * f * kCanon);
        if (halves == 2) box += load4(sums + (p * f + 1) * kCanon);
        *reinterpret_cast<F4*>(out + 4 * p) = box;
      }
    }
  }
}

// H[k][x] = w0[x] * box(lo[x]) + w1[x] * box(hi[x]) for the colour channels k; taps are box indices into
// box_sums' output.
template <int kUsed>
static void gather_boxes(const float* __restrict boxes, const ImageJob& job, float* __restrict h) {
  const int64_t w = job.g.dst_w;
  for (int64_t x = 0; x < w; ++x) {
    const float w0 = job.x_w0[x], w1 = job.x_w1[x];
    if constexpr (kUsed == 1) {
      h[x] = w0 * boxes[job.x_lo[x]] + w1 * boxes[job.x_hi[x]];
    } else {
      const F4 v = w0 * *reinterpret_cast<const F4*>(boxes + 4 * job.x_lo[x]) +
                   w1 * *reinterpret_cast<const F4*>(boxes + 4 * job.x_hi[x]);
      h[x] = v[0], h[w + x] = v[1], h[2 * w + x] = v[2];
    }
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
    // Colour pixels are read 4 bytes at a time; for RGB/BGR the fourth is the next pixel's, so the frame's last
    // column (whose next byte may lie past the buffer) is read byte by byte.
    const int64_t last = job.frame_width - 1;
    for (int64_t x = 0; x < w; ++x) {
      const int64_t ia = job.x_lo[x], ib = job.x_hi[x];
      const uint8_t* a = row + ia * kCanon;
      const uint8_t* b = row + ib * kCanon;
      const float w0 = job.x_w0[x], w1 = job.x_w1[x];
      if (kUsed == 3 && (kCanon == 4 || (ia < last && ib < last))) {
        const F4 v = w0 * load4(a) + w1 * load4(b);
        h[x] = v[0], h[w + x] = v[1], h[2 * w + x] = v[2];
      } else {
        for (int k = 0; k < kUsed; ++k) h[k * w + x] = w0 * a[k] + w1 * b[k];
      }
    }
  }
}

template <PixelFormat F, typename Acc>
static void reduced_row(const ImageJob& job, int64_t j, float* h) {
  constexpr int kUsed = F == PixelFormat::kGray ? 1 : 3;
  const ImageGeometry& g = job.g;
  if (g.fx == 1 && g.fy == 1) return gather_direct<F>(job, g.src_y + j, h);
  box_sums<F, Acc>(job, j, job.scratch_sums);
  gather_boxes<kUsed>(job.scratch_sums, job, h);
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
