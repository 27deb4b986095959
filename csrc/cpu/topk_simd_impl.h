// The scoring loops of topk for one SIMD variant. Included by topk.cpp once per variant, inside namespace
// metaedge::cpu::topk_<variant> and its `#pragma GCC target` region, with ME_VEC_BYTES set. No include guard
// on purpose. Every row goes through the same sequence of operations (vector lanes over d, a fixed-order tree
// sum, then the d % lanes tail), so equal rows give bit-identical results wherever they sit.

#include "simd_vec.h"

// One pass over rows [0, rows) of p[rows, d] against NQ queries q[i][d]:
//   kMode 0: raw[c*ldr + i] = <q_i, p_c>
//   kMode 1: the same, and sumsq[c] = ||p_c||^2 (cosine needs the norm; reading the row once is the point)
//   kMode 2: raw[c*ldr + i] = ||q_i - p_c||^2 (direct, no cancellation)
// Batch-1 scoring is bound by reading p, so the only goal here is to read each row once, at full bandwidth.
template <int NQ, int kMode>
static void stream_rows_impl(const float* __restrict p, int64_t d, int64_t rows, const float* const* q,
                             float* __restrict raw, int64_t ldr, float* __restrict sumsq) {
  const int64_t d_vec = d / kVecLanes * kVecLanes;
  const int64_t d_pair = d / (2 * kVecLanes) * (2 * kVecLanes);
  for (int64_t c = 0; c < rows; ++c) {
    const float* row = p + c * d;
    // Two accumulators per sum hide the add latency.
    Vec acc0[NQ], acc1[NQ], ss0 = Vec{}, ss1 = Vec{};
    for (int i = 0; i < NQ; ++i) acc0[i] = acc1[i] = Vec{};
    int64_t j = 0;
    for (; j < d_pair; j += 2 * kVecLanes) {
      const Vec x0 = load_unaligned(row + j), x1 = load_unaligned(row + j + kVecLanes);
      for (int i = 0; i < NQ; ++i) {
        const Vec y0 = load_unaligned(q[i] + j), y1 = load_unaligned(q[i] + j + kVecLanes);
        if constexpr (kMode == 2) {
          const Vec e0 = y0 - x0, e1 = y1 - x1;
          acc0[i] += e0 * e0;
          acc1[i] += e1 * e1;
        } else {
          acc0[i] += y0 * x0;
          acc1[i] += y1 * x1;
        }
      }
      if constexpr (kMode == 1) {
        ss0 += x0 * x0;
        ss1 += x1 * x1;
      }
    }
    for (; j < d_vec; j += kVecLanes) {
      const Vec x0 = load_unaligned(row + j);
      for (int i = 0; i < NQ; ++i) {
        const Vec y0 = load_unaligned(q[i] + j);
        if constexpr (kMode == 2) {
          const Vec e0 = y0 - x0;
          acc0[i] += e0 * e0;
        } else {
          acc0[i] += y0 * x0;
        }
      }
      if constexpr (kMode == 1) ss0 += x0 * x0;
    }
    for (int i = 0; i < NQ; ++i) {
      float s = horizontal_sum(acc0[i] + acc1[i]);
      for (int64_t t = d_vec; t < d; ++t) {
        const float e = kMode == 2 ? q[i][t] - row[t] : q[i][t];
        s += kMode == 2 ? e * e : e * row[t];
      }
      raw[c * ldr + i] = s;
    }
    if constexpr (kMode == 1) {
      float s = horizontal_sum(ss0 + ss1);
      for (int64_t t = d_vec; t < d; ++t) s += row[t] * row[t];
      sumsq[c] = s;
    }
  }
}

template <int kMode>
static void stream_rows_mode(int nq, const float* p, int64_t d, int64_t rows, const float* const* q, float* raw,
                             int64_t ldr, float* sumsq) {
  switch (nq) {
    case 1: return stream_rows_impl<1, kMode>(p, d, rows, q, raw, ldr, sumsq);
    case 2: return stream_rows_impl<2, kMode>(p, d, rows, q, raw, ldr, sumsq);
    case 3: return stream_rows_impl<3, kMode>(p, d, rows, q, raw, ldr, sumsq);
    default: return stream_rows_impl<4, kMode>(p, d, rows, q, raw, ldr, sumsq);
  }
}

// nq in 1..4 queries per pass.
void stream_rows(int mode, int nq, const float* p, int64_t d, int64_t rows, const float* const* q, float* raw,
                 int64_t ldr, float* sumsq) {
  switch (mode) {
    case 0: return stream_rows_mode<0>(nq, p, d, rows, q, raw, ldr, sumsq);
    case 1: return stream_rows_mode<1>(nq, p, d, rows, q, raw, ldr, sumsq);
    default: return stream_rows_mode<2>(nq, p, d, rows, q, raw, ldr, sumsq);
  }
}

// sumsq[c] = ||p_c||^2 for the batched (gemm) path, which reads the block again from cache right after.
void row_sumsq(const float* __restrict p, int64_t d, int64_t rows, float* __restrict sumsq) {
  const int64_t d_vec = d / kVecLanes * kVecLanes;
  const int64_t d_pair = d / (2 * kVecLanes) * (2 * kVecLanes);
  for (int64_t c = 0; c < rows; ++c) {
    const float* row = p + c * d;
    Vec s0 = Vec{}, s1 = Vec{};
    int64_t j = 0;
    for (; j < d_pair; j += 2 * kVecLanes) {
      const Vec x0 = load_unaligned(row + j), x1 = load_unaligned(row + j + kVecLanes);
      s0 += x0 * x0;
      s1 += x1 * x1;
    }
    for (; j < d_vec; j += kVecLanes) {
      const Vec x0 = load_unaligned(row + j);
      s0 += x0 * x0;
    }
    float s = horizontal_sum(s0 + s1);
    for (int64_t t = d_vec; t < d; ++t) s += row[t] * row[t];
    sumsq[c] = s;
  }
}

// Batch-1..3 scoring from the packed class matrix (kPackedLanes classes per group, stored [d][kPackedLanes],
// the last group zero-padded; see pack_prototypes): one class per vector lane, so a group's scores come out
// of the loop as whole vectors and no row needs a horizontal sum - that sum, not the memory, is what bounds
// the row-major stream with short rows (d = 64: 2.4 vs 6.6 us for 1,024 classes on Zen 4). For groups
// [0, groups) of `packed`, writes raw[(g * kPackedLanes + lane) * ldr] for every lane, padding included:
//   kDistance false: <q, p_c> (dot, and cosine, whose packed rows are unit rows)
//   kDistance true:  0 - ||q - p_c||^2, the euclidean score itself (direct, no cancellation)
// Every lane runs the same operations in the same order, so equal classes score bit-identically wherever they
// sit.
template <bool kDistance>
static void packed_rows_impl(const float* __restrict packed, int64_t d, int64_t groups, const float* __restrict q,
                             float* __restrict raw, int64_t ldr) {
  constexpr int kParts = kPackedLanes / kVecLanes;        // vectors per packed row: 1 (AVX-512) .. 4 (SSE)
  constexpr int kChains = kParts >= 4 ? 1 : 4 / kParts;   // independent sums over t: 4 accumulators in all
  for (int64_t g = 0; g < groups; ++g) {
    const float* base = packed + g * d * kPackedLanes;
    Vec acc[kChains][kParts];
    for (int u = 0; u < kChains; ++u)
      for (int v = 0; v < kParts; ++v) acc[u][v] = Vec{};
    auto step = [&](int u, int64_t t) {
      const Vec y = splat(q[t]);
      for (int v = 0; v < kParts; ++v) {
        const Vec x = load_unaligned(base + t * kPackedLanes + v * kVecLanes);
        if constexpr (kDistance) {
          const Vec e = y - x;
          acc[u][v] += e * e;
        } else {
          acc[u][v] += y * x;
        }
      }
    };
    int64_t t = 0;
    for (; t + kChains <= d; t += kChains)
      for (int u = 0; u < kChains; ++u) step(u, t + u);
    for (; t < d; ++t) step(0, t);
    for (int v = 0; v < kParts; ++v) {
      Vec total = acc[0][v];
      for (int u = 1; u < kChains; ++u) total += acc[u][v];
      if constexpr (kDistance) total = Vec{} - total;  // the score; 0 - x keeps a zero distance +0
      const int64_t c0 = g * kPackedLanes + v * kVecLanes;
      if (ldr == 1) {
        store_unaligned(raw + c0, total);
      } else {
        for (int lane = 0; lane < kVecLanes; ++lane) raw[(c0 + lane) * ldr] = total[lane];
      }
    }
  }
}

void packed_rows(bool distance, const float* packed, int64_t d, int64_t groups, const float* q, float* raw,
                 int64_t ldr) {
  if (distance) return packed_rows_impl<true>(packed, d, groups, q, raw, ldr);
  packed_rows_impl<false>(packed, d, groups, q, raw, ldr);
}
