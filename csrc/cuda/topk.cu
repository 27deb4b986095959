// topk on the GPU: fused scoring + selection; the b x C score matrix never reaches global memory (k <= 256).
//
//   prep    one block per query: float32 copy (normalised for cosine) and |q|^2.
//   score   many blocks, each over a contiguous range of classes, each producing its own top-k per query:
//             rows   (b <= 8, or any b when the tiled kernel does not apply): one warp per group of 4 class
//                    rows, 16-byte loads, the 4 x (QT + 1) partial sums (|p|^2 and QT dots) reduced across
//                    the warp with a transposing butterfly; memory-bound, aims at HBM bandwidth for b = 1.
//             tiled  (b > 8, k <= 32): a 64-query x 128-class register-tiled product per step (8 x 8 per
//                    thread), scores staged in shared memory, then one warp per query filters them.
//   merge   one block per query: the per-block lists -> the final k.
// Selection is the same everywhere: a warp owns a sorted list of the best kp >= k candidates so far plus a
// buffer; a candidate enters the buffer only if it beats the current k-th best (ballot + prefix count), and a
// full buffer is merged by a bitonic sort in shared memory. After the first few hundred classes almost nothing
// passes the threshold, so selection costs a compare and a ballot per candidate.
// Order: score descending, ties -> lower class index (lower position in the merge, which is the same order).
// Semantics follow csrc/cpu/topk.cpp exactly: cosine scores are <q_hat, p> * (1/|p|) with 1/|p| from the float
// |p|^2 when it lies in [1e-30, 1e30] and recomputed in double with scaling otherwise (tiny, huge and zero
// rows: a zero row scores 0); euclidean is -(|q|^2 - 2<q,p> + |p|^2) clamped to <= 0. A non-finite score stops
// the call: NaN/Inf in `protos` (found in the same pass, as the first bad element of rows whose |p|^2 is not
// finite) is reported as such, a finite input whose score overflows float32 names the query and class.
// During selection a non-finite score ranks as -inf; the call raises afterwards.
// k > 256: scores of a chunk of queries are materialised as sortable keys and radix-sorted (stable), bounded
// to ~4M scores per chunk.
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

namespace metaedge::cuda {
namespace {

constexpr uint32_t kSentinel = 0xffffffffu;  // index of an empty slot; ranks below every real candidate
constexpr int kWarps = 8;                    // rows and merge kernels: 256 threads
constexpr int kGroupRows = 4;                // class rows per warp iteration in the rows kernel (at most)
constexpr int kFusedKMax = 256;
constexpr unsigned long long kNoBadIndex = ULLONG_MAX;

// tiled kernel geometry
constexpr int kTQ = 64, kTC = 128, kTK = 8, kTThreads = 128, kTKp = 32, kTStride = kTC + 4;
constexpr int kTiledMinBatch = 9;

enum MetricCode : int { kCos = 0, kDotM = 1, kEuc = 2 };

__device__ __forceinline__ bool better(float s1, uint32_t i1, float s2, uint32_t i2) {
  return s1 > s2 || (s1 == s2 && i1 < i2);
}

// The score from the raw dot product (queries already unit for cosine), as the CPU kernel forms it.
__device__ __forceinline__ float make_score(int metric, float dot, float pp, float inv_norm, float qq) {
  if (metric == kCos) return dot * inv_norm;
  if (metric == kDotM) return dot;
  const float dist = qq - 2.f * dot + pp;
  return dist <= 0.f ? 0.f : -dist;  // rounding can push a distance below 0; NaN stays NaN
}

__device__ __forceinline__ bool in_float_range(float pp) { return pp >= 1e-30f && pp <= 1e30f; }

// ---- warp-owned selection state ------------------------------------------------------------------------

struct Sel {
  float* s;     // [2 kp]: [0, kp) best so far, sorted best-first; [kp, 2 kp) candidate buffer
  uint32_t* i;
  int* count;   // candidates in the buffer
};

__device__ void sel_init(Sel st, int kp, int lane) {
  for (int t = lane; t < 2 * kp; t += 32) {
    st.s[t] = -INFINITY;
    st.i[t] = kSentinel;
  }
  if (lane == 0) *st.count = 0;
  __syncwarp();
}

// Sorts list + buffer (2 kp entries, bitonic, best-first) so that [0, kp) is the best kp seen; empties the buffer.
__device__ __noinline__ void sel_sort(Sel st, int kp, int lane) {
  const int n = *st.count;
  for (int t = kp + n + lane; t < 2 * kp; t += 32) {
    st.s[t] = -INFINITY;
    st.i[t] = kSentinel;
  }
  __syncwarp();
  const int total = 2 * kp;
  for (int size = 2; size <= total; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = lane; t < total / 2; t += 32) {
        const int a = 2 * t - (t & (stride - 1));  // the pair (a, a + stride), bit `stride` of a clear
        const int b = a + stride;
        const float sa = st.s[a], sb = st.s[b];
        const uint32_t ia = st.i[a], ib = st.i[b];
        const bool best_first = (a & size) == 0;
        if (best_first ? better(sb, ib, sa, ia) : better(sa, ia, sb, ib)) {
          st.s[a] = sb;
          st.s[b] = sa;
          st.i[a] = ib;
          st.i[b] = ia;
        }
      }
      __syncwarp();
    }
  }
  if (lane == 0) *st.count = 0;
  __syncwarp();
}

// Warp-collective: every lane offers at most one candidate (valid). Keeps the best kp >= k of all offered.
__device__ void sel_offer(Sel st, int kp, int k, float s, uint32_t idx, bool valid, int lane) {
  float ts = st.s[k - 1];
  uint32_t ti = st.i[k - 1];
  bool pass = valid && better(s, idx, ts, ti);
  unsigned mask = __ballot_sync(kFullMask, pass);
  if (mask == 0) return;
  int n = *st.count;
  if (n + __popc(mask) > kp) {
    sel_sort(st, kp, lane);
    ts = st.s[k - 1];
    ti = st.i[k - 1];
    pass = valid && better(s, idx, ts, ti);
    mask = __ballot_sync(kFullMask, pass);
    if (mask == 0) return;
    n = 0;
  }
  if (pass) {
    const int pos = kp + n + __popc(mask & ((1u << lane) - 1u));
    st.s[pos] = s;
    st.i[pos] = idx;
  }
  __syncwarp();
  if (lane == 0) *st.count = n + __popc(mask);
  __syncwarp();
}

// Offers the first k entries of a sorted list (another warp's) to `st`.
__device__ void sel_absorb(Sel st, int kp, int k, const float* s, const uint32_t* idx, int lane) {
  for (int base = 0; base < k; base += 32) {
    const int t = base + lane;
    const bool valid = t < k && idx[t] != kSentinel;
    sel_offer(st, kp, k, valid ? s[t] : 0.f, valid ? idx[t] : kSentinel, valid, lane);
  }
}

// ---- element types -------------------------------------------------------------------------------------

template <typename T>
struct Elem;

template <>
struct Elem<float> {
  static constexpr int kVec = 4;  // per 16-byte load
  __device__ static float load1(const float* p) { return __ldg(p); }
  __device__ static void convert(const uint4& raw, float (&x)[4]) {
    x[0] = __uint_as_float(raw.x);
    x[1] = __uint_as_float(raw.y);
    x[2] = __uint_as_float(raw.z);
    x[3] = __uint_as_float(raw.w);
  }
};

template <>
struct Elem<__half> {
  static constexpr int kVec = 8;
  __device__ static float load1(const __half* p) { return __half2float(__ldg(p)); }
  __device__ static void convert(const uint4& raw, float (&x)[8]) {
    const unsigned words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      __half2 h;
      memcpy(&h, &words[w], sizeof h);
      const float2 f = __half22float2(h);
      x[2 * w] = f.x;
      x[2 * w + 1] = f.y;
    }
  }
};

// For a row whose float |p|^2 is out of range (tiny, huge, zero or non-finite), serially: reports its first
// non-finite element (then returns 0), else returns 1/|p| computed in double with scaling (0 for a zero row),
// as inverse_norm in csrc/cpu/topk.cpp.
template <typename T>
__device__ __noinline__ float exact_inverse_norm_serial(const T* protos, int64_t row, int64_t d, unsigned long long* bad) {
  const T* p = protos + row * d;
  double peak = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    const float x = Elem<T>::load1(p + j);
    if (!isfinite(x)) {
      atomicMin(bad, static_cast<unsigned long long>(row * d + j));
      return 0.f;
    }
    peak = fmax(peak, static_cast<double>(fabsf(x)));
  }
  if (!(peak > 0.0)) return 0.f;
  double sq = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    const double v = Elem<T>::load1(p + j) / peak;
    sq += v * v;
  }
  return static_cast<float>(1.0 / (sqrt(sq) * peak));
}

__device__ __forceinline__ unsigned long long warp_min_u64(unsigned long long v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const unsigned long long o = __shfl_xor_sync(kFullMask, v, off);
    v = o < v ? o : v;
  }
  return v;
}

// The same, by a whole warp (call from warp-uniform code only).
template <typename T>
__device__ __noinline__ float exact_inverse_norm_warp(const T* protos, int64_t row, int64_t d, int lane, unsigned long long* bad) {
  const T* p = protos + row * d;
  double peak = 0.0;
  unsigned long long first_bad = ULLONG_MAX;
  for (int64_t j = lane; j < d; j += 32) {
    const float x = Elem<T>::load1(p + j);
    if (!isfinite(x) && first_bad == ULLONG_MAX) first_bad = static_cast<unsigned long long>(j);
    peak = fmax(peak, static_cast<double>(fabsf(x)));
  }
  first_bad = warp_min_u64(first_bad);
  if (first_bad != ULLONG_MAX) {
    if (lane == 0) atomicMin(bad, static_cast<unsigned long long>(row * d) + first_bad);
    return 0.f;
  }
  peak = warp_max(peak);
  if (!(peak > 0.0)) return 0.f;
  double sq = 0.0;
  for (int64_t j = lane; j < d; j += 32) {
    const double v = Elem<T>::load1(p + j) / peak;
    sq += v * v;
  }
  sq = warp_sum(sq);
  return static_cast<float>(1.0 / (sqrt(sq) * peak));
}

// Sortable key: ascending key order = descending score; -0 and +0 are one key.
__device__ __forceinline__ uint32_t descending_key(float s) {
  if (s == 0.f) s = 0.f;
  const uint32_t u = __float_as_uint(s);
  const uint32_t ascending = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ~ascending;
}

__device__ __forceinline__ float score_of_key(uint32_t key) {
  const uint32_t ascending = ~key;
  const uint32_t u = (ascending & 0x80000000u) ? (ascending & 0x7fffffffu) : ~ascending;
  return __uint_as_float(u);
}

// ---- prep ----------------------------------------------------------------------------------------------

// Also the NaN/Inf check of `queries`: flags[2 + row] = flat index of the row's first bad element (or
// ULLONG_MAX). Block 0 initialises flags[0] (first bad element of protos) and flags[1] (first non-finite
// score), which only the kernels after this one touch, so no separate memset is needed.
template <typename T>
__global__ void topk_prep_kernel(const T* __restrict__ q, int64_t d, int metric, float* qf, float* qsq,
                                 unsigned long long* flags) {
  __shared__ double scratch[32];
  __shared__ unsigned long long first_bad;
  const int64_t row = blockIdx.x;
  const T* src = q + row * d;
  if (threadIdx.x == 0) {
    first_bad = ULLONG_MAX;
    if (row == 0) flags[0] = flags[1] = ULLONG_MAX;
  }
  __syncthreads();
  double sq = 0.0;
  bool reported = false;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float x = static_cast<float>(src[j]);
    if (!isfinite(x) && !reported) {
      atomicMin(&first_bad, static_cast<unsigned long long>(row * d + j));  // later j of this thread are larger
      reported = true;
    }
    const double v = x;
    sq += v * v;
  }
  sq = block_sum(sq, scratch);  // its barriers also publish first_bad
  if (threadIdx.x == 0) flags[2 + row] = first_bad;
  // Cosine: unit queries computed in double (a zero query stays zero and scores 0), as the CPU kernel does.
  // Squares of float values cannot overflow or underflow in double, so no peak scaling is needed here.
  const double inv = metric != kCos ? 1.0 : (sq > 0.0 ? 1.0 / sqrt(sq) : 0.0);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
    qf[row * d + j] = static_cast<float>(static_cast<double>(static_cast<float>(src[j])) * inv);
  if (threadIdx.x == 0) qsq[row] = static_cast<float>(sq);
}

// ---- rows kernel ---------------------------------------------------------------------------------------

struct RowsParams {
  const void* protos;
  const float* qf;   // [b, d]
  const float* qsq;  // [b]
  int64_t C, d;
  int64_t q_begin, q_end;     // queries of this launch; blockIdx.y picks QT of them
  int64_t rows_per_block;     // classes per blockIdx.x (a multiple of kGroupRows)
  int metric, k, kp;
  bool vectorized;
  int64_t parts_per_query;    // gridDim.x * k (selection mode)
  float* part_s;              // [b, gridDim.x, k]
  int64_t* part_i;
  unsigned long long* bad;        // first non-finite element of protos (flat index)
  unsigned long long* bad_score;  // first non-finite score, as class * b + query
  int64_t b;
  uint64_t* keys;             // materialise mode when not null: [(q - key_q0) * C + c]
  uint32_t* key_rows;
  int64_t key_q0;             // first query of the materialised chunk
};

template <int N>
struct Pow2Ceil {
  static constexpr int value = N <= 1 ? 1 : 2 * Pow2Ceil<(N + 1) / 2>::value;
};
template <>
struct Pow2Ceil<1> {
  static constexpr int value = 1;
};

template <typename T, int QT>
__global__ void __launch_bounds__(kWarps * 32, 2) topk_rows_kernel(const RowsParams p) {
  constexpr int kVec = Elem<T>::kVec;
  // Rows per warp iteration: 4 for one query (loads in flight), 2 for four (registers for the queries).
  constexpr int kRows = QT == 1 ? kGroupRows : kGroupRows / 2;
  constexpr int kNvr = QT + 1;                                // per row: |p|^2, then one dot per query
  constexpr int kNv = Pow2Ceil<kRows * kNvr>::value;          // values reduced per group (padded)
  constexpr int kShift = 5 - (kNv == 1 ? 0 : (kNv == 2 ? 1 : (kNv == 4 ? 2 : (kNv == 8 ? 3 : (kNv == 16 ? 4 : 5)))));
  static_assert(kRows * kNvr <= 32, "too many values per group");

  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool materialise = p.keys != nullptr;
  const T* protos = static_cast<const T*>(p.protos);
  const int64_t d = p.d;

  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * p.rows_per_block;
  const int64_t r1 = min(p.C, r0 + p.rows_per_block);
  const int64_t q0 = p.q_begin + static_cast<int64_t>(blockIdx.y) * QT;

  // Queries of this block; past the end they repeat the last one (loaded, never offered).
  int64_t qrow[QT];
  bool qvalid[QT];
  float qq[QT];
#pragma unroll
  for (int q = 0; q < QT; ++q) {
    qvalid[q] = q0 + q < p.q_end;
    qrow[q] = qvalid[q] ? q0 + q : p.q_end - 1;
    qq[q] = p.qsq[qrow[q]];
  }

  const int slots = 2 * p.kp;
  float* sel_s = reinterpret_cast<float*>(smem);
  uint32_t* sel_i = reinterpret_cast<uint32_t*>(sel_s + kWarps * QT * slots);
  int* sel_n = reinterpret_cast<int*>(sel_i + kWarps * QT * slots);
  auto state = [&](int w, int q) {
    const int s = w * QT + q;
    return Sel{sel_s + s * slots, sel_i + s * slots, sel_n + s};
  };
  if (!materialise) {
#pragma unroll
    for (int q = 0; q < QT; ++q) sel_init(state(warp, q), p.kp, lane);
  }

  for (int64_t g0 = r0 + static_cast<int64_t>(warp) * kRows; g0 < r1;
       g0 += static_cast<int64_t>(kWarps) * kRows) {
    float acc[kRows][kNvr];
    const T* rowp[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int j = 0; j < kNvr; ++j) acc[r][j] = 0.f;
      rowp[r] = protos + min(g0 + r, r1 - 1) * d;  // rows past the range reread the last one, discarded
    }
    if (p.vectorized) {
      const int64_t nvec = d / kVec;
      // Two iterations in flight hide load latency; with 4 queries the registers are better spent on them.
      constexpr int kUnroll = QT == 1 ? 2 : 1;
#pragma unroll kUnroll
      for (int64_t v = lane; v < nvec; v += 32) {
        uint4 raw[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) raw[r] = __ldg(reinterpret_cast<const uint4*>(rowp[r]) + v);
        float x[kRows][kVec];
#pragma unroll
        for (int r = 0; r < kRows; ++r) Elem<T>::convert(raw[r], x[r]);
#pragma unroll
        for (int r = 0; r < kRows; ++r)
#pragma unroll
          for (int e = 0; e < kVec; ++e) acc[r][0] = fmaf(x[r][e], x[r][e], acc[r][0]);
        // Four query elements at a time keeps QT x 4 of them live rather than QT x kVec.
#pragma unroll
        for (int h = 0; h < kVec / 4; ++h) {
#pragma unroll
          for (int q = 0; q < QT; ++q) {
            const float4 f = __ldg(reinterpret_cast<const float4*>(p.qf + qrow[q] * d + v * kVec) + h);
            const float qv[4] = {f.x, f.y, f.z, f.w};
#pragma unroll
            for (int r = 0; r < kRows; ++r)
#pragma unroll
              for (int e = 0; e < 4; ++e) acc[r][1 + q] = fmaf(x[r][4 * h + e], qv[e], acc[r][1 + q]);
          }
        }
      }
    } else {
      for (int64_t j = lane; j < d; j += 32) {
        float qv[QT];
#pragma unroll
        for (int q = 0; q < QT; ++q) qv[q] = __ldg(p.qf + qrow[q] * d + j);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const float x = Elem<T>::load1(rowp[r] + j);
          acc[r][0] = fmaf(x, x, acc[r][0]);
#pragma unroll
          for (int q = 0; q < QT; ++q) acc[r][1 + q] = fmaf(x, qv[q], acc[r][1 + q]);
        }
      }
    }

    float vals[kNv];
#pragma unroll
    for (int t = kRows * kNvr; t < kNv; ++t) vals[t] = 0.f;
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int j = 0; j < kNvr; ++j) vals[r * kNvr + j] = acc[r][j];
    const float mine = transpose_reduce<kNv>(vals, lane);
    // Lane L holds value index L >> kShift; the first lane of each such group speaks for it.
    const int vidx = lane >> kShift;
    const int r = vidx / kNvr, j = vidx % kNvr;
    const int64_t row = g0 + r;
    const bool speaker = (lane & ((1 << kShift) - 1)) == 0 && vidx < kRows * kNvr && row < r1;
    // |p|^2 and 1/|p| of each row of the group, known to every lane (so the rare exact path is warp-uniform).
    float pp = 0.f, inv = 0.f;
#pragma unroll
    for (int rr = 0; rr < kRows; ++rr) {
      const float pp_rr = __shfl_sync(kFullMask, mine, (rr * kNvr) << kShift);
      float inv_rr = 0.f;
      if (g0 + rr < r1) {
        if (p.metric == kCos) {
          inv_rr = in_float_range(pp_rr) ? 1.f / sqrtf(pp_rr)
                                         : exact_inverse_norm_warp(protos, g0 + rr, d, lane, p.bad);
        } else if (!isfinite(pp_rr)) {
          exact_inverse_norm_warp(protos, g0 + rr, d, lane, p.bad);  // only to find the first bad element
        }
      }
      if (r == rr) {
        pp = pp_rr;
        inv = inv_rr;
      }
    }

#pragma unroll
    for (int q = 0; q < QT; ++q) {
      const bool is_mine = speaker && j == 1 + q && qvalid[q];
      float score = make_score(p.metric, mine, pp, inv, qq[q]);
      if (!isfinite(score)) {
        if (is_mine) atomicMin(p.bad_score, static_cast<unsigned long long>(row * p.b + qrow[q]));
        score = -INFINITY;  // the call raises; until then the order stays total
      }
      if (materialise) {
        if (is_mine) {
          const int64_t at = (qrow[q] - p.key_q0) * p.C + row;
          p.keys[at] = (static_cast<uint64_t>(qrow[q] - p.key_q0) << 32) | descending_key(score);
          p.key_rows[at] = static_cast<uint32_t>(row);
        }
      } else {
        sel_offer(state(warp, q), p.kp, p.k, score, static_cast<uint32_t>(row - r0), is_mine, lane);
      }
    }
  }
  if (materialise) return;

#pragma unroll
  for (int q = 0; q < QT; ++q) sel_sort(state(warp, q), p.kp, lane);
  __syncthreads();
  // Warp q merges the kWarps lists of query q into its own and writes the block's top-k of that query.
  if (warp < QT) {
    const int q = warp;
    const int64_t query = q0 + q;  // not qrow[q]: a run-time index would move that array to local memory
    if (query < p.q_end) {
      const Sel mine = state(warp, q);
      for (int w = 0; w < kWarps; ++w) {
        if (w == warp) continue;
        const Sel other = state(w, q);
        sel_absorb(mine, p.kp, p.k, other.s, other.i, lane);
      }
      sel_sort(mine, p.kp, lane);
      const int64_t base = query * p.parts_per_query + static_cast<int64_t>(blockIdx.x) * p.k;
      for (int t = lane; t < p.k; t += 32) {
        p.part_s[base + t] = mine.s[t];
        p.part_i[base + t] = mine.i[t] == kSentinel ? -1 : r0 + mine.i[t];
      }
    }
  }
}

// ---- tiled kernel --------------------------------------------------------------------------------------

struct TiledParams {
  const void* protos;
  const float* qf;
  const float* qsq;
  int64_t b, C, d;
  int64_t q_begin;            // blockIdx.y picks 64 queries from here
  int64_t tiles_per_block;
  int metric, k;
  int64_t parts_per_query;
  float* part_s;
  int64_t* part_i;
  unsigned long long* bad;
  unsigned long long* bad_score;
};

constexpr int kTiledSmemFloats = (kTQ * kTStride > 2 * kTK * (kTQ + kTC) ? kTQ * kTStride : 2 * kTK * (kTQ + kTC));
constexpr size_t kTiledSmemBytes =
    sizeof(float) * (kTiledSmemFloats + 2 * kTC) + kTQ * 2 * kTKp * (sizeof(float) + sizeof(uint32_t)) +
    kTQ * sizeof(int);

// Loads the 8 elements [k0, k0 + 8) of a row as floats (zeros past the last class).
template <typename T>
__device__ __forceinline__ void load8(const T* row, bool ok, float (&x)[8]);

template <>
__device__ __forceinline__ void load8<float>(const float* row, bool ok, float (&x)[8]) {
  float4 a = make_float4(0.f, 0.f, 0.f, 0.f), b = a;
  if (ok) {
    a = __ldg(reinterpret_cast<const float4*>(row));
    b = __ldg(reinterpret_cast<const float4*>(row) + 1);
  }
  x[0] = a.x; x[1] = a.y; x[2] = a.z; x[3] = a.w;
  x[4] = b.x; x[5] = b.y; x[6] = b.z; x[7] = b.w;
}

template <>
__device__ __forceinline__ void load8<__half>(const __half* row, bool ok, float (&x)[8]) {
  uint4 raw = make_uint4(0u, 0u, 0u, 0u);
  if (ok) raw = __ldg(reinterpret_cast<const uint4*>(row));
  Elem<__half>::convert(raw, x);
}

template <typename T>
__global__ void __launch_bounds__(kTThreads, 3) topk_tiled_kernel(const TiledParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  float* region = reinterpret_cast<float*>(smem);  // K-loop operand tiles, then the score tile
  float* Qs = region;                              // [2][kTK][kTQ]
  float* Ps = region + 2 * kTK * kTQ;              // [2][kTK][kTC]
  float* St = region;                              // [kTQ][kTStride]
  float* ppS = region + kTiledSmemFloats;          // [kTC] |p|^2 of the tile's classes
  float* invS = ppS + kTC;                         // [kTC] 1/|p| (cosine)
  float* sel_s = invS + kTC;                       // [kTQ][2 kTKp]
  uint32_t* sel_i = reinterpret_cast<uint32_t*>(sel_s + kTQ * 2 * kTKp);
  int* sel_n = reinterpret_cast<int*>(sel_i + kTQ * 2 * kTKp);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tq = tid >> 4, tc = tid & 15;
  const T* protos = static_cast<const T*>(p.protos);
  const int64_t d = p.d, nk = d / kTK;
  const int64_t q0 = p.q_begin + static_cast<int64_t>(blockIdx.y) * kTQ;
  const int64_t tile_begin = static_cast<int64_t>(blockIdx.x) * p.tiles_per_block;
  const int64_t n_tiles = (p.C + kTC - 1) / kTC;
  const int64_t tile_end = min(n_tiles, tile_begin + p.tiles_per_block);
  const int64_t r0 = tile_begin * kTC;

  auto state = [&](int ql) {
    return Sel{sel_s + ql * 2 * kTKp, sel_i + ql * 2 * kTKp, sel_n + ql};
  };
  for (int ql = warp; ql < kTQ; ql += kTThreads / 32) sel_init(state(ql), kTKp, lane);

  const bool loads_query = tid < kTQ;
  const int64_t my_query = q0 + tid;
  const bool query_ok = loads_query && my_query < p.b;

  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t c0 = tile * kTC;
    const int64_t my_class = c0 + tid;
    const bool class_ok = my_class < p.C;
    const T* prow = protos + (class_ok ? my_class : 0) * d;
    const float* qrow = p.qf + (query_ok ? my_query : 0) * d;

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
    float pp = 0.f;

    float pv[8], qv[8];
    load8<T>(prow, class_ok, pv);
    load8<float>(qrow, query_ok, qv);
#pragma unroll
    for (int kk = 0; kk < kTK; ++kk) {
      Ps[kk * kTC + tid] = pv[kk];
      pp = fmaf(pv[kk], pv[kk], pp);
      if (loads_query) Qs[kk * kTQ + tid] = qv[kk];
    }
    __syncthreads();

    for (int64_t kc = 0; kc < nk; ++kc) {
      const int buf = static_cast<int>(kc & 1);
      const bool more = kc + 1 < nk;
      if (more) {
        load8<T>(prow + (kc + 1) * kTK, class_ok, pv);
        load8<float>(qrow + (kc + 1) * kTK, query_ok, qv);
      }
      const float* qs = Qs + buf * kTK * kTQ;
      const float* ps = Ps + buf * kTK * kTC;
#pragma unroll
      for (int kk = 0; kk < kTK; ++kk) {
        const float4 a0 = *reinterpret_cast<const float4*>(qs + kk * kTQ + tq * 4);
        const float4 a1 = *reinterpret_cast<const float4*>(qs + kk * kTQ + 32 + tq * 4);
        const float4 b0 = *reinterpret_cast<const float4*>(ps + kk * kTC + tc * 4);
        const float4 b1 = *reinterpret_cast<const float4*>(ps + kk * kTC + 64 + tc * 4);
        const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        const float bb[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], bb[j], acc[i][j]);
      }
      if (more) {
        float* qn = Qs + (buf ^ 1) * kTK * kTQ;
        float* pn = Ps + (buf ^ 1) * kTK * kTC;
#pragma unroll
        for (int kk = 0; kk < kTK; ++kk) {
          pn[kk * kTC + tid] = pv[kk];
          pp = fmaf(pv[kk], pv[kk], pp);
          if (loads_query) qn[kk * kTQ + tid] = qv[kk];
        }
      }
      __syncthreads();
    }

    float inv = 0.f;
    if (class_ok) {
      if (p.metric == kCos) {
        inv = in_float_range(pp) ? 1.f / sqrtf(pp) : exact_inverse_norm_serial(protos, my_class, d, p.bad);
      } else if (!isfinite(pp)) {
        exact_inverse_norm_serial(protos, my_class, d, p.bad);  // only to find the first bad element
      }
    }
    ppS[tid] = pp;
    invS[tid] = inv;
    __syncthreads();  // ppS/invS complete; every thread is past the K loop, so St may overwrite Qs/Ps

#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int ql = i < 4 ? tq * 4 + i : 32 + tq * 4 + (i - 4);
      const int64_t q = q0 + ql;
      const float qq = q < p.b ? p.qsq[q] : 0.f;
      float s[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int cl = j < 4 ? tc * 4 + j : 64 + tc * 4 + (j - 4);
        s[j] = make_score(p.metric, acc[i][j], ppS[cl], invS[cl], qq);
        if (!isfinite(s[j])) {
          if (q < p.b && c0 + cl < p.C) atomicMin(p.bad_score, static_cast<unsigned long long>((c0 + cl) * p.b + q));
          s[j] = -INFINITY;
        }
      }
      *reinterpret_cast<float4*>(St + ql * kTStride + tc * 4) = make_float4(s[0], s[1], s[2], s[3]);
      *reinterpret_cast<float4*>(St + ql * kTStride + 64 + tc * 4) = make_float4(s[4], s[5], s[6], s[7]);
    }
    __syncthreads();

    for (int ql = warp; ql < kTQ; ql += kTThreads / 32) {
      if (q0 + ql >= p.b) break;  // warp-uniform; later ql are larger
      const Sel st = state(ql);
#pragma unroll
      for (int step = 0; step < kTC / 32; ++step) {
        const int cl = step * 32 + lane;
        const bool valid = c0 + cl < p.C;
        sel_offer(st, kTKp, p.k, St[ql * kTStride + cl], static_cast<uint32_t>(c0 + cl - r0), valid, lane);
      }
    }
    __syncthreads();  // the next tile's K loop overwrites St
  }

  for (int ql = warp; ql < kTQ; ql += kTThreads / 32) {
    const int64_t q = q0 + ql;
    if (q >= p.b) break;
    const Sel st = state(ql);
    sel_sort(st, kTKp, lane);
    const int64_t base = q * p.parts_per_query + static_cast<int64_t>(blockIdx.x) * p.k;
    for (int t = lane; t < p.k; t += 32) {
      p.part_s[base + t] = st.s[t];
      p.part_i[base + t] = st.i[t] == kSentinel ? -1 : r0 + st.i[t];
    }
  }
}

// ---- merge ---------------------------------------------------------------------------------------------

// One block per query. Candidates are identified by their position in the query's partial lists; for equal
// scores position order is class order (blocks cover increasing class ranges, each list is sorted with ties
// by class), so the tie rule survives the merge.
__global__ void __launch_bounds__(kWarps * 32) topk_merge_kernel(const float* __restrict__ part_s,
                                                                 const int64_t* __restrict__ part_i,
                                                                 int64_t parts, int k, int kp, float* out_s,
                                                                 int64_t* out_i) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int slots = 2 * kp;
  float* sel_s = reinterpret_cast<float*>(smem);
  uint32_t* sel_i = reinterpret_cast<uint32_t*>(sel_s + kWarps * slots);
  int* sel_n = reinterpret_cast<int*>(sel_i + kWarps * slots);
  auto state = [&](int w) { return Sel{sel_s + w * slots, sel_i + w * slots, sel_n + w}; };

  const int64_t q = blockIdx.x;
  const float* cs = part_s + q * parts;
  const int64_t* ci = part_i + q * parts;
  const Sel mine = state(warp);
  sel_init(mine, kp, lane);
  const int64_t chunk = (parts + kWarps - 1) / kWarps;
  const int64_t begin = warp * chunk, end = min(parts, begin + chunk);
  for (int64_t base = begin; base < end; base += 32) {
    const int64_t pos = base + lane;
    const bool valid = pos < end && ci[pos] >= 0;
    sel_offer(mine, kp, k, valid ? cs[pos] : 0.f, valid ? static_cast<uint32_t>(pos) : kSentinel, valid, lane);
  }
  sel_sort(mine, kp, lane);
  __syncthreads();
  if (warp != 0) return;
  for (int w = 1; w < kWarps; ++w) {
    const Sel other = state(w);
    sel_absorb(mine, kp, k, other.s, other.i, lane);
  }
  sel_sort(mine, kp, lane);
  for (int t = lane; t < k; t += 32) {
    out_s[q * k + t] = mine.s[t];
    out_i[q * k + t] = mine.i[t] == kSentinel ? -1 : ci[mine.i[t]];
  }
}

// ---- materialised path (k > 256) -----------------------------------------------------------------------

__global__ void topk_extract_kernel(const uint64_t* __restrict__ keys, const uint32_t* __restrict__ rows,
                                    int64_t q_begin, int64_t q_count, int64_t C, int k, float* out_s,
                                    int64_t* out_i) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= q_count * k) return;
  const int64_t ql = t / k, rank = t % k;
  const int64_t at = ql * C + rank;
  out_s[(q_begin + ql) * k + rank] = score_of_key(static_cast<uint32_t>(keys[at] & 0xffffffffu));
  out_i[(q_begin + ql) * k + rank] = rows[at];
}

// Largest |x| of row `row` of a float32/float16 device matrix (error path only: one small copy).
double row_peak(const Tensor& t, int64_t row, cudaStream_t stream) {
  const int64_t d = t.size(1);
  const int64_t elem = t.dtype == DType::kFloat16 ? 2 : 4;
  std::vector<unsigned char> bytes(static_cast<size_t>(d * elem));
  if (d > 0) {
    METAEDGE_CUDA_CHECK(cudaMemcpyAsync(bytes.data(), static_cast<const char*>(t.data) + row * d * elem,
                                        bytes.size(), cudaMemcpyDeviceToHost, stream));
    METAEDGE_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  double peak = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    float x;
    if (elem == 2) {
      __half h;
      std::memcpy(&h, bytes.data() + j * 2, 2);
      x = __half2float(h);
    } else {
      std::memcpy(&x, bytes.data() + j * 4, 4);
    }
    peak = std::max(peak, static_cast<double>(std::fabs(x)));
  }
  return peak;
}

std::string format_number(double v) {
  std::ostringstream os;
  os.precision(4);
  os << v;
  return os.str();
}

// Same message as csrc/cpu/topk.cpp for finite inputs whose score is not representable in float32.
[[noreturn]] void report_overflow(const Tensor& queries, const Tensor& protos, Metric metric, int64_t query,
                                  int64_t cls, cudaStream_t stream) {
  const double q_peak = row_peak(queries, query, stream);
  const double p_peak = row_peak(protos, cls, stream);
  throw ArgumentError(std::string("topk: the ") + metric_name(metric) + " score of `queries` row " +
                      std::to_string(query) + " against `protos` row " + std::to_string(cls) +
                      " is not representable in float32 (largest magnitudes: " + format_number(q_peak) +
                      " in that query, " + format_number(p_peak) +
                      " in that prototype). Scores, and for 'euclidean' squared norms, must stay within float32 "
                      "range (about 3.4e38): rescale the inputs, or use metric='cosine', which normalises them.");
}

int kp_for(int64_t k) {
  int kp = 32;
  while (kp < k) kp <<= 1;
  return kp;
}

// Occupancy per (device, kernel, dynamic shared memory), computed once: the query costs microseconds, and
// small top-k calls are latency-bound.
template <typename Kernel>
int blocks_per_sm(Kernel kernel, int threads, size_t smem) {
  static std::mutex mu;
  static std::map<std::tuple<int, const void*, size_t>, int> cache;
  int device = 0;
  METAEDGE_CUDA_CHECK(cudaGetDevice(&device));
  const auto key = std::make_tuple(device, reinterpret_cast<const void*>(kernel), smem);
  {
    std::lock_guard<std::mutex> lock(mu);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  int n = 0;
  METAEDGE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem));
  n = std::max(n, 1);
  std::lock_guard<std::mutex> lock(mu);
  cache[key] = n;
  return n;
}

// Copies `count` flags to page-locked host memory owned by the calling thread (a small pinned copy returns
// sooner than one to pageable memory) and waits for the stream. Valid until the thread's next call.
const unsigned long long* read_back(const unsigned long long* device_flags, int64_t count, cudaStream_t stream) {
  struct Pinned {
    unsigned long long* ptr = nullptr;
    int64_t capacity = 0;
    ~Pinned() {
      if (ptr) cudaFreeHost(ptr);
    }
  };
  static thread_local Pinned pinned;
  if (pinned.capacity < count) {
    if (pinned.ptr) METAEDGE_CUDA_CHECK(cudaFreeHost(pinned.ptr));
    pinned.ptr = nullptr;
    pinned.capacity = 0;
    const int64_t capacity = std::max<int64_t>(count, 512);
    METAEDGE_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&pinned.ptr), capacity * sizeof(unsigned long long)));
    pinned.capacity = capacity;
  }
  METAEDGE_CUDA_CHECK(cudaMemcpyAsync(pinned.ptr, device_flags, count * sizeof(unsigned long long),
                                      cudaMemcpyDeviceToHost, stream));
  METAEDGE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return pinned.ptr;
}

template <typename T, int QT>
void launch_rows(RowsParams prm, cudaStream_t stream, int64_t grid_x) {
  const size_t smem = prm.keys ? 0 : static_cast<size_t>(kWarps) * QT * (2 * prm.kp * 8 + sizeof(int));
  auto kernel = topk_rows_kernel<T, QT>;
  const int64_t q_end = prm.q_end;
  const int64_t max_y = 65535;
  for (int64_t qb = prm.q_begin; qb < q_end; qb += max_y * QT) {
    prm.q_begin = qb;
    prm.q_end = std::min(q_end, qb + max_y * QT);
    const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(ceil_div(prm.q_end - qb, QT)));
    kernel<<<grid, kWarps * 32, smem, stream>>>(prm);
    METAEDGE_CUDA_CHECK_LAUNCH("topk_rows");
  }
}

}  // namespace

void topk(const Tensor& queries, const Tensor& protos, int64_t k, Metric metric, const Tensor& scores,
          const Tensor& indices) {
  const int64_t b = queries.size(0), d = queries.size(1), C = protos.size(0);
  if (b == 0) return;
  if (C > INT_MAX)
    throw ArgumentError("`protos`: at most 2^31 - 1 classes are supported on the GPU, got " + std::to_string(C));
  const int device = queries.device_index;
  DeviceGuard guard(device);
  const cudaStream_t stream = stream_of(queries);
  const LaunchLimits lim = launch_limits(device);
  const bool half = protos.dtype == DType::kFloat16;
  const int64_t elem = half ? 2 : 4;
  const bool aligned = reinterpret_cast<std::uintptr_t>(protos.data) % 16 == 0 && (d * elem) % 16 == 0;
  const int metric_code = metric == Metric::kCosine ? kCos : (metric == Metric::kDot ? kDotM : kEuc);

  const bool fused = k <= kFusedKMax;
  const bool tiled = fused && k <= kTKp && b >= kTiledMinBatch && d >= kTK && d % kTK == 0 && aligned &&
                     static_cast<size_t>(lim.max_shared_optin) >= kTiledSmemBytes;
  const int kp = fused ? kp_for(k) : 0;
  const int qt = (b == 1 || kp > 64) ? 1 : 4;

  // Grid over classes: one wave of blocks, split further only while there are classes to share out.
  int64_t grid_x = 1, rows_per_block = C, tiles_per_block = 0;
  auto tiled_kernel = half ? topk_tiled_kernel<__half> : topk_tiled_kernel<float>;
  if (tiled) {
    METAEDGE_CUDA_CHECK(cudaFuncSetAttribute(tiled_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(kTiledSmemBytes)));
    const int per_sm = blocks_per_sm(tiled_kernel, kTThreads, kTiledSmemBytes);
    const int64_t n_tiles = ceil_div(C, kTC), grid_y = ceil_div(b, kTQ);
    const int64_t want = std::max<int64_t>(1, static_cast<int64_t>(lim.multiprocessors) * per_sm / grid_y);
    grid_x = std::min(n_tiles, want);
    tiles_per_block = ceil_div(n_tiles, grid_x);
    grid_x = ceil_div(n_tiles, tiles_per_block);
  } else {
    const int64_t grid_y = ceil_div(b, qt);
    const size_t smem = fused ? static_cast<size_t>(kWarps) * qt * (2 * kp * 8 + sizeof(int)) : 0;
    int per_sm;
    if (half) per_sm = qt == 1 ? blocks_per_sm(topk_rows_kernel<__half, 1>, kWarps * 32, smem)
                               : blocks_per_sm(topk_rows_kernel<__half, 4>, kWarps * 32, smem);
    else per_sm = qt == 1 ? blocks_per_sm(topk_rows_kernel<float, 1>, kWarps * 32, smem)
                          : blocks_per_sm(topk_rows_kernel<float, 4>, kWarps * 32, smem);
    // Every block gets the same number of classes, so one full wave finishes together.
    const int64_t want = std::max<int64_t>(1, static_cast<int64_t>(lim.multiprocessors) * per_sm / grid_y);
    const int64_t unit = kGroupRows * kWarps;
    grid_x = std::min(ceil_div(C, unit), want);
    rows_per_block = ceil_div(ceil_div(C, grid_x), unit) * unit;
    grid_x = ceil_div(C, rows_per_block);
  }

  // Workspace: prepared queries, |q|^2, the bad-element flag, then partial lists or sort buffers.
  const int64_t parts = grid_x * k;
  const int64_t chunk_rows = fused ? 0 : std::max<int64_t>(1, std::min<int64_t>(b, (int64_t{1} << 22) / C));
  const int64_t chunk_items = chunk_rows * C;
  if (!fused && chunk_items > INT_MAX)
    throw ArgumentError("topk with k > " + std::to_string(kFusedKMax) + " supports at most " +
                        std::to_string(INT_MAX) + " classes on the GPU, got " + std::to_string(C));
  auto layout = [&](Carver& c, float** qf, float** qsq, unsigned long long** bad, float** ps, int64_t** pi,
                    uint64_t** keys, uint32_t** rows, uint64_t** keys_out, uint32_t** rows_out) {
    *qf = c.take<float>(b * d);
    *qsq = c.take<float>(b);
    // [0] first bad element of protos, [1] first non-finite score (class * b + query), [2 + q] first bad
    // element of query q
    *bad = c.take<unsigned long long>(2 + b);
    *ps = c.take<float>(fused ? b * parts : 0);
    *pi = c.take<int64_t>(fused ? b * parts : 0);
    *keys = c.take<uint64_t>(chunk_items);
    *rows = c.take<uint32_t>(chunk_items);
    *keys_out = c.take<uint64_t>(chunk_items);
    *rows_out = c.take<uint32_t>(chunk_items);
  };
  float *qf, *qsq, *ps;
  unsigned long long* bad;
  int64_t* pi;
  uint64_t *keys, *keys_out;
  uint32_t *rows, *rows_out;
  Carver sizer(nullptr);
  layout(sizer, &qf, &qsq, &bad, &ps, &pi, &keys, &rows, &keys_out, &rows_out);
  Workspace ws(sizer.bytes(), device, stream);
  Carver carve(ws.data());
  layout(carve, &qf, &qsq, &bad, &ps, &pi, &keys, &rows, &keys_out, &rows_out);

  if (queries.dtype == DType::kFloat16) {
    topk_prep_kernel<__half><<<static_cast<unsigned>(b), 256, 0, stream>>>(queries.ptr<__half>(), d,
                                                                           metric_code, qf, qsq, bad);
  } else {
    topk_prep_kernel<float><<<static_cast<unsigned>(b), 256, 0, stream>>>(queries.ptr<float>(), d, metric_code,
                                                                          qf, qsq, bad);
  }
  METAEDGE_CUDA_CHECK_LAUNCH("topk_prep");

  float* out_s = scores.ptr<float>();
  int64_t* out_i = indices.ptr<int64_t>();
  if (tiled) {
    TiledParams prm{protos.data, qf, qsq, b, C, d, 0, tiles_per_block, metric_code, static_cast<int>(k),
                    parts, ps, pi, bad, bad + 1};
    const int64_t max_y = 65535;
    for (int64_t qb = 0; qb < b; qb += max_y * kTQ) {
      prm.q_begin = qb;
      const dim3 grid(static_cast<unsigned>(grid_x),
                      static_cast<unsigned>(ceil_div(std::min(b, qb + max_y * kTQ) - qb, kTQ)));
      tiled_kernel<<<grid, kTThreads, kTiledSmemBytes, stream>>>(prm);
      METAEDGE_CUDA_CHECK_LAUNCH("topk_tiled");
    }
  } else if (fused) {
    RowsParams prm{protos.data, qf, qsq, C, d, 0, b, rows_per_block, metric_code, static_cast<int>(k), kp,
                   aligned, parts, ps, pi, bad, bad + 1, b, nullptr, nullptr, 0};
    if (half) {
      if (qt == 1) launch_rows<__half, 1>(prm, stream, grid_x);
      else launch_rows<__half, 4>(prm, stream, grid_x);
    } else {
      if (qt == 1) launch_rows<float, 1>(prm, stream, grid_x);
      else launch_rows<float, 4>(prm, stream, grid_x);
    }
  }
  if (fused) {
    const size_t smem = static_cast<size_t>(kWarps) * (2 * kp * 8 + sizeof(int));
    topk_merge_kernel<<<static_cast<unsigned>(b), kWarps * 32, smem, stream>>>(ps, pi, parts, static_cast<int>(k),
                                                                             kp, out_s, out_i);
    METAEDGE_CUDA_CHECK_LAUNCH("topk_merge");
  } else {
    // One chunk of queries at a time: keys (query, descending score) sorted stably keep class order on ties.
    const int64_t rows_grid_x = grid_x;
    for (int64_t qb = 0; qb < b; qb += chunk_rows) {
      const int64_t qe = std::min(b, qb + chunk_rows);
      RowsParams prm{protos.data, qf, qsq, C, d, qb, qe, rows_per_block, metric_code, static_cast<int>(k), 0,
                     aligned, 0, nullptr, nullptr, bad, bad + 1, b, keys, rows, qb};
      if (half) launch_rows<__half, 4>(prm, stream, rows_grid_x);
      else launch_rows<float, 4>(prm, stream, rows_grid_x);
      const int64_t items = (qe - qb) * C;
      sort_pairs_u64_u32(keys, keys_out, rows, rows_out, items, 32 + bits_for(static_cast<uint64_t>(qe - qb)),
                         device, stream);
      const int64_t outputs = (qe - qb) * k;
      topk_extract_kernel<<<static_cast<unsigned>(ceil_div(outputs, 256)), 256, 0, stream>>>(
          keys_out, rows_out, qb, qe - qb, C, static_cast<int>(k), out_s, out_i);
      METAEDGE_CUDA_CHECK_LAUNCH("topk_extract");
    }
  }

  // The one synchronisation of a call: NaN/Inf found inside the kernels must become a ValueError here.
  const unsigned long long* flags = read_back(bad, 2 + b, stream);
  unsigned long long first_bad[3] = {flags[0], flags[1], kNoBadIndex};
  for (int64_t q = 0; q < b; ++q) first_bad[2] = std::min(first_bad[2], flags[2 + q]);
  if (first_bad[2] != kNoBadIndex) {  // queries first, as the shared checker orders them
    throw ArgumentError("`queries`: expected finite values, got NaN or Inf at flat index " +
                        std::to_string(first_bad[2]) + " of " + queries.describe());
  }
  if (first_bad[0] != kNoBadIndex) {  // same wording as csrc/cpu/topk.cpp
    throw ArgumentError("`protos`: expected finite values, got NaN or Inf in row " +
                        std::to_string(first_bad[0] / std::max<int64_t>(d, 1)) + " (flat index " +
                        std::to_string(first_bad[0]) + ") of " + protos.describe());
  }
  if (first_bad[1] != kNoBadIndex) {
    const int64_t cls = static_cast<int64_t>(first_bad[1] / static_cast<unsigned long long>(b));
    const int64_t query = static_cast<int64_t>(first_bad[1] % static_cast<unsigned long long>(b));
    report_overflow(queries, protos, metric, query, cls, stream);
  }
}

}  // namespace metaedge::cuda
