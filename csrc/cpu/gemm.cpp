// Single-precision GEMM: a register-blocked micro-kernel over packed panels (gemm_simd_impl.h), compiled
// once per SIMD variant and chosen at run time (simd.h), plus the OpenMP split and the choice of which
// operand's dimension goes into the vector lanes.
#include "gemm.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "gemm_internal.h"
#include "simd.h"

namespace metaedge::cpu {

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4,prefer-vector-width=512")
namespace avx512 {
#define ME_VEC_BYTES 64
#define ME_GEMM_MR 12
#define ME_GEMM_NV 2
#include "gemm_simd_impl.h"
#undef ME_VEC_BYTES
#undef ME_GEMM_MR
#undef ME_GEMM_NV
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace avx2 {
#define ME_VEC_BYTES 32
#define ME_GEMM_MR 6
#define ME_GEMM_NV 2
#include "gemm_simd_impl.h"
#undef ME_VEC_BYTES
#undef ME_GEMM_MR
#undef ME_GEMM_NV
}  // namespace avx2
#pragma GCC pop_options
#endif

namespace baseline {
#define ME_VEC_BYTES 16
#if defined(__aarch64__)
#define ME_GEMM_MR 8  // NEON has 32 vector registers: 16 accumulators + operands
#else
#define ME_GEMM_MR 4  // SSE2 has 16, and no FMA (a temporary per product)
#endif
#define ME_GEMM_NV 2
#include "gemm_simd_impl.h"
#undef ME_VEC_BYTES
#undef ME_GEMM_MR
#undef ME_GEMM_NV
}  // namespace baseline

void gemm_serial(const GemmProblem& problem) {
  switch (simd_target()) {
#if defined(__x86_64__)
    case SimdTarget::kAvx512: return avx512::gemm_serial(problem);
    case SimdTarget::kAvx2: return avx2::gemm_serial(problem);
#endif
    default: return baseline::gemm_serial(problem);
  }
}

static void gemv_serial(int64_t n, int64_t K, float alpha, const float* x, const float* y, int64_t ldy,
                        bool y_contiguous_in_j, float beta, float* out, int64_t out_stride) {
  switch (simd_target()) {
#if defined(__x86_64__)
    case SimdTarget::kAvx512: return avx512::gemv_serial(n, K, alpha, x, y, ldy, y_contiguous_in_j, beta, out, out_stride);
    case SimdTarget::kAvx2: return avx2::gemv_serial(n, K, alpha, x, y, ldy, y_contiguous_in_j, beta, out, out_stride);
#endif
    default: return baseline::gemv_serial(n, K, alpha, x, y, ldy, y_contiguous_in_j, beta, out, out_stride);
  }
}

GemmTile gemm_tile() {
  switch (simd_target()) {
#if defined(__x86_64__)
    case SimdTarget::kAvx512: return avx512::gemm_tile();
    case SimdTarget::kAvx2: return avx2::gemm_tile();
#endif
    default: return baseline::gemm_tile();
  }
}

namespace {

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Relative cost of computing C with N in the vector lanes: padded multiply-adds (in vector instructions)
// plus packing B (a transpose when B is k-contiguous, a plain copy otherwise).
double lanes_cost(int64_t M, int64_t N, int64_t K, bool b_row_major, const GemmTile& tile) {
  // Rows need no padding (ragged edges have kernels of their own height); columns are padded to NR.
  const double fmas = static_cast<double>(M) * round_up(N, tile.nr) * K / tile.lanes;
  const double pack = static_cast<double>(N) * K * (b_row_major ? 0.125 : 0.25);
  return fmas + pack;
}

}  // namespace

GemmProblem gemm_best_orientation(const GemmProblem& g) {
  // C^T = B^T A^T puts M in the lanes instead of N: worth it when N is narrow (e.g. logits of 5 classes).
  const GemmTile tile = gemm_tile();
  if (lanes_cost(g.N, g.M, g.K, !g.a_row_major, tile) >= lanes_cost(g.M, g.N, g.K, g.b_row_major, tile)) return g;
  GemmProblem t = g;
  t.M = g.N, t.N = g.M;
  t.a = g.b, t.lda = g.ldb, t.a_row_major = !g.b_row_major;
  t.b = g.a, t.ldb = g.lda, t.b_row_major = !g.a_row_major;
  t.rs_c = g.cs_c, t.cs_c = g.rs_c;
  return t;
}

namespace {

// C is a single row (M == 1) or column (N == 1): a matrix-vector product, streamed without packing.
void sgemv(const GemmProblem& g, bool parallel) {
  const bool row = g.M == 1;
  const int64_t n = row ? g.N : g.M, K = g.K;
  // The vector: row 0 of A, or column 0 of B, made contiguous.
  std::vector<float> x(static_cast<size_t>(K));
  for (int64_t p = 0; p < K; ++p)
    x[p] = row ? (g.a_row_major ? g.a[p] : g.a[p * g.lda]) : (g.b_row_major ? g.b[p * g.ldb] : g.b[p]);
  // The matrix Y(p, j): B for a row of C, A^T for a column.
  const float* y = row ? g.b : g.a;
  const int64_t ldy = row ? g.ldb : g.lda;
  const bool contiguous_in_j = row ? g.b_row_major : !g.a_row_major;
  float* out = g.c;
  const int64_t out_stride = row ? g.cs_c : g.rs_c;
  int threads = 1;
#ifdef _OPENMP
  if (parallel && !omp_in_parallel() && static_cast<double>(n) * K >= 2e5) threads = omp_get_max_threads();
#endif
  const int64_t parts = std::min<int64_t>(threads, (n + 63) / 64);
#pragma omp parallel for schedule(static) num_threads(threads) if (parts > 1)
  for (int64_t part = 0; part < parts; ++part) {
    const int64_t begin = n * part / parts / 16 * 16, end = part + 1 == parts ? n : n * (part + 1) / parts / 16 * 16;
    const float* y_part = contiguous_in_j ? y + begin : y + begin * ldy;
    gemv_serial(end - begin, K, g.alpha, x.data(), y_part, ldy, contiguous_in_j, g.beta, out + begin * out_stride,
                out_stride);
  }
}

}  // namespace

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc, bool parallel) {
  if (M <= 0 || N <= 0) return;
  GemmProblem g;
  g.M = M, g.N = N, g.K = K, g.alpha = alpha, g.beta = beta;
  g.a = A, g.lda = lda, g.a_row_major = !trans_a;
  g.b = B, g.ldb = ldb, g.b_row_major = !trans_b;
  g.c = C, g.rs_c = ldc, g.cs_c = 1;
  if ((M == 1 || N == 1) && K > 0) {
    sgemv(g, parallel);
    return;
  }

  g = gemm_best_orientation(g);
  const GemmTile tile = gemm_tile();

  int threads = 1;
#ifdef _OPENMP
  // Below ~1 MFLOP the fork/join costs more than it saves.
  if (parallel && !omp_in_parallel() && static_cast<double>(M) * N * K >= 5e5) threads = omp_get_max_threads();
#endif
  if (threads <= 1) {
    gemm_serial(g);
    return;
  }
  // Split the longer of M and N into tile-aligned slabs, a few per thread and handed out dynamically, so a
  // core busy with something else delays one slab rather than half the product. Each slab packs only the B
  // it uses when N is split, and re-packs all of B (cheap next to its share of the multiply) when M is split.
  const bool split_n = g.N >= g.M;
  const int64_t extent = split_n ? g.N : g.M;
  const int64_t step = split_n ? tile.nr : tile.mr;
  const int64_t units = (extent + step - 1) / step;
  const int64_t slabs = std::min<int64_t>(units, 4 * threads);
  if (slabs < threads) threads = static_cast<int>(slabs);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t slab = 0; slab < slabs; ++slab) {
    const int64_t begin = units * slab / slabs * step;
    const int64_t end = std::min(units * (slab + 1) / slabs * step, extent);
    GemmProblem part = g;
    if (split_n) {
      part.N = end - begin;
      part.b = g.b_row_major ? g.b + begin : g.b + begin * g.ldb;
      part.c = g.c + begin * g.cs_c;
    } else {
      part.M = end - begin;
      part.a = g.a_row_major ? g.a + begin * g.lda : g.a + begin;
      part.c = g.c + begin * g.rs_c;
    }
    gemm_serial(part);
  }
}

}  // namespace metaedge::cpu
