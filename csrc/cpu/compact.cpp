// The compact class matrix on the CPU (ops.h; docs/matching.md has the derivation in full).
//
// compact_encode quantises each row's v = x - center (x: the row for dot/euclidean, the unit row for cosine)
// to int8 codes with one scale per row, s = max|v| / 127, and records what the bound needs: the error norm
// ||v - s c||, the code norm ||s c|| (both rounded up) and a norm for the round-off slack. Rows are encoded one by
// one, so adding, replacing or removing a class re-encodes that class only.
//
// compact_topk, per query q. Let w = q (dot), the unit query (cosine) or q - center (euclidean); the true score
// is S = w . v + w . center (dot, cosine) or 2 w . v - ||v||^2 - ||w||^2 (euclidean: -||q - x||^2 with both
// sides shifted by the center, which changes nothing).
//   1. w is quantised the same way (s_q, codes c_q, error e_q = ||w - s_q c_q||).
//   2. First pass, over the codes only (a quarter of the float32 bytes): the exact integer dot c . c_q gives
//      the approximation of w . v, s s_q (c . c_q), and
//          |w . v - s s_q (c . c_q)| <= ||w|| ||v - s c|| + ||w - s_q c_q|| ||s c||       (Cauchy-Schwarz, twice)
//      (twice that for euclidean). The float32 score topk computes differs from S by at most
//      rho ||w|| ||x|| (dot, cosine) or rho (||w|| + ||v||)^2 (euclidean), rho = (2d + 64) 2^-24 (its summation
//      and normalisation round-off, bounded generously), and the float arithmetic here by less than that slack
//      plus `abs_eps` (underflow), so every class's float32 score lies in [lower, upper] = a -+ r.
//   3. L = the k-th largest lower bound. A class with upper < L is beaten by k classes whatever its exact score,
//      so the candidates {upper >= L} hold the exact top-k (ties included: an excluded class is strictly worse).
//      One pass finds them: L only grows while the pass runs, and candidates found under a smaller L are filtered
//      again at the end.
//   4. The candidates' float32 rows are gathered and scored by topk itself (one query at a time, so bit for bit
//      what topk returns for that query alone); gathering in increasing class order keeps topk's tie order.
// A query whose bounds are not finite (scores near the float32 range) or whose candidates exceed C / 16 + k
// (near-duplicate classes, a zero query under cosine) is answered by topk over the whole matrix instead: always
// exact, only slower.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_kernels.h"
#include "gemm_internal.h"
#include "metaedge/checks.h"
#include "parallel_tasks.h"
#include "simd.h"
#include "topk_select.h"

namespace metaedge::cpu {

// One prepared query (see the file comment).
struct CompactQuery {
  const int8_t* codes;  // 4 * steps codes, zero padded
  float scale;          // s_q
  float norm;           // ||w||, rounded up (w: the quantised query, see the file comment)
  float err;            // ||w - s_q c_q||, rounded up
  float sq_norm;        // euclidean: ||q - center||^2
  float shift;          // dot, cosine: w . center (the part of every score the codes leave out)
  int32_t offset;       // 128 * sum of the codes (the stored codes carry +128)
};

struct CompactBoundTerms {
  bool euclidean;
  float rho;      // relative slack for the float32 scores and this pass's float arithmetic
  float abs_eps;  // absolute slack for underflow
};

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4,avx512vnni,prefer-vector-width=512")
namespace compact_vnni {
#define ME_VEC_BYTES 64
#define ME_COMPACT_DOTS 2
#include "compact_simd_impl.h"
#undef ME_COMPACT_DOTS
#undef ME_VEC_BYTES
}  // namespace compact_vnni
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace compact_avx2 {
#define ME_VEC_BYTES 32
#define ME_COMPACT_DOTS 1
#include "compact_simd_impl.h"
#undef ME_COMPACT_DOTS
#undef ME_VEC_BYTES
}  // namespace compact_avx2
#pragma GCC pop_options
#endif

namespace compact_portable {
#define ME_VEC_BYTES 16
#define ME_COMPACT_DOTS 0
#include "compact_simd_impl.h"
#undef ME_COMPACT_DOTS
#undef ME_VEC_BYTES
}  // namespace compact_portable

namespace {

using ScoreGroupsFn = void (*)(const uint8_t*, const float*, int64_t, int64_t, int64_t, const CompactQuery*, int,
                               const CompactBoundTerms&, float*, float*);

struct CompactLoops {
  ScoreGroupsFn score_groups;
  int query_code_max;  // AVX2's vpmaddubsw saturates int16 pair sums unless |query code| <= 64
  const char* name;
};

CompactLoops compact_loops() {
#if defined(__x86_64__)
  if (simd_has_avx512_vnni()) return {compact_vnni::score_groups, kCompactCodeMax, "avx512-vnni"};
  if (simd_target() != SimdTarget::kBaseline) return {compact_avx2::score_groups, 64, "avx2"};
#endif
  return {compact_portable::score_groups, kCompactCodeMax, "portable"};
}

// x rounded up to a float (a bound must not shrink in the conversion); the factor covers double round-off.
float round_up(double x) {
  x *= 1.0 + 1e-12;
  float f = static_cast<float>(x);
  if (static_cast<double>(f) < x) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}

double norm_of(const double* v, int64_t d) {
  double sq[4] = {};
  int64_t t = 0;
  for (; t + 4 <= d; t += 4)
    for (int u = 0; u < 4; ++u) sq[u] += v[t + u] * v[t + u];
  for (; t < d; ++t) sq[0] += v[t] * v[t];
  return std::sqrt((sq[0] + sq[1]) + (sq[2] + sq[3]));
}

// Largest |v_t|, in four independent chains (a single max chain is what bounded encoding).
template <typename T>
double max_abs(const T* v, int64_t d) {
  double m[4] = {};
  int64_t t = 0;
  for (; t + 4 <= d; t += 4)
    for (int u = 0; u < 4; ++u) m[u] = std::max(m[u], std::fabs(static_cast<double>(v[t + u])));
  for (; t < d; ++t) m[0] = std::max(m[0], std::fabs(static_cast<double>(v[t])));
  return std::max(std::max(m[0], m[1]), std::max(m[2], m[3]));
}

// v = x (dot, euclidean) or x / ||x|| (cosine; scaled first, so tiny and huge rows are exact; zero stays zero).
void scored_vector(const float* __restrict x, int64_t d, Metric metric, double* __restrict v) {
  if (metric != Metric::kCosine) {
    for (int64_t t = 0; t < d; ++t) v[t] = x[t];
    return;
  }
  const double peak = max_abs(x, d);
  if (peak == 0.0) {
    std::fill(v, v + d, 0.0);
    return;
  }
  for (int64_t t = 0; t < d; ++t) v[t] = x[t] / peak;
  const double inv = 1.0 / norm_of(v, d);
  for (int64_t t = 0; t < d; ++t) v[t] *= inv;
}

struct Quantised {
  float scale, err, code_norm;
  int64_t code_sum;
};

// codes[t] = round(v_t / scale) in [-code_max, code_max] for t < padded (0 past d), scale = max|v| / code_max.
Quantised quantise(const double* __restrict v, int64_t d, int64_t padded, int code_max, int8_t* __restrict codes) {
  const double peak = max_abs(v, d);
  Quantised out{static_cast<float>(peak / code_max), 0.f, 0.f, 0};
  const double scale = out.scale;  // the float scale is the one the first pass multiplies by
  // Round half to even by the 2^52 + 2^51 trick (exact for |x| < 2^51, here <= 127): nearbyint without a libm
  // call, so the loop vectorises; the sums follow in a loop of their own with four fixed partial sums.
  constexpr double kRound = 6755399441055744.0;
  const double limit = code_max;
  static thread_local std::vector<double> rounded_buffer;
  rounded_buffer.resize(static_cast<size_t>(d));
  double* __restrict rounded = rounded_buffer.data();  // (a plain pointer: the byte stores below alias anything)
  if (scale > 0.0) {
    for (int64_t t = 0; t < d; ++t) {
      const double r = (v[t] / scale + kRound) - kRound;
      rounded[t] = std::min(std::max(r, -limit), limit);
    }
  } else {
    std::fill(rounded, rounded + d, 0.0);
  }
  for (int64_t t = 0; t < d; ++t) codes[t] = static_cast<int8_t>(static_cast<int>(rounded[t]));
  for (int64_t t = d; t < padded; ++t) codes[t] = 0;
  double err_sq[4] = {}, code_sq[4] = {}, code_sum[4] = {};
  int64_t t = 0;
  for (; t + 4 <= d; t += 4)
    for (int u = 0; u < 4; ++u) {
      const double approx = scale * rounded[t + u];  // exact in double
      err_sq[u] += (v[t + u] - approx) * (v[t + u] - approx);
      code_sq[u] += approx * approx;
      code_sum[u] += rounded[t + u];
    }
  for (; t < d; ++t) {
    const double approx = scale * rounded[t];
    err_sq[0] += (v[t] - approx) * (v[t] - approx);
    code_sq[0] += approx * approx;
    code_sum[0] += rounded[t];
  }
  out.err = round_up(std::sqrt((err_sq[0] + err_sq[1]) + (err_sq[2] + err_sq[3])));
  out.code_norm = round_up(std::sqrt((code_sq[0] + code_sq[1]) + (code_sq[2] + code_sq[3])));
  out.code_sum = static_cast<int64_t>((code_sum[0] + code_sum[1]) + (code_sum[2] + code_sum[3]));
  return out;
}

CompactBoundTerms bound_terms(Metric metric, int64_t d, int64_t steps, int query_code_max) {
  CompactBoundTerms terms;
  terms.euclidean = metric == Metric::kEuclidean;
  terms.rho = static_cast<float>((2.0 * d + 64.0) * std::ldexp(1.0, -24));
  terms.abs_eps = static_cast<float>((127.0 * query_code_max * 4.0 * steps + 4.0 * d + 64.0) * std::ldexp(1.0, -149));
  return terms;
}

inline bool finite(float x) { return (x - x) == 0.f; }

// What one task (a block of queries x a range of class groups) found for one of its queries.
struct TaskQuery {
  Selector lower;                 // the k best lower bounds (only their values matter)
  std::vector<Candidate> upper;   // classes whose upper bound reached the running threshold, by class
  int64_t prune_at = 0;
  bool whole_matrix = false;      // non-finite bounds or too many candidates: score every row instead
};

constexpr int64_t kQueryBlock = 32;

}  // namespace

std::string compact_kernel_name_cpu() { return compact_loops().name; }

void compact_encode(const Tensor& rows, const Tensor& slots, Metric metric, const Tensor& center, const Tensor& codes,
                    const Tensor& meta) {
  const int64_t n = rows.size(0), d = rows.size(1), steps = codes.size(1), padded = steps * kCompactStep;
  const float* x = rows.ptr<float>();
  const float* mu = center.ptr<float>();
  const int64_t* slot = slots.ptr<int64_t>();
  uint8_t* code_groups = codes.ptr<uint8_t>();
  float* meta_groups = meta.ptr<float>();
  auto encode = [&](int64_t i) {
    static thread_local std::vector<double> v_buffer;
    static thread_local std::vector<int8_t> c_buffer;
    v_buffer.resize(static_cast<size_t>(d));
    c_buffer.resize(static_cast<size_t>(padded));
    double* v = v_buffer.data();
    const int8_t* c = c_buffer.data();
    scored_vector(x + i * d, d, metric, v);
    // The slack needs ||x|| (dot, cosine), euclidean's score ||v|| (the residual's own norm).
    const double x_norm = norm_of(v, d);
    for (int64_t t = 0; t < d; ++t) v[t] -= mu[t];
    const float norm = static_cast<float>(metric == Metric::kEuclidean ? norm_of(v, d) : x_norm);
    const Quantised qz = quantise(v, d, padded, kCompactCodeMax, c_buffer.data());
    const int64_t g = slot[i] / kCompactLanes, lane = slot[i] % kCompactLanes;
    uint8_t* group = code_groups + g * steps * 64;
    // 4 codes of a step at a time; (code + 128) as a byte is the code's two's complement with the top bit flipped.
    for (int64_t s = 0; s < steps; ++s) {
      uint32_t word;
      std::memcpy(&word, c + s * kCompactStep, sizeof word);
      word ^= 0x80808080u;
      std::memcpy(group + s * 64 + lane * kCompactStep, &word, sizeof word);
    }
    float* m = meta_groups + g * kCompactMetaFields * kCompactLanes;
    m[lane] = qz.scale;
    m[16 + lane] = qz.err;
    m[32 + lane] = qz.code_norm;
    m[48 + lane] = norm;
  };
  // Rows may share a group, but never a lane: parallel writes touch disjoint bytes.
  if (n >= 64 && n * d >= (1 << 16)) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) encode(i);
  } else {
    for (int64_t i = 0; i < n; ++i) encode(i);
  }
}

void compact_topk(const Tensor& queries, const Tensor& rows, const Tensor& codes, const Tensor& meta,
                  const Tensor& center, int64_t k, Metric metric, const Tensor& scores, const Tensor& indices,
                  const Tensor& fp32_rows) {
  const int64_t b = queries.size(0), C = rows.size(0), d = rows.size(1), steps = codes.size(1);
  const int64_t padded = steps * kCompactStep, groups = (C + kCompactLanes - 1) / kCompactLanes;
  const CompactLoops loops = compact_loops();
  const CompactBoundTerms terms = bound_terms(metric, d, steps, loops.query_code_max);
  const float* Q = queries.ptr<float>();

  // 1. The queries, quantised.
  std::vector<int8_t> query_codes(static_cast<size_t>(b * padded));
  std::vector<CompactQuery> prepared(static_cast<size_t>(b));
  {
    std::vector<double> w(static_cast<size_t>(d));
    const float* mu = center.ptr<float>();
    for (int64_t i = 0; i < b; ++i) {
      scored_vector(Q + i * d, d, metric, w.data());
      double shift = 0.0;
      if (metric == Metric::kEuclidean) {
        for (int64_t t = 0; t < d; ++t) w[t] -= mu[t];
      } else {
        for (int64_t t = 0; t < d; ++t) shift += w[t] * mu[t];
      }
      const double norm = norm_of(w.data(), d);
      int8_t* c = query_codes.data() + i * padded;
      const Quantised qz = quantise(w.data(), d, padded, loops.query_code_max, c);
      prepared[i] = {c, qz.scale, round_up(norm), qz.err,
                     metric == Metric::kEuclidean ? static_cast<float>(norm * norm) : 0.f, static_cast<float>(shift),
                     static_cast<int32_t>(128 * qz.code_sum)};
    }
  }

  // 2. First pass: tasks of (a block of queries, a range of groups), as topk splits its work.
  const int64_t query_block = std::min(b, kQueryBlock), query_blocks = (b + query_block - 1) / query_block;
  int threads = 1;
#ifdef _OPENMP
  if (!omp_in_parallel() && static_cast<double>(b) * C * d >= 4 * 131072.0) threads = omp_get_max_threads();
#endif
  int64_t chunks = 1;
  if (threads > 1 && query_blocks < 2 * threads) {
    const int64_t wanted = (4 * threads + query_blocks - 1) / query_blocks;
    const int64_t min_groups = std::max<int64_t>(16, 65536 / (steps * 64));  // >= 64 KiB of codes per chunk
    chunks = std::clamp<int64_t>(groups / min_groups, 1, wanted);
  }
  const int64_t tasks = query_blocks * chunks;
  auto chunk_start = [&](int64_t chunk) { return groups * chunk / chunks; };
  std::vector<std::vector<TaskQuery>> found(static_cast<size_t>(tasks));
  std::atomic<bool> failed{false};

  auto run_task = [&](int64_t task) {
    const int64_t qb = task / chunks, chunk = task % chunks;
    const int64_t q0 = qb * query_block, nq = std::min(query_block, b - q0);
    const int64_t g_begin = chunk_start(chunk), g_end = chunk_start(chunk + 1);
    const int64_t chunk_classes = std::min(C, g_end * kCompactLanes) - g_begin * kCompactLanes;
    const int64_t cap = chunk_classes / 16 + k;  // more candidates than this: score the whole matrix
    std::vector<TaskQuery>& mine = found[task];
    mine.resize(static_cast<size_t>(nq));
    std::vector<float> thresholds(static_cast<size_t>(nq), -std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < nq; ++j) {
      mine[j].lower.reset(k);
      mine[j].prune_at = std::max<int64_t>(1024, 4 * k);
    }
    const int64_t block_groups = nq <= 8 ? 16 : 8;
    static thread_local ScratchBuffer lower_buffer, upper_buffer;
    float* lower = lower_buffer.get(static_cast<size_t>(block_groups * nq * kCompactLanes));
    float* upper = upper_buffer.get(static_cast<size_t>(block_groups * nq * kCompactLanes));
    for (int64_t g0 = g_begin; g0 < g_end; g0 += block_groups) {
      if (failed.load(std::memory_order_relaxed)) return;
      const int64_t n_groups = std::min(block_groups, g_end - g0);
      loops.score_groups(codes.ptr<uint8_t>(), meta.ptr<float>(), steps, g0, n_groups, prepared.data() + q0,
                         static_cast<int>(nq), terms, lower, upper);
      for (int64_t j = 0; j < nq; ++j) {
        TaskQuery& tq = mine[j];
        float threshold = thresholds[j];
        for (int64_t gi = 0; gi < n_groups; ++gi) {
          const float* up = upper + (gi * nq + j) * kCompactLanes;
          const float* lo = lower + (gi * nq + j) * kCompactLanes;
          // A lane is looked at when it may be a candidate or its bounds are not finite (NaN compares false):
          // a score that may overflow float32 anywhere sends the query to topk, which reports it.
          int hit = 0;
          for (int lane = 0; lane < kCompactLanes; ++lane)
            hit |= !(up[lane] < threshold) | !(lo[lane] >= -std::numeric_limits<float>::max());
          if (!hit) continue;
          const int64_t c0 = (g0 + gi) * kCompactLanes;
          for (int lane = 0; lane < kCompactLanes && c0 + lane < C; ++lane) {
            if (!finite(up[lane]) || !finite(lo[lane])) {
              tq.whole_matrix = true;
              break;
            }
            if (up[lane] < threshold) continue;
            tq.upper.push_back({up[lane], c0 + lane});
            if (lo[lane] > threshold) {
              tq.lower.push(lo[lane], c0 + lane);
              threshold = tq.lower.threshold();
            }
          }
          if (!tq.whole_matrix && static_cast<int64_t>(tq.upper.size()) >= tq.prune_at) {
            auto keep_end = std::remove_if(tq.upper.begin(), tq.upper.end(),
                                           [&](const Candidate& c) { return c.score < threshold; });
            tq.upper.erase(keep_end, tq.upper.end());
            tq.prune_at = std::max<int64_t>(tq.prune_at, 2 * static_cast<int64_t>(tq.upper.size()));
            if (static_cast<int64_t>(tq.upper.size()) > cap) tq.whole_matrix = true;
          }
          if (tq.whole_matrix) {
            // Settled: this query gets the full float32 scan. Nothing can pass an infinite threshold.
            std::vector<Candidate>().swap(tq.upper);
            threshold = std::numeric_limits<float>::infinity();
            break;
          }
        }
        thresholds[j] = threshold;
      }
    }
  };
  run_tasks(tasks, threads, failed, run_task);

  // 3. Per query: L from every task's lower bounds, the candidates above it, and their float32 scores by topk.
  float* out_scores = scores.ptr<float>();
  int64_t* out_indices = indices.ptr<int64_t>();
  int64_t* out_rows = fp32_rows.ptr<int64_t>();
  std::vector<char> whole_matrix(static_cast<size_t>(b), 0);
  auto topk_of = [&](int64_t i, const Tensor& class_rows, int64_t* index_map) {
    Tensor q = queries, s = scores, ix = indices;
    q.data = const_cast<float*>(Q + i * d);
    q.shape = {1, d};
    s.data = out_scores + i * k;
    s.shape = {1, k};
    ix.data = out_indices + i * k;
    ix.shape = {1, k};
    cpu::topk(q, class_rows, k, metric, s, ix);
    if (index_map != nullptr)
      for (int64_t j = 0; j < k; ++j) out_indices[i * k + j] = index_map[out_indices[i * k + j]];
  };
  auto rerank = [&](int64_t i) {
    const int64_t qb = i / query_block, local = i - qb * query_block;
    std::vector<float> lows;
    bool whole = false;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const TaskQuery& tq = found[qb * chunks + chunk][local];
      whole = whole || tq.whole_matrix;
      for (const Candidate& c : tq.lower.items()) lows.push_back(c.score);
    }
    if (!whole) {
      std::nth_element(lows.begin(), lows.begin() + (k - 1), lows.end(), std::greater<float>());
      const float L = lows[k - 1];
      std::vector<int64_t> picked;
      for (int64_t chunk = 0; chunk < chunks; ++chunk)
        for (const Candidate& c : found[qb * chunks + chunk][local].upper)
          if (c.score >= L) picked.push_back(c.index);
      const int64_t n = static_cast<int64_t>(picked.size());
      if (n <= C / 16 + k) {
        std::vector<float> gathered(static_cast<size_t>(n * d));
        const float* R = rows.ptr<float>();
        for (int64_t j = 0; j < n; ++j) std::memcpy(gathered.data() + j * d, R + picked[j] * d, sizeof(float) * d);
        Tensor candidates = rows;
        candidates.data = gathered.data();
        candidates.shape = {n, d};
        try {
          topk_of(i, candidates, picked.data());
          out_rows[i] = n;
          return;
        } catch (const ArgumentError&) {
          // a score outside float32 range: the whole-matrix call below reports it, naming the right row
        }
      }
    }
    whole_matrix[i] = 1;
  };
  std::atomic<bool> unused_stop{false};
  run_tasks(b, b > 1 ? threads : 1, unused_stop, rerank);
  for (int64_t i = 0; i < b; ++i) {
    if (!whole_matrix[i]) continue;
    topk_of(i, rows, nullptr);
    out_rows[i] = C;
  }
}

}  // namespace metaedge::cpu

namespace metaedge {
std::string compact_kernel_name() { return cpu::compact_kernel_name_cpu(); }
}  // namespace metaedge
