// The first pass of the compact top-k for one SIMD variant: int8 dot products of code groups with the query
// codes, then each class's approximate score and error bound. Included by compact.cpp once per variant, inside
// namespace metaedge::cpu::compact_<variant> and its `#pragma GCC target` region, with ME_VEC_BYTES and
// ME_COMPACT_DOTS (2: AVX-512 VNNI, 1: AVX2, 0: portable) set. No include guard on purpose.
//
// The dot products are exact integers: codes are stored as code + 128 (unsigned), query codes are signed, so
// sum (code + 128) * q = sum code * q + 128 * sum q, and the caller's `offset` (128 * sum q) takes the second
// term off. VNNI does 64 of those multiply-adds per instruction (vpdpbusd); AVX2 has no such instruction without
// VNNI and uses vpmaddubsw, whose int16 pair sums saturate unless |q| <= 64 (the caller quantises queries to
// that range on this variant); the portable loop is plain C++ the compiler vectorises (NEON on Jetson).

#include "simd_vec.h"

typedef int32_t IVecUnaligned __attribute__((vector_size(ME_VEC_BYTES), aligned(4)));
constexpr int kLaneVecs = static_cast<int>(kCompactLanes) / kVecLanes;  // vectors per group of 16 classes
constexpr int kMaxQueriesPerPass = 8;                                 // accumulators held in registers

static inline int32_t load4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// dots[j * 16 + lane] = sum over steps of the 4 code bytes of `lane` times the 4 query codes of query j.
template <int NQ>
static inline void group_dots(const uint8_t* __restrict group, int64_t steps, const int8_t* const* q,
                              int32_t* __restrict dots) {
#if ME_COMPACT_DOTS == 2
  if constexpr (NQ == 1) {
    // One query: four accumulators over the steps hide the instruction's latency; one stream of 64-byte loads.
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    const int8_t* q0 = q[0];
    int64_t t = 0;
    for (; t + 4 <= steps; t += 4) {
      a0 = _mm512_dpbusd_epi32(a0, _mm512_loadu_si512(group + t * 64), _mm512_set1_epi32(load4(q0 + 4 * t)));
      a1 = _mm512_dpbusd_epi32(a1, _mm512_loadu_si512(group + t * 64 + 64), _mm512_set1_epi32(load4(q0 + 4 * t + 4)));
      a2 = _mm512_dpbusd_epi32(a2, _mm512_loadu_si512(group + t * 64 + 128),
                               _mm512_set1_epi32(load4(q0 + 4 * t + 8)));
      a3 = _mm512_dpbusd_epi32(a3, _mm512_loadu_si512(group + t * 64 + 192),
                               _mm512_set1_epi32(load4(q0 + 4 * t + 12)));
    }
    for (; t < steps; ++t)
      a0 = _mm512_dpbusd_epi32(a0, _mm512_loadu_si512(group + t * 64), _mm512_set1_epi32(load4(q0 + 4 * t)));
    _mm512_storeu_si512(dots, _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)));
  } else {
    // Several queries: each 64-byte load of codes feeds NQ multiply-adds (the group stays in L1 between passes).
    __m512i acc[NQ];
    for (int j = 0; j < NQ; ++j) acc[j] = _mm512_setzero_si512();
    for (int64_t t = 0; t < steps; ++t) {
      const __m512i x = _mm512_loadu_si512(group + t * 64);
      for (int j = 0; j < NQ; ++j) acc[j] = _mm512_dpbusd_epi32(acc[j], x, _mm512_set1_epi32(load4(q[j] + 4 * t)));
    }
    for (int j = 0; j < NQ; ++j) _mm512_storeu_si512(dots + j * 16, acc[j]);
  }
#elif ME_COMPACT_DOTS == 1
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i lo[NQ], hi[NQ];
  for (int j = 0; j < NQ; ++j) lo[j] = hi[j] = _mm256_setzero_si256();
  for (int64_t t = 0; t < steps; ++t) {
    const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + t * 64));
    const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + t * 64 + 32));
    for (int j = 0; j < NQ; ++j) {
      const __m256i y = _mm256_set1_epi32(load4(q[j] + 4 * t));
      lo[j] = _mm256_add_epi32(lo[j], _mm256_madd_epi16(_mm256_maddubs_epi16(x0, y), ones));
      hi[j] = _mm256_add_epi32(hi[j], _mm256_madd_epi16(_mm256_maddubs_epi16(x1, y), ones));
    }
  }
  for (int j = 0; j < NQ; ++j) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dots + j * 16), lo[j]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dots + j * 16 + 8), hi[j]);
  }
#else
  for (int j = 0; j < NQ; ++j) {
    int32_t acc[kCompactLanes] = {};
    for (int64_t t = 0; t < steps; ++t) {
      const uint8_t* x = group + t * 64;
      const int8_t* y = q[j] + 4 * t;
      for (int lane = 0; lane < kCompactLanes; ++lane)
        acc[lane] += x[4 * lane] * y[0] + x[4 * lane + 1] * y[1] + x[4 * lane + 2] * y[2] + x[4 * lane + 3] * y[3];
    }
    for (int lane = 0; lane < kCompactLanes; ++lane) dots[j * 16 + lane] = acc[lane];
  }
#endif
}

// Approximate scores and their error bounds from the dot products of one group (compact.cpp derives them):
//   dot, cosine:  a = dot s_c s_q + w.center    r = (|w| e_c + e_q |c^|) (1 + 2^-10) + rho |w| |x| + eps
//   euclidean:    a = 2 dot s_c s_q - |v|^2 - |w|^2
//                                               r = 2 (|w| e_c + e_q |c^|) (1 + 2^-10) + rho (|w| + |v|)^2 + eps
// lower = a - r, upper = a + r, so the float32 score of the class lies in [lower, upper].
static inline void group_bounds(const int32_t* __restrict dots, const float* __restrict meta, const CompactQuery& q,
                                const CompactBoundTerms& terms, float* __restrict lower, float* __restrict upper) {
  for (int v = 0; v < kLaneVecs; ++v) {
    const int off = v * kVecLanes;
    const Vec scale = load_unaligned(meta + off), err = load_unaligned(meta + 16 + off);
    const Vec code_norm = load_unaligned(meta + 32 + off), norm = load_unaligned(meta + 48 + off);
    const IVec exact = *reinterpret_cast<const IVecUnaligned*>(dots + off) - q.offset;
    const Vec dot = __builtin_convertvector(exact, Vec);
    Vec a = dot * (scale * q.scale);
    const Vec quantisation = (q.norm * err + q.err * code_norm) * 1.0009765625f;
    Vec r;
    if (terms.euclidean) {
      const Vec reach = norm + q.norm;
      a = (a + a) - norm * norm - q.sq_norm;
      r = (quantisation + quantisation) + terms.rho * (reach * reach) + terms.abs_eps;
    } else {
      a += q.shift;
      r = quantisation + terms.rho * q.norm * norm + terms.abs_eps;
    }
    store_unaligned(lower + off, a - r);
    store_unaligned(upper + off, a + r);
  }
}

template <int NQ>
static void score_group_queries(const uint8_t* group, const float* meta, int64_t steps, const CompactQuery* queries,
                                const int8_t* const* q, const CompactBoundTerms& terms, int32_t* dots, float* lower,
                                float* upper) {
  group_dots<NQ>(group, steps, q, dots);
  for (int j = 0; j < NQ; ++j)
    group_bounds(dots + j * 16, meta, queries[j], terms, lower + j * 16, upper + j * 16);
}

// For groups [g0, g0 + groups) of codes/meta and queries[0, nq): lower/upper[((g - g0) * nq + j) * 16 + lane].
void score_groups(const uint8_t* codes, const float* meta, int64_t steps, int64_t g0, int64_t groups,
                  const CompactQuery* queries, int nq, const CompactBoundTerms& terms, float* lower, float* upper) {
  alignas(64) int32_t dots[kMaxQueriesPerPass * kCompactLanes];
  const int8_t* q[kMaxQueriesPerPass];
  for (int64_t g = g0; g < g0 + groups; ++g) {
    const uint8_t* group = codes + g * steps * 64;
    const float* group_meta = meta + g * kCompactMetaFields * kCompactLanes;
    for (int j0 = 0; j0 < nq; j0 += kMaxQueriesPerPass) {
      const int n = std::min(kMaxQueriesPerPass, nq - j0);
      for (int j = 0; j < n; ++j) q[j] = queries[j0 + j].codes;
      const int64_t out = ((g - g0) * nq + j0) * kCompactLanes;
      float* lo = lower + out;
      float* up = upper + out;
      const CompactQuery* qs = queries + j0;
      switch (n) {
        case 1: score_group_queries<1>(group, group_meta, steps, qs, q, terms, dots, lo, up); break;
        case 2: score_group_queries<2>(group, group_meta, steps, qs, q, terms, dots, lo, up); break;
        case 3: score_group_queries<3>(group, group_meta, steps, qs, q, terms, dots, lo, up); break;
        case 4: score_group_queries<4>(group, group_meta, steps, qs, q, terms, dots, lo, up); break;
        case 5: score_group_queries<5>(group, group_meta, steps, qs, q, terms, dots, lo, up); break;
        case 6: score_group_queries<6>(group, group_meta, steps, qs, q, terms, dots, lo, up); break;
        case 7: score_group_queries<7>(group, group_meta, steps, qs, q, terms, dots, lo, up); break;
        default: score_group_queries<8>(group, group_meta, steps, qs, q, terms, dots, lo, up); break;
      }
    }
  }
}
