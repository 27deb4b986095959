// The blocked sgemm for one SIMD variant. Included by gemm.cpp once per variant, inside namespace
// metaedge::cpu::<variant> and its `#pragma GCC target` region, with ME_VEC_BYTES (vector width),
// ME_GEMM_MR (rows per micro-tile) and ME_GEMM_NV (vectors per micro-tile row) set. No include guard on purpose.
//
// Scheme (BLIS-like, simplified): B is packed into panels of NR columns, k-major, so the micro-kernel loads
// NR/lanes aligned vectors per k; A is read in place (one broadcast scalar per row and k; either layout is
// fine since each row or column is walked contiguously), so only one operand is ever copied. Ragged edges
// are zero-padded (columns) or use a kernel of the exact height (rows): every C element is the same chain of
// fused multiply-adds over k, whatever its position, the thread split or the block sizes. topk relies on that to
// give duplicated prototypes bit-identical scores.

#include "simd_vec.h"

constexpr int kMR = ME_GEMM_MR;
constexpr int kNV = ME_GEMM_NV;
constexpr int kNR = kNV * kVecLanes;
// Blocking: a KC x NR panel of B is reused across the MR-row tiles of an MC-row block of A; a KC x NC block
// of packed B stays in L2. KC = 512 keeps typical embedding dims in one k block (no partial sums in C).
constexpr int64_t kKC = 512;  // measured best of 128..512 for (1000 x 5000 x 512) on Zen 4
constexpr int64_t kMC = 16 * kMR;
constexpr int64_t kNC = 512 / kNR * kNR;

// tile[MR][NR] = A(MR rows, kc) * Bpanel(kc, NR). MR < kMR serves ragged bottom edges and short A.
template <int MR, bool kARowMajor>
static inline void micro_kernel(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b,
                                float* __restrict tile) {
  Vec acc[MR][kNV];
#pragma GCC unroll 32
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) acc[r][v] = Vec{};
  for (int64_t p = 0; p < kc; ++p) {
    Vec bv[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) bv[v] = load_aligned(b + p * kNR + v * kVecLanes);
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r) {
      const float av = kARowMajor ? a[r * lda + p] : a[p * lda + r];
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) acc[r][v] += av * bv[v];
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) store_aligned(tile + r * kNR + v * kVecLanes, acc[r][v]);
}

// The kernel for a ragged edge of `rows` < kMR rows, copied k-major into edge[kc][rows].
template <int MR>
static void edge_kernel(int rows, int64_t kc, const float* edge, const float* b, float* tile) {
  if constexpr (MR > 1) {
    if (rows < MR) return edge_kernel<MR - 1>(rows, kc, edge, b, tile);
  }
  micro_kernel<MR, false>(kc, edge, MR, b, tile);
}

// Packs B(p0 .. p0+kc, j0 .. j0+nc) into ceil(nc / NR) panels of kc x NR floats, zero-padded past nc.
static void pack_b(const GemmProblem& g, int64_t p0, int64_t kc, int64_t j0, int64_t nc, float* dst) {
  if (g.b_row_major) {
    // Row by row of B (each read contiguously across all panels: a panel-by-panel walk would stride over
    // kc rows per panel and miss the TLB).
    for (int64_t p = 0; p < kc; ++p) {
      const float* in = g.b + (p0 + p) * g.ldb + j0;
      for (int64_t jp = 0; jp < nc; jp += kNR) {
        float* out = dst + (jp / kNR) * kc * kNR + p * kNR;
        const int64_t width = nc - jp < kNR ? nc - jp : kNR;
        int64_t j = 0;
        for (; j < width; ++j) out[j] = in[jp + j];
        for (; j < kNR; ++j) out[j] = 0.f;
      }
    }
    return;
  }
  for (int64_t jp = 0; jp < nc; jp += kNR) {
    float* panel = dst + (jp / kNR) * kc * kNR;
    const int64_t width = nc - jp < kNR ? nc - jp : kNR;
    // B(p, j) = b[j*ldb + p]: each column is contiguous in p, so transpose lanes x lanes blocks in registers.
    const float* src = g.b + (j0 + jp) * g.ldb + p0;
    const int64_t full_groups = width / kVecLanes;
    const int64_t kc_full = kc / kVecLanes * kVecLanes;
    for (int64_t grp = 0; grp < full_groups; ++grp) {
      const float* cols = src + grp * kVecLanes * g.ldb;
      for (int64_t p = 0; p < kc_full; p += kVecLanes) {
        Vec block[kVecLanes];
        for (int i = 0; i < kVecLanes; ++i) block[i] = load_unaligned(cols + i * g.ldb + p);
        transpose_block(block);
        for (int i = 0; i < kVecLanes; ++i) store_aligned(panel + (p + i) * kNR + grp * kVecLanes, block[i]);
      }
      for (int64_t p = kc_full; p < kc; ++p)
        for (int i = 0; i < kVecLanes; ++i) panel[p * kNR + grp * kVecLanes + i] = cols[i * g.ldb + p];
    }
    for (int64_t j = full_groups * kVecLanes; j < kNR; ++j) {
      if (j < width) {
        const float* col = src + j * g.ldb;
        for (int64_t p = 0; p < kc; ++p) panel[p * kNR + j] = col[p];
      } else {
        for (int64_t p = 0; p < kc; ++p) panel[p * kNR + j] = 0.f;
      }
    }
  }
}

// C block (rows, cols) <- alpha * tile + beta * C.
static inline void store_tile(const float* __restrict tile, int64_t rows, int64_t cols, float alpha, float beta,
                              float* __restrict c, int64_t rs_c, int64_t cs_c) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* t = tile + r * kNR;
    float* out = c + r * rs_c;
    if (cs_c == 1) {
      if (beta == 0.f) {
        for (int64_t j = 0; j < cols; ++j) out[j] = alpha * t[j];
      } else {
        for (int64_t j = 0; j < cols; ++j) out[j] = alpha * t[j] + beta * out[j];
      }
    } else {
      for (int64_t j = 0; j < cols; ++j) {
        const float v = alpha * t[j];
        out[j * cs_c] = beta == 0.f ? v : v + beta * out[j * cs_c];
      }
    }
  }
}

void gemm_serial(const GemmProblem& g) {
  if (g.M <= 0 || g.N <= 0) return;
  if (g.K <= 0) {
    for (int64_t i = 0; i < g.M; ++i)
      for (int64_t j = 0; j < g.N; ++j) {
        float& out = g.c[i * g.rs_c + j * g.cs_c];
        out = g.beta == 0.f ? 0.f : g.beta * out;
      }
    return;
  }
  static thread_local ScratchBuffer packed_b_buffer, tile_buffer, edge_buffer;
  float* packed_b = packed_b_buffer.get(static_cast<size_t>(kKC * kNC));
  float* tile = tile_buffer.get(static_cast<size_t>(kMR * kNR));
  float* edge = edge_buffer.get(static_cast<size_t>(kMR * kKC));

  for (int64_t jc = 0; jc < g.N; jc += kNC) {
    const int64_t nc = g.N - jc < kNC ? g.N - jc : kNC;
    for (int64_t pc = 0; pc < g.K; pc += kKC) {
      const int64_t kc = g.K - pc < kKC ? g.K - pc : kKC;
      const float beta = pc == 0 ? g.beta : 1.f;
      pack_b(g, pc, kc, jc, nc, packed_b);
      for (int64_t ic = 0; ic < g.M; ic += kMC) {
        const int64_t mc = g.M - ic < kMC ? g.M - ic : kMC;
        // A ragged last tile (fewer than kMR rows) is copied once per block, k-major and unpadded, and goes
        // through the kernel of its exact height: same multiply-add chains, no wasted rows.
        const int64_t full_end = ic + mc / kMR * kMR;
        const int rows_left = static_cast<int>(ic + mc - full_end);
        if (rows_left > 0)
          for (int64_t p = 0; p < kc; ++p)
            for (int r = 0; r < rows_left; ++r)
              edge[p * rows_left + r] = g.a_row_major ? g.a[(full_end + r) * g.lda + pc + p]
                                                      : g.a[(pc + p) * g.lda + full_end + r];
        for (int64_t jr = 0; jr < nc; jr += kNR) {
          const int64_t cols = nc - jr < kNR ? nc - jr : kNR;
          const float* panel = packed_b + (jr / kNR) * kc * kNR;
          float* c_col = g.c + (jc + jr) * g.cs_c;
          for (int64_t ir = ic; ir < full_end; ir += kMR) {
            if (g.a_row_major)
              micro_kernel<kMR, true>(kc, g.a + ir * g.lda + pc, g.lda, panel, tile);
            else
              micro_kernel<kMR, false>(kc, g.a + pc * g.lda + ir, g.lda, panel, tile);
            store_tile(tile, kMR, cols, g.alpha, beta, c_col + ir * g.rs_c, g.rs_c, g.cs_c);
          }
          if (rows_left > 0) {
            edge_kernel<kMR - 1>(rows_left, kc, edge, panel, tile);
            store_tile(tile, rows_left, cols, g.alpha, beta, c_col + full_end * g.rs_c, g.rs_c, g.cs_c);
          }
        }
      }
    }
  }
}

// out[j * out_stride] = alpha * sum_p x[p] Y(p, j) + beta * out[...], for j < n (one row or column of C).
// Y(p, j) = y[p*ldy + j] when y_contiguous_in_j (axpy over rows of Y), else y[j*ldy + p] (a dot product per j).
// Matrix-vector products gain nothing from packing: each element of Y is used once, so Y is streamed as is.
void gemv_serial(int64_t n, int64_t K, float alpha, const float* __restrict x, const float* __restrict y,
                 int64_t ldy, bool y_contiguous_in_j, float beta, float* __restrict out, int64_t out_stride) {
  static thread_local ScratchBuffer acc_buffer;
  float* acc = acc_buffer.get(static_cast<size_t>(y_contiguous_in_j ? n : 0) + 1);
  if (y_contiguous_in_j) {
    for (int64_t j = 0; j < n; ++j) acc[j] = 0.f;
    const int64_t n_vec = n / kVecLanes * kVecLanes;
    for (int64_t p = 0; p < K; ++p) {
      const float xp = x[p];
      const float* row = y + p * ldy;
      for (int64_t j = 0; j < n_vec; j += kVecLanes)
        store_aligned(acc + j, load_aligned(acc + j) + xp * load_unaligned(row + j));
      for (int64_t j = n_vec; j < n; ++j) acc[j] += xp * row[j];
    }
  } else {
    const int64_t k_vec = K / kVecLanes * kVecLanes, k_pair = K / (2 * kVecLanes) * (2 * kVecLanes);
    for (int64_t j = 0; j < n; ++j) {
      const float* col = y + j * ldy;
      Vec s0 = Vec{}, s1 = Vec{};
      int64_t p = 0;
      for (; p < k_pair; p += 2 * kVecLanes) {
        s0 += load_unaligned(x + p) * load_unaligned(col + p);
        s1 += load_unaligned(x + p + kVecLanes) * load_unaligned(col + p + kVecLanes);
      }
      for (; p < k_vec; p += kVecLanes) s0 += load_unaligned(x + p) * load_unaligned(col + p);
      float sum = horizontal_sum(s0 + s1);
      for (; p < K; ++p) sum += x[p] * col[p];
      float& o = out[j * out_stride];
      o = beta == 0.f ? alpha * sum : alpha * sum + beta * o;
    }
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    float& o = out[j * out_stride];
    o = beta == 0.f ? alpha * acc[j] : alpha * acc[j] + beta * o;
  }
}

GemmTile gemm_tile() { return {kMR, kNR, kVecLanes}; }
