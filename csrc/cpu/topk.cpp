// topk on the CPU (semantics: DESIGN.md section 5): the k best prototypes per query by cosine, dot or
// negative squared euclidean distance; scores descending, ties to the lower class index, exactly.
//
// Classes are processed in blocks; each block's scores are computed into a small buffer and immediately
// filtered into per-query candidate lists (a score enters only if it beats the query's current k-th best),
// so the b x C score matrix never exists. Two ways to score a block:
//   - stream (small batches): each prototype row is read once and dotted with every query (and its own
//     norm, for cosine) in that single read. Batch 1 is bound by memory bandwidth, so this reads the
//     prototype matrix exactly once, split over the threads by class ranges.
//   - gemm (larger batches): the register-blocked sgemm micro-kernel scores a block of classes against a
//     block of queries; norms come from a pass over the block just before, which leaves it in cache.
// Work is split into (query block, class chunk) tasks; with few queries the classes are split so every
// thread streams its own range. Each task keeps its own candidates; the merge at the end orders them by
// (score desc, index asc), so results do not depend on the split.
//
// NaN/Inf in `protos` is not looked for in a separate pass (that would double the memory traffic of batch-1
// matching). It cannot hide: a non-finite prototype value makes every score of that row non-finite, and
// the selection already looks at every score, so a non-finite score stops the call; only then are the
// prototypes scanned, to tell a NaN/Inf row from finite values whose score overflows float32.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_kernels.h"
#include "gemm_internal.h"
#include "parallel_tasks.h"
#include "metaedge/checks.h"
#include "simd.h"
#include "topk_select.h"

namespace metaedge::cpu {

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4,prefer-vector-width=512")
namespace topk_avx512 {
#define ME_VEC_BYTES 64
#include "topk_simd_impl.h"
#undef ME_VEC_BYTES
}  // namespace topk_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace topk_avx2 {
#define ME_VEC_BYTES 32
#include "topk_simd_impl.h"
#undef ME_VEC_BYTES
}  // namespace topk_avx2
#pragma GCC pop_options
#endif

namespace topk_baseline {
#define ME_VEC_BYTES 16
#include "topk_simd_impl.h"
#undef ME_VEC_BYTES
}  // namespace topk_baseline

namespace {

using StreamRowsFn = void (*)(int, int, const float*, int64_t, int64_t, const float* const*, float*, int64_t,
                              float*);
using RowSumsqFn = void (*)(const float*, int64_t, int64_t, float*);
using PackedRowsFn = void (*)(bool, const float*, int64_t, int64_t, const float*, float*, int64_t);

struct ScoringLoops {
  StreamRowsFn stream_rows;
  RowSumsqFn row_sumsq;
  PackedRowsFn packed_rows;
};

ScoringLoops scoring_loops() {
  switch (simd_target()) {
#if defined(__x86_64__)
    case SimdTarget::kAvx512: return {topk_avx512::stream_rows, topk_avx512::row_sumsq, topk_avx512::packed_rows};
    case SimdTarget::kAvx2: return {topk_avx2::stream_rows, topk_avx2::row_sumsq, topk_avx2::packed_rows};
#endif
    default: return {topk_baseline::stream_rows, topk_baseline::row_sumsq, topk_baseline::packed_rows};
  }
}

enum StreamMode { kStreamDot = 0, kStreamDotAndNorm = 1, kStreamSquaredDistance = 2 };

// Batches from this size use the gemm path. Measured on AVX-512 (Zen 4, one thread, C = 50k): with long rows
// the stream path's extra work per query (a horizontal sum per row) is cheap next to the row, and it wins up
// to ~10 queries; with short rows (d = 64) the gemm path wins from 3-4 queries.
// METAEDGE_TOPK_GEMM_MIN_BATCH overrides it (tests use it to run both paths on the same inputs; benchmarks to
// find the crossover).
int64_t gemm_min_batch(int64_t d) {
  static const int64_t forced = [] {
    const char* env = std::getenv("METAEDGE_TOPK_GEMM_MIN_BATCH");
    const long long parsed = env != nullptr ? std::atoll(env) : 0;
    return static_cast<int64_t>(parsed >= 1 ? parsed : 0);
  }();
  if (forced > 0) return forced;
  return d >= 256 ? 10 : 4;
}

constexpr int64_t kStreamQueriesPerPass = 4;  // stream_rows handles up to 4 queries per read of a row
constexpr int64_t kStreamBlockRows = 256;
constexpr int64_t kGemmQueryBlock = 128;

// A non-finite score seen while selecting: class and query of the first one in this task's order.
struct BadScore {
  int64_t cls = -1;
  int64_t query = -1;
  void record(int64_t c, int64_t q) {
    if (cls < 0 || c < cls || (c == cls && q < query)) cls = c, query = q;
  }
};

// How raw block values become scores.
enum class Transform {
  kIdentity,        // dot
  kScaleByClass,    // cosine: <q_hat, p> * (1 / ||p||)
  kNegate,          // euclidean, direct ||q - p||^2
  kNegateExpanded,  // euclidean from a gemm block: -(||q||^2 - 2 <q, p> + ||p||^2), clamped to <= 0
};

// Largest |x| of a row. (Kept in float: a double fmax reduction here crashes GCC 12's aarch64 vectoriser.)
inline float max_magnitude(const float* row, int64_t d) {
  float peak = 0.f;
  for (int64_t j = 0; j < d; ++j) peak = std::fmax(peak, std::fabs(row[j]));
  return peak;
}

// Cosine scale of one prototype row, given its float sum of squares. Inside a comfortable range this is
// 1 / ||p|| (raw dot products are then multiplied by it). Rows that are tiny (the float sum underflows), huge
// (overflows), zero or non-finite are rare; their cosines against the block's queries are recomputed here in
// double with scaling, written over `raw_row`, and the scale is 1. So any finite row is normalised exactly,
// a zero row scores 0, and a non-finite row yields NaN scores, which the selection reports.
inline float cosine_scale(float sumsq, const float* row, int64_t d, const float* const* queries, int64_t nq,
                          float* raw_row) {
  if (sumsq >= 1e-30f && sumsq <= 1e30f) return 1.f / std::sqrt(sumsq);
  const double peak = max_magnitude(row, d);
  if (!(peak > 0.0) || !std::isfinite(peak)) {
    const float value = peak == 0.0 ? 0.f : std::numeric_limits<float>::quiet_NaN();
    for (int64_t j = 0; j < nq; ++j) raw_row[j] = value;
    return 1.f;
  }
  double sq = 0.0;
  for (int64_t t = 0; t < d; ++t) sq += (row[t] / peak) * (row[t] / peak);
  const double inv_scaled_norm = 1.0 / std::sqrt(sq);  // of row / peak
  for (int64_t j = 0; j < nq; ++j) {
    double dot = 0.0;  // NaN in the row (which max_magnitude skips) propagates here
    for (int64_t t = 0; t < d; ++t) dot += static_cast<double>(queries[j][t]) * (row[t] / peak);
    raw_row[j] = static_cast<float>(dot * inv_scaled_norm);
  }
  return 1.f;
}

// out = x / ||x||, exactly (in double, scaled: tiny or huge rows are fine); a zero row stays zero, a row with
// NaN or Inf becomes NaN.
inline void unit_row(const float* x, int64_t d, float* out) {
  const double peak = max_magnitude(x, d);
  double inv = 0.0;
  if (peak > 0.0) {  // (multiplications, not divisions, so the loops vectorise: packing cosine rows is O(C d))
    const double scale = 1.0 / peak;
    double sq = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      const double v = x[j] * scale;
      sq += v * v;
    }
    inv = scale / std::sqrt(sq);
  }
  for (int64_t j = 0; j < d; ++j) out[j] = static_cast<float>(x[j] * inv);
}

inline bool not_finite(float s) { return (s - s) != 0.f; }  // NaN for +-Inf and NaN, 0 otherwise

// Turns raw[rows][ldr] (class-major, nq queries per row) into scores in place, then offers every score to its
// query's selector. Most rows hold no candidate, so a vectorisable pre-check skips them.
void scan_block(Transform transform, float* raw, int64_t ldr, int64_t rows, int64_t nq, int64_t c0,
                const float* class_aux, const float* query_aux, Selector* selectors, float* thresholds,
                BadScore& bad) {
  // One loop per transform over the whole block (not a switch per row): with one query a row holds a single
  // score, and per-row dispatch cost more than the scoring itself.
  switch (transform) {
    case Transform::kIdentity: break;
    case Transform::kScaleByClass:
      for (int64_t c = 0; c < rows; ++c)
        for (int64_t j = 0; j < nq; ++j) raw[c * ldr + j] *= class_aux[c];
      break;
    case Transform::kNegate:
      for (int64_t i = 0; i < rows * ldr; ++i) raw[i] = 0.f - raw[i];
      break;
    case Transform::kNegateExpanded:
      for (int64_t c = 0; c < rows; ++c) {
        const float pn = class_aux[c];
        for (int64_t j = 0; j < nq; ++j) {
          const float dist = query_aux[j] - 2.f * raw[c * ldr + j] + pn;
          raw[c * ldr + j] = dist <= 0.f ? 0.f : -dist;  // rounding can push a distance below 0; NaN stays NaN
        }
      }
      break;
  }
  auto offer = [&](int64_t c, int64_t j) {
    const float s = raw[c * ldr + j];
    if (not_finite(s)) {
      bad.record(c0 + c, j);
    } else if (s > thresholds[j]) {
      selectors[j].push(s, c0 + c);
      thresholds[j] = selectors[j].threshold();
    }
  };
  if (nq == 1) {
    // Groups of 16 scores: with the sorted selector's exact threshold few groups hold a candidate, and a
    // smaller group offers fewer rows one by one (1000 classes: 0.95x the time of groups of 64).
    constexpr int64_t kGroup = 16;
    for (int64_t g = 0; g < rows; g += kGroup) {
      const int64_t end = std::min(rows, g + kGroup);
      const float threshold = thresholds[0];
      int hit = 0;
      for (int64_t c = g; c < end; ++c) hit |= (raw[c] > threshold) | not_finite(raw[c]);
      if (hit)
        for (int64_t c = g; c < end; ++c) offer(c, 0);
    }
    return;
  }
  for (int64_t c = 0; c < rows; ++c) {
    const float* row = raw + c * ldr;
    int hit = 0;
    for (int64_t j = 0; j < nq; ++j) hit |= (row[j] > thresholds[j]) | not_finite(row[j]);
    if (hit)
      for (int64_t j = 0; j < nq; ++j) offer(c, j);
  }
}

std::string format_number(double v) {
  std::ostringstream os;
  os.precision(4);
  os << v;
  return os.str();
}

[[noreturn]] void report_non_finite_scores(const Tensor& queries, const Tensor& protos, Metric metric,
                                          const BadScore& bad) {
  const int64_t d = protos.size(1);
  const int64_t flat = first_non_finite(protos);
  if (flat >= 0) {
    throw ArgumentError("`protos`: expected finite values, got NaN or Inf in row " + std::to_string(flat / d) +
                        " (flat index " + std::to_string(flat) + ") of " + protos.describe());
  }
  const double q_peak = max_magnitude(queries.ptr<float>() + bad.query * d, d);
  const double p_peak = max_magnitude(protos.ptr<float>() + bad.cls * d, d);
  throw ArgumentError(std::string("topk: the ") + metric_name(metric) + " score of `queries` row " +
                      std::to_string(bad.query) + " against `protos` row " + std::to_string(bad.cls) +
                      " is not representable in float32 (largest magnitudes: " + format_number(q_peak) +
                      " in that query, " + format_number(p_peak) +
                      " in that prototype). Scores, and for 'euclidean' squared norms, must stay within float32 "
                      "range (about 3.4e38): rescale the inputs, or use metric='cosine', which normalises them.");
}

}  // namespace

void topk(const Tensor& queries, const Tensor& protos, int64_t k, Metric metric, const Tensor& scores,
          const Tensor& indices, const Tensor* packed) {
  auto require_float32 = [](const Tensor& t, const char* name) {
    if (t.dtype != DType::kFloat32)
      throw ArgumentTypeError(std::string("`") + name + "`: the CPU topk computes in float32, got " +
                              dtype_name(t.dtype) + " (metaedge.kernels.topk converts float16 to float32 on the CPU)");
  };
  require_float32(queries, "queries");
  require_float32(protos, "protos");
  const int64_t b = queries.size(0), C = protos.size(0), d = protos.size(1);
  if (b == 0) return;
  const float* P = protos.ptr<float>();
  const float* Q = queries.ptr<float>();
  const ScoringLoops loops = scoring_loops();
  const bool use_gemm = b >= gemm_min_batch(d);
  // The packed copy serves the streaming path; the gemm path packs blocks its own way.
  const float* packed_classes = packed != nullptr && !use_gemm ? packed->ptr<float>() : nullptr;

  // Per-query preparation: unit queries for cosine (exactly, in double: tiny or huge queries are fine), squared
  // norms for the expanded euclidean form.
  std::vector<float> normalized, query_sq_norms;
  const float* q_rows = Q;
  if (metric == Metric::kCosine) {
    normalized.resize(static_cast<size_t>(b * d));
    for (int64_t i = 0; i < b; ++i) unit_row(Q + i * d, d, normalized.data() + i * d);
    q_rows = normalized.data();
  } else if (metric == Metric::kEuclidean && use_gemm) {
    query_sq_norms.resize(static_cast<size_t>(b));
    for (int64_t i = 0; i < b; ++i) {
      double sq = 0.0;
      for (int64_t j = 0; j < d; ++j) sq += static_cast<double>(Q[i * d + j]) * Q[i * d + j];
      query_sq_norms[i] = static_cast<float>(sq);
    }
  }

  Transform transform = Transform::kIdentity;
  if (metric == Metric::kCosine) transform = Transform::kScaleByClass;
  if (metric == Metric::kEuclidean) transform = use_gemm ? Transform::kNegateExpanded : Transform::kNegate;
  // The packed copy holds scores' final form: negated distances come out of its loop, and for cosine its rows
  // are unit rows already.
  if (packed_classes != nullptr) transform = Transform::kIdentity;
  // The gemm path runs the sum-of-squares pass for dot too: that sequential read brings the block into L2
  // at full bandwidth, and the gemm's packing, which reads 16 rows at a time, then hits L2 instead of DRAM
  // (measured faster than packing straight from memory).
  const bool needs_sumsq = use_gemm || (metric == Metric::kCosine && packed_classes == nullptr);

  // Blocks: the stream path takes all queries at once; the gemm path blocks queries so that a block of
  // classes (rows of `protos`) plus its score buffer stays in L2 (~512 KiB).
  const int64_t query_block = use_gemm ? std::min(b, kGemmQueryBlock) : b;
  int64_t class_block = kStreamBlockRows;
  if (use_gemm) {
    class_block = 131072 / (std::max<int64_t>(d, 1) + query_block);
    class_block = std::clamp<int64_t>(class_block / 48 * 48, 48, 1024);
  }
  const int64_t query_blocks = (b + query_block - 1) / query_block;

  int threads = 1;
#ifdef _OPENMP
  if (!omp_in_parallel() && static_cast<double>(b) * C * std::max<int64_t>(d, 1) >= 131072.0)
    threads = omp_get_max_threads();
#endif
  // With few query blocks, split the classes too (several chunks per thread balance a busy core); each chunk
  // holds at least a block and ~128 KiB of prototypes, so the merge stays small.
  int64_t class_chunks = 1;
  if (threads > 1 && query_blocks < 2 * threads) {
    const int64_t wanted = (4 * threads + query_blocks - 1) / query_blocks;
    const int64_t min_rows = std::max<int64_t>(class_block, 32768 / std::max<int64_t>(d, 1));
    class_chunks = std::clamp<int64_t>(C / min_rows, 1, wanted);
  }
  const int64_t tasks = query_blocks * class_chunks;
  // Chunks of the packed matrix start at a group boundary (blocks are whole groups too: 256 = 16 x 16).
  auto chunk_start = [&](int64_t chunk) {
    const int64_t start = C * chunk / class_chunks;
    return packed_classes != nullptr && chunk < class_chunks ? start / kPackedLanes * kPackedLanes : start;
  };

  // Per-task candidates. Small calls (the per-frame case) reuse this thread's storage from the last call
  // rather than allocating a dozen vectors; large ones allocate, so no thread keeps a big batch's memory.
  static thread_local std::vector<std::vector<Selector>> reused_results;
  std::vector<std::vector<Selector>> own_results;
  const bool reuse = b <= 16 && tasks <= 64 && k <= 256;
  std::vector<std::vector<Selector>>& results = reuse ? reused_results : own_results;
  if (static_cast<int64_t>(results.size()) < tasks) results.resize(static_cast<size_t>(tasks));
  // (References, not the thread_locals themselves, are what the tasks see: a worker thread naming a
  // thread_local would get its own, empty one.)
  static thread_local std::vector<BadScore> reused_bad_scores;
  std::vector<BadScore>& bad_scores = reused_bad_scores;
  bad_scores.assign(static_cast<size_t>(tasks), BadScore{});
  std::atomic<bool> failed{false};

  auto run_task = [&](int64_t task) {
    const int64_t qb = task / class_chunks, chunk = task % class_chunks;
    const int64_t q0 = qb * query_block, nq = std::min(query_block, b - q0);
    const int64_t c_begin = chunk_start(chunk), c_end = chunk_start(chunk + 1);
    std::vector<Selector>& selectors = results[task];
    if (static_cast<int64_t>(selectors.size()) < nq) selectors.resize(static_cast<size_t>(nq));
    for (int64_t j = 0; j < nq; ++j) selectors[j].reset(k);
    static thread_local std::vector<float> thresholds;  // (nq <= kGemmQueryBlock)
    thresholds.assign(static_cast<size_t>(nq), -std::numeric_limits<float>::infinity());
    static thread_local ScratchBuffer raw_buffer, aux_buffer;
    // (+ one group: the packed loop writes the padding lanes of the last group too)
    float* raw = raw_buffer.get(static_cast<size_t>((class_block + kPackedLanes) * nq));
    float* aux = aux_buffer.get(static_cast<size_t>(class_block));
    BadScore& bad = bad_scores[task];
    static thread_local std::vector<const float*> query_ptrs;
    query_ptrs.resize(static_cast<size_t>(nq));
    for (int64_t i = 0; i < nq; ++i) query_ptrs[i] = q_rows + (q0 + i) * d;

    for (int64_t c0 = c_begin; c0 < c_end; c0 += class_block) {
      if (failed.load(std::memory_order_relaxed)) break;
      const int64_t rows = std::min(class_block, c_end - c0);
      const float* block = P + c0 * d;
      if (use_gemm) {
        if (needs_sumsq) loops.row_sumsq(block, d, rows, aux);
        GemmProblem g;
        g.M = rows, g.N = nq, g.K = d;
        g.a = block, g.lda = d, g.a_row_major = true;
        g.b = q_rows + q0 * d, g.ldb = d, g.b_row_major = false;
        g.c = raw, g.rs_c = nq, g.cs_c = 1;
        gemm_serial(gemm_best_orientation(g));
      } else if (packed_classes != nullptr) {
        // A group is 4 KiB at d = 64: it stays in L1 while every query of the batch reads it.
        const int64_t groups = (rows + kPackedLanes - 1) / kPackedLanes;
        const float* first_group = packed_classes + c0 * d;  // c0 is a multiple of kPackedLanes
        for (int64_t j = 0; j < nq; ++j)
          loops.packed_rows(metric == Metric::kEuclidean, first_group, d, groups, query_ptrs[j], raw + j, nq);
      } else {
        for (int64_t g0 = 0; g0 < nq; g0 += kStreamQueriesPerPass) {
          const int group = static_cast<int>(std::min(kStreamQueriesPerPass, nq - g0));
          int mode = metric == Metric::kEuclidean ? kStreamSquaredDistance : kStreamDot;
          if (metric == Metric::kCosine && g0 == 0) mode = kStreamDotAndNorm;
          loops.stream_rows(mode, group, block, d, rows, query_ptrs.data() + g0, raw + g0, nq, aux);
        }
      }
      if (metric == Metric::kCosine && packed_classes == nullptr)
        for (int64_t c = 0; c < rows; ++c)
          aux[c] = cosine_scale(aux[c], block + c * d, d, query_ptrs.data(), nq, raw + c * nq);
      scan_block(transform, raw, nq, rows, nq, c0, aux,
                 query_sq_norms.empty() ? nullptr : query_sq_norms.data() + q0, selectors.data(),
                 thresholds.data(), bad);
      if (bad.cls >= 0) {
        bad.query += q0;
        failed.store(true, std::memory_order_relaxed);
        break;
      }
    }
  };
  run_tasks(tasks, threads, failed, run_task);
  if (failed.load()) {
    BadScore first;
    for (const BadScore& bs : bad_scores)
      if (bs.cls >= 0) first.record(bs.cls, bs.query);
    report_non_finite_scores(queries, protos, metric, first);
  }

  // Merge the chunks of each query: the k best by (score desc, index asc), in that order.
  float* out_scores = scores.ptr<float>();
  int64_t* out_indices = indices.ptr<int64_t>();
  auto merge_query = [&](int64_t i) {
    const int64_t qb = i / query_block, local = i - qb * query_block;
    static thread_local std::vector<Candidate> merged;
    merged.clear();
    for (int64_t chunk = 0; chunk < class_chunks; ++chunk) {
      const std::vector<Candidate>& items = results[qb * class_chunks + chunk][local].items();
      merged.insert(merged.end(), items.begin(), items.end());
    }
    if (static_cast<int64_t>(merged.size()) > k)
      std::nth_element(merged.begin(), merged.begin() + (k - 1), merged.end(), better);
    std::sort(merged.begin(), merged.begin() + k, better);
    for (int64_t j = 0; j < k; ++j) {
      out_scores[i * k + j] = merged[j].score;
      out_indices[i * k + j] = merged[j].index;
    }
    if (merged.capacity() > 65536) std::vector<Candidate>().swap(merged);  // a huge k: do not keep it
  };
  if (threads > 1 && b * class_chunks * k >= 4096) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < b; ++i) merge_query(i);
  } else {
    for (int64_t i = 0; i < b; ++i) merge_query(i);
  }
}

void pack_prototypes(const Tensor& protos, Metric metric, const Tensor& packed) {
  const int64_t C = protos.size(0), d = protos.size(1);
  const float* src = protos.ptr<float>();
  float* dst = packed.ptr<float>();
  const int64_t groups = (C + kPackedLanes - 1) / kPackedLanes;
  std::vector<float> unit(metric == Metric::kCosine ? static_cast<size_t>(kPackedLanes * d) : 0);
  const float* rows[kPackedLanes];
  float sumsq[kPackedLanes];
  const ScoringLoops loops = scoring_loops();
  for (int64_t g = 0; g < groups; ++g) {
    float* group = dst + g * d * kPackedLanes;
    const int64_t lanes = std::min(kPackedLanes, C - g * kPackedLanes);
    for (int64_t lane = 0; lane < lanes; ++lane) rows[lane] = src + (g * kPackedLanes + lane) * d;
    if (metric == Metric::kCosine) {
      // Unit rows: a float sum of squares (SIMD) where it is comfortably in range, as cosine_scale does;
      // tiny, huge, zero or non-finite rows the exact way.
      loops.row_sumsq(rows[0], d, lanes, sumsq);
      for (int64_t lane = 0; lane < lanes; ++lane) {
        float* out = unit.data() + lane * d;
        if (sumsq[lane] >= 1e-30f && sumsq[lane] <= 1e30f) {
          const float inv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(sumsq[lane])));
          for (int64_t t = 0; t < d; ++t) out[t] = rows[lane][t] * inv;
        } else {
          unit_row(rows[lane], d, out);
        }
        rows[lane] = out;
      }
    }
    // Written in order, read from 16 rows at once: the output streams instead of touching d lines per row.
    for (int64_t t = 0; t < d; ++t) {
      float* out = group + t * kPackedLanes;
      for (int64_t lane = 0; lane < lanes; ++lane) out[lane] = rows[lane][t];
      for (int64_t lane = lanes; lane < kPackedLanes; ++lane) out[lane] = 0.f;
    }
  }
}

}  // namespace metaedge::cpu
