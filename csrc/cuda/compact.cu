// The compact class matrix on the GPU (ops.h; the CPU version, csrc/cpu/compact.cpp, derives the bound).
//
//   encode   one warp per row: the same quantisation as the CPU (double maths, round half to even), written
//            into the shared layout (codes [G, S, 16, 4] as code + 128, meta [G, 4, 16]).
//   prep     one block per query: its int8 codes (packed 4 per word), scale, norms, and the NaN/Inf check.
//   pass     the first pass, fused: each warp takes one group of 16 classes at a time, reads its codes with
//            16-byte loads (a thread: 4 classes x 4 dims per load), dp4a against the query codes held in shared
//            memory (the stored +128 is undone with an XOR: (c + 128) ^ 0x80 is c as a signed byte), reduces
//            over the warp, and turns the 16 dot products into lower/upper bounds. Each warp keeps the k best
//            lower bounds it has seen (k <= 32) and publishes its k-th best to a per-query atomic maximum, so
//            every warp filters with the best threshold known so far; classes whose upper bound reaches it are
//            appended (lower, upper, index) to a per-query candidate list. Any class with lower >= the final L
//            has upper >= every threshold used, so the list holds every class the exact top-k needs, and the
//            exact L is the k-th largest lower bound in it.
//   finish   on the host, from the (short) lists: L per query, the candidates {upper >= L}, their union over the
//            batch. The union's float32 rows are gathered and scored by cuda::topk itself (all queries at once),
//            and its indices mapped back. A query with bounds that are not finite, a list that overflowed, or
//            k > 32 sends the whole batch to cuda::topk over every row: exact, only slower.
// The float32 scores are cuda::topk's; against the union they are those of the same kernels and arithmetic as
// against the whole matrix (a row's score does not depend on where it sits), up to the route topk picks for the
// batch size, as between its own routes.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

namespace metaedge::cuda {
namespace {

constexpr int kEncodeWarps = 4;
constexpr int kPassWarps = 8;
constexpr int kPassQueries = 8;  // queries per launch of the first pass
constexpr int kFusedMaxK = 32;
constexpr int kLanes = static_cast<int>(kCompactLanes);

struct QueryTerms {
  float scale, norm, err, sq_norm, shift;  // as CompactQuery in csrc/cpu/compact.cpp
};

// Per-query status words, read back in one copy: [0, b) first bad element of the query (or ULLONG_MAX),
// [b, 2b) candidates appended, [2b, 3b) non-zero when a bound was not finite.
struct Status {
  unsigned long long* bad;
  unsigned long long* count;
  unsigned long long* flag;
};

__device__ __forceinline__ float round_up(double x) { return __double2float_ru(x * (1.0 + 1e-12)); }

// Floats as ints whose signed order is the float order (for atomicMax).
__device__ __forceinline__ int ordered(float f) {
  const int i = __float_as_int(f);
  return i >= 0 ? i : i ^ 0x7fffffff;
}
__device__ __forceinline__ float from_ordered(int o) { return __int_as_float(o >= 0 ? o : o ^ 0x7fffffff); }

// ---- encode --------------------------------------------------------------------------------------------

__global__ void compact_encode_kernel(const float* __restrict__ rows, const int64_t* __restrict__ slots, int64_t n,
                                      int64_t d, int64_t steps, int cosine, int euclidean,
                                      const float* __restrict__ center, uint8_t* codes, float* meta) {
  const int lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kEncodeWarps + (threadIdx.x >> 5);
  if (i >= n) return;  // (whole warps)
  const float* x = rows + i * d;
  double peak = 0.0;
  for (int64_t t = lane; t < d; t += 32) peak = fmax(peak, fabs(static_cast<double>(x[t])));
  peak = warp_max(peak);
  // x_t: the row (dot, euclidean) or (x_t / peak) * inv (cosine); v_t = x_t - center_t, as csrc/cpu/compact.cpp
  // computes them.
  double inv = 1.0;
  if (cosine) {
    double sq = 0.0;
    if (peak > 0.0)
      for (int64_t t = lane; t < d; t += 32) {
        const double s = x[t] / peak;
        sq += s * s;
      }
    sq = warp_sum(sq);
    inv = peak > 0.0 ? 1.0 / sqrt(sq) : 0.0;
  }
  auto scored = [&](int64_t t) {
    return cosine ? (peak > 0.0 ? (x[t] / peak) * inv : 0.0) : static_cast<double>(x[t]);
  };
  double vmax = 0.0, x_sq = 0.0;
  for (int64_t t = lane; t < d; t += 32) {
    const double xt = scored(t);
    x_sq += xt * xt;
    vmax = fmax(vmax, fabs(xt - center[t]));
  }
  vmax = warp_max(vmax);
  x_sq = warp_sum(x_sq);
  const float scale_f = static_cast<float>(vmax / kCompactCodeMax);
  const double scale = scale_f;
  const int64_t g = slots[i] / kLanes, l = slots[i] % kLanes;
  uint8_t* group = codes + g * steps * 64;
  double err = 0.0, code_sq = 0.0, norm_sq = 0.0;
  for (int64_t t = lane; t < steps * kCompactStep; t += 32) {
    int code = 0;
    if (t < d) {
      const double v = scored(t) - center[t];
      if (scale > 0.0) code = static_cast<int>(fmin(fmax(rint(v / scale), -1.0 * kCompactCodeMax), 1.0 * kCompactCodeMax));
      const double approx = scale * code;
      err += (v - approx) * (v - approx);
      code_sq += approx * approx;
      norm_sq += v * v;
    }
    group[(t / kCompactStep) * 64 + l * kCompactStep + t % kCompactStep] = static_cast<uint8_t>(code + 128);
  }
  err = warp_sum(err);
  code_sq = warp_sum(code_sq);
  norm_sq = warp_sum(norm_sq);
  if (lane == 0) {
    float* m = meta + g * kCompactMetaFields * kLanes;
    m[l] = scale_f;
    m[16 + l] = round_up(sqrt(err));
    m[32 + l] = round_up(sqrt(code_sq));
    m[48 + l] = static_cast<float>(sqrt(euclidean ? norm_sq : x_sq));
  }
}

// ---- prep ----------------------------------------------------------------------------------------------

__global__ void compact_prep_kernel(const float* __restrict__ queries, const float* __restrict__ center, int64_t d,
                                    int64_t steps, int cosine, int euclidean, int code_max, int32_t* qcodes,
                                    QueryTerms* terms, Status st, int* l_global) {
  __shared__ double scratch[32];
  __shared__ float scratch_f[32];
  __shared__ unsigned long long first_bad;
  const int64_t row = blockIdx.x;
  const float* q = queries + row * d;
  if (threadIdx.x == 0) first_bad = ULLONG_MAX;
  __syncthreads();
  float peak_f = 0.f;
  bool reported = false;
  for (int64_t t = threadIdx.x; t < d; t += blockDim.x) {
    const float x = q[t];
    if (!isfinite(x) && !reported) {
      atomicMin(&first_bad, static_cast<unsigned long long>(row * d + t));
      reported = true;
    }
    peak_f = fmaxf(peak_f, fabsf(x));
  }
  const double peak = block_max(peak_f, scratch_f);  // (float max of float values: exact)
  double inv = 1.0;
  if (cosine) {
    double s2 = 0.0;
    if (peak > 0.0)
      for (int64_t t = threadIdx.x; t < d; t += blockDim.x) {
        const double s = q[t] / peak;
        s2 += s * s;
      }
    s2 = block_sum(s2, scratch);
    inv = peak > 0.0 ? 1.0 / sqrt(s2) : 0.0;
  }
  // w_t: q_t (dot), the unit query (cosine) or q_t - center_t (euclidean), as csrc/cpu/compact.cpp.
  auto w_of = [&](int64_t t) {
    const double scored = cosine ? (peak > 0.0 ? (q[t] / peak) * inv : 0.0) : static_cast<double>(q[t]);
    return euclidean ? scored - center[t] : scored;
  };
  double wmax_local = 0.0, shift = 0.0;
  for (int64_t t = threadIdx.x; t < d; t += blockDim.x) {
    const double w = w_of(t);
    wmax_local = fmax(wmax_local, fabs(w));
    if (!euclidean) shift += w * center[t];
  }
  const double vmax = block_max(wmax_local, scratch);
  shift = block_sum(shift, scratch);
  const float scale_f = static_cast<float>(vmax / code_max);
  const double scale = scale_f;
  double err = 0.0, norm_sq = 0.0;
  for (int64_t s = threadIdx.x; s < steps; s += blockDim.x) {
    uint32_t word = 0;
    for (int e = 0; e < kCompactStep; ++e) {
      const int64_t t = s * kCompactStep + e;
      int code = 0;
      if (t < d) {
        const double v = w_of(t);
        if (scale > 0.0) code = static_cast<int>(fmin(fmax(rint(v / scale), -1.0 * code_max), 1.0 * code_max));
        const double approx = scale * code;
        err += (v - approx) * (v - approx);
        norm_sq += v * v;
      }
      word |= static_cast<uint32_t>(static_cast<uint8_t>(static_cast<int8_t>(code))) << (8 * e);
    }
    qcodes[row * steps + s] = static_cast<int32_t>(word);
  }
  err = block_sum(err, scratch);
  norm_sq = block_sum(norm_sq, scratch);
  if (threadIdx.x == 0) {
    terms[row] = QueryTerms{scale_f, round_up(sqrt(norm_sq)), round_up(sqrt(err)),
                            euclidean ? static_cast<float>(norm_sq) : 0.f, static_cast<float>(shift)};
    st.bad[row] = first_bad;
    st.count[row] = 0;
    st.flag[row] = 0;
    l_global[row] = ordered(-INFINITY);
  }
}

// ---- first pass ----------------------------------------------------------------------------------------

struct PassParams {
  const uint8_t* codes;
  const float* meta;
  const int32_t* qcodes;  // [b, steps]
  const QueryTerms* terms;
  int64_t C, steps, groups, groups_per_block;
  int64_t q0;
  int nq, k, euclidean;
  float rho, abs_eps;
  int* l_global;
  Status st;
  float* cand_lower;  // [b, cap]
  float* cand_upper;
  int32_t* cand_index;
  int64_t cap;
};

template <int NQ>
__global__ void __launch_bounds__(kPassWarps * 32) compact_pass_kernel(const PassParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int32_t* qsh = reinterpret_cast<int32_t*>(smem);                   // [NQ, steps]
  float* lows = reinterpret_cast<float*>(qsh + NQ * p.steps);        // [warps, NQ, kFusedMaxK], best first
  int* held = reinterpret_cast<int*>(lows + kPassWarps * NQ * kFusedMaxK);  // [warps, NQ]
  float* offered = reinterpret_cast<float*>(held + kPassWarps * NQ);        // [warps, 16]
  for (int64_t i = threadIdx.x; i < NQ * p.steps; i += blockDim.x) {
    const int64_t j = i / p.steps;
    qsh[i] = j < p.nq ? p.qcodes[(p.q0 + j) * p.steps + i % p.steps] : 0;
  }
  for (int i = threadIdx.x; i < kPassWarps * NQ; i += blockDim.x) held[i] = 0;
  __syncthreads();

  QueryTerms qt[NQ];
  float threshold[NQ];
#pragma unroll
  for (int j = 0; j < NQ; ++j) {
    qt[j] = p.terms[p.q0 + min(j, p.nq - 1)];
    threshold[j] = -INFINITY;
  }
  const int64_t g_begin = static_cast<int64_t>(blockIdx.x) * p.groups_per_block;
  const int64_t g_end = min(p.groups, g_begin + p.groups_per_block);
  const int class_lane = lane & 15;
  for (int64_t g = g_begin + warp; g < g_end; g += kPassWarps) {
    const uint8_t* group = p.codes + g * p.steps * 64;
    int acc[NQ][4];
#pragma unroll
    for (int j = 0; j < NQ; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0;
    // A thread reads classes 4 (lane % 4) .. +3 of step s0 + lane / 4: 16 bytes; a warp 8 steps, 512 bytes.
#pragma unroll 4
    for (int64_t s0 = 0; s0 < p.steps; s0 += 8) {
      const int64_t s = s0 + lane / 4;
      if (s < p.steps) {
        const uint4 w = __ldg(reinterpret_cast<const uint4*>(group + s * 64 + (lane % 4) * 16));
        const int x0 = static_cast<int>(w.x ^ 0x80808080u), x1 = static_cast<int>(w.y ^ 0x80808080u);
        const int x2 = static_cast<int>(w.z ^ 0x80808080u), x3 = static_cast<int>(w.w ^ 0x80808080u);
#pragma unroll
        for (int j = 0; j < NQ; ++j) {
          const int y = qsh[j * p.steps + s];
          acc[j][0] = __dp4a(x0, y, acc[j][0]);
          acc[j][1] = __dp4a(x1, y, acc[j][1]);
          acc[j][2] = __dp4a(x2, y, acc[j][2]);
          acc[j][3] = __dp4a(x3, y, acc[j][3]);
        }
      }
    }
    // Sum over the 8 steps a warp load covers; then lane l < 16 takes class l's total (held by lane l / 4).
#pragma unroll
    for (int j = 0; j < NQ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) acc[j][e] += __shfl_xor_sync(kFullMask, acc[j][e], off);
    const int64_t c = g * kLanes + class_lane;
    const bool valid = lane < 16 && c < p.C;
    const float* m = p.meta + g * kCompactMetaFields * kLanes;
    const float scale = m[class_lane], err = m[16 + class_lane], code_norm = m[32 + class_lane];
    const float norm = m[48 + class_lane];
#pragma unroll
    for (int j = 0; j < NQ; ++j) {
      const int v0 = __shfl_sync(kFullMask, acc[j][0], class_lane >> 2);
      const int v1 = __shfl_sync(kFullMask, acc[j][1], class_lane >> 2);
      const int v2 = __shfl_sync(kFullMask, acc[j][2], class_lane >> 2);
      const int v3 = __shfl_sync(kFullMask, acc[j][3], class_lane >> 2);
      if (j >= p.nq) continue;  // (warp-uniform)
      const int which = class_lane & 3;
      const int dot = which == 0 ? v0 : (which == 1 ? v1 : (which == 2 ? v2 : v3));
      // The bound of csrc/cpu/compact_simd_impl.h, in the same float arithmetic.
      float a = static_cast<float>(dot) * (scale * qt[j].scale);
      const float quantisation = (qt[j].norm * err + qt[j].err * code_norm) * 1.0009765625f;
      float r;
      if (p.euclidean) {
        const float reach = norm + qt[j].norm;
        a = (a + a) - norm * norm - qt[j].sq_norm;
        r = (quantisation + quantisation) + p.rho * (reach * reach) + p.abs_eps;
      } else {
        a += qt[j].shift;
        r = quantisation + p.rho * qt[j].norm * norm + p.abs_eps;
      }
      const float lower = a - r, upper = a + r;
      const int64_t qi = p.q0 + j;
      const bool broken = valid && !(isfinite(lower) && isfinite(upper));
      if (__any_sync(kFullMask, broken)) {
        if (lane == 0) p.st.flag[qi] = 1;
        continue;
      }
      threshold[j] = fmaxf(threshold[j], from_ordered(*reinterpret_cast<volatile int*>(p.l_global + qi)));
      const bool pass = valid && upper >= threshold[j];
      const unsigned mask = __ballot_sync(kFullMask, pass);
      if (mask == 0) continue;
      unsigned long long base = 0;
      if (lane == 0) base = atomicAdd(p.st.count + qi, static_cast<unsigned long long>(__popc(mask)));
      base = __shfl_sync(kFullMask, base, 0);
      if (pass) {
        const unsigned long long pos = base + __popc(mask & ((1u << lane) - 1u));
        if (pos < static_cast<unsigned long long>(p.cap)) {
          p.cand_lower[qi * p.cap + pos] = lower;
          p.cand_upper[qi * p.cap + pos] = upper;
          p.cand_index[qi * p.cap + pos] = static_cast<int32_t>(c);
        }
      }
      // This warp's k best lower bounds: inserted one by one by lane 0 (rare once the threshold settles).
      const unsigned better = __ballot_sync(kFullMask, pass && lower > threshold[j]);
      if (better == 0) continue;
      float* mine = lows + (warp * NQ + j) * kFusedMaxK;
      int* count = held + warp * NQ + j;
      if (lane < 16) offered[warp * 16 + lane] = lower;
      __syncwarp();
      if (lane == 0) {
        for (unsigned bits = better; bits; bits &= bits - 1) {
          const float value = offered[warp * 16 + __ffs(bits) - 1];
          int n = *count;
          if (n == p.k && !(value > mine[p.k - 1])) continue;
          int pos = n < p.k ? n : p.k - 1;
          while (pos > 0 && mine[pos - 1] < value) {
            mine[pos] = mine[pos - 1];
            --pos;
          }
          mine[pos] = value;
          if (n < p.k) *count = n + 1;
        }
        if (*count == p.k) atomicMax(p.l_global + qi, ordered(mine[p.k - 1]));
      }
      __syncwarp();
      if (*count == p.k) threshold[j] = fmaxf(threshold[j], mine[p.k - 1]);
    }
  }
}

__global__ void gather_rows_kernel(const float* __restrict__ rows, const int64_t* __restrict__ picked, int64_t d,
                                   float* out) {
  const int64_t r = blockIdx.x;
  const float* src = rows + picked[r] * d;
  for (int64_t t = threadIdx.x; t < d; t += blockDim.x) out[r * d + t] = src[t];
}

__global__ void map_indices_kernel(int64_t* indices, int64_t n, const int64_t* __restrict__ picked) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < n) indices[t] = picked[indices[t]];
}

template <typename T>
void copy_to_host(T* dst, const T* src, int64_t count, cudaStream_t stream) {
  if (count > 0)
    METAEDGE_CUDA_CHECK(cudaMemcpyAsync(dst, src, count * sizeof(T), cudaMemcpyDeviceToHost, stream));
}

void fill_fp32_rows(const Tensor& fp32_rows, int64_t b, int64_t value, cudaStream_t stream) {
  const std::vector<int64_t> host(static_cast<size_t>(b), value);
  METAEDGE_CUDA_CHECK(cudaMemcpyAsync(fp32_rows.data, host.data(), b * sizeof(int64_t), cudaMemcpyHostToDevice,
                                      stream));
  METAEDGE_CUDA_CHECK(cudaStreamSynchronize(stream));  // (the host vector goes out of scope)
}

void whole_matrix(const Tensor& queries, const Tensor& rows, int64_t k, Metric metric, const Tensor& scores,
                  const Tensor& indices, const Tensor& fp32_rows, cudaStream_t stream) {
  cuda::topk(queries, rows, k, metric, scores, indices);
  fill_fp32_rows(fp32_rows, queries.size(0), rows.size(0), stream);
}

template <int NQ>
void launch_pass(PassParams p, int64_t grid, size_t smem, cudaStream_t stream) {
  if (smem > 48 * 1024)
    METAEDGE_CUDA_CHECK(cudaFuncSetAttribute(compact_pass_kernel<NQ>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem)));
  compact_pass_kernel<NQ><<<static_cast<unsigned>(grid), kPassWarps * 32, smem, stream>>>(p);
  METAEDGE_CUDA_CHECK_LAUNCH("compact_pass");
}

}  // namespace

void compact_encode(const Tensor& rows, const Tensor& slots, Metric metric, const Tensor& center, const Tensor& codes,
                    const Tensor& meta) {
  const int64_t n = rows.size(0), d = rows.size(1), steps = codes.size(1);
  DeviceGuard guard(rows.device_index);
  const cudaStream_t stream = stream_of(rows);
  compact_encode_kernel<<<static_cast<unsigned>(ceil_div(n, kEncodeWarps)), kEncodeWarps * 32, 0, stream>>>(
      rows.ptr<float>(), slots.ptr<int64_t>(), n, d, steps, metric == Metric::kCosine ? 1 : 0,
      metric == Metric::kEuclidean ? 1 : 0, center.ptr<float>(), codes.ptr<uint8_t>(), meta.ptr<float>());
  METAEDGE_CUDA_CHECK_LAUNCH("compact_encode");
}

void compact_topk(const Tensor& queries, const Tensor& rows, const Tensor& codes, const Tensor& meta,
                  const Tensor& center, int64_t k, Metric metric, const Tensor& scores, const Tensor& indices,
                  const Tensor& fp32_rows) {
  const int64_t b = queries.size(0), d = queries.size(1), C = rows.size(0), steps = codes.size(1);
  const int device = queries.device_index;
  DeviceGuard guard(device);
  const cudaStream_t stream = stream_of(queries);
  if (C > INT_MAX)
    throw ArgumentError("`rows`: at most 2^31 - 1 classes are supported on the GPU, got " + std::to_string(C));
  const LaunchLimits lim = launch_limits(device);
  const size_t smem = static_cast<size_t>(kPassQueries) * steps * 4 +
                      static_cast<size_t>(kPassWarps) * (kPassQueries * (kFusedMaxK + 1) + 16) * 4;
  if (k > kFusedMaxK || smem > static_cast<size_t>(lim.max_shared_optin))
    return whole_matrix(queries, rows, k, metric, scores, indices, fp32_rows, stream);

  const int64_t groups = (C + kLanes - 1) / kLanes;
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(groups / kPassWarps, 4 * lim.multiprocessors));
  const int64_t groups_per_block = ceil_div(groups, grid);
  // Before the thresholds settle, each warp appends about its first k classes plus a group: room for that,
  // and for C / 16 real candidates.
  const int64_t cap = std::min<int64_t>(C, C / 16 + k + grid * kPassWarps * (k + kLanes));

  auto layout = [&](Carver& cv, int32_t** qcodes, QueryTerms** terms, unsigned long long** status, int** l_global,
                    float** lo, float** up, int32_t** ix) {
    *qcodes = cv.take<int32_t>(b * steps);
    *terms = cv.take<QueryTerms>(b);
    *status = cv.take<unsigned long long>(3 * b);
    *l_global = cv.take<int>(b);
    *lo = cv.take<float>(b * cap);
    *up = cv.take<float>(b * cap);
    *ix = cv.take<int32_t>(b * cap);
  };
  int32_t *qcodes, *cand_index;
  QueryTerms* terms;
  unsigned long long* status;
  int* l_global;
  float *cand_lower, *cand_upper;
  Carver sizer(nullptr);
  layout(sizer, &qcodes, &terms, &status, &l_global, &cand_lower, &cand_upper, &cand_index);
  Workspace ws(sizer.bytes(), device, stream);
  Carver carve(ws.data());
  layout(carve, &qcodes, &terms, &status, &l_global, &cand_lower, &cand_upper, &cand_index);
  const Status st{status, status + b, status + 2 * b};

  // The query code range of the CPU's VNNI path; dp4a has no saturation to avoid.
  compact_prep_kernel<<<static_cast<unsigned>(b), 256, 0, stream>>>(
      queries.ptr<float>(), center.ptr<float>(), d, steps, metric == Metric::kCosine, metric == Metric::kEuclidean,
      kCompactCodeMax,
      qcodes, terms, st, l_global);
  METAEDGE_CUDA_CHECK_LAUNCH("compact_prep");

  PassParams p{codes.ptr<uint8_t>(), meta.ptr<float>(), qcodes, terms, C, steps, groups, groups_per_block, 0, 0,
               static_cast<int>(k), metric == Metric::kEuclidean ? 1 : 0,
               static_cast<float>((2.0 * d + 64.0) * std::ldexp(1.0, -24)),
               static_cast<float>((127.0 * kCompactCodeMax * 4.0 * steps + 4.0 * d + 64.0) * std::ldexp(1.0, -149)),
               l_global, st, cand_lower, cand_upper, cand_index, cap};
  for (int64_t q0 = 0; q0 < b; q0 += kPassQueries) {
    p.q0 = q0;
    p.nq = static_cast<int>(std::min<int64_t>(kPassQueries, b - q0));
    if (p.nq == 1) launch_pass<1>(p, grid, smem, stream);
    else if (p.nq == 2) launch_pass<2>(p, grid, smem, stream);
    else if (p.nq <= 4) launch_pass<4>(p, grid, smem, stream);
    else launch_pass<8>(p, grid, smem, stream);
  }

  // The status words, then each query's list (short: the lists are what the first pass could not rule out).
  std::vector<unsigned long long> host_status(static_cast<size_t>(3 * b));
  copy_to_host(host_status.data(), status, 3 * b, stream);
  METAEDGE_CUDA_CHECK(cudaStreamSynchronize(stream));
  unsigned long long first_bad = ULLONG_MAX;
  bool whole = false;
  for (int64_t q = 0; q < b; ++q) {
    first_bad = std::min(first_bad, host_status[q]);
    whole = whole || host_status[2 * b + q] != 0 || host_status[b + q] > static_cast<unsigned long long>(cap);
  }
  if (first_bad != ULLONG_MAX)  // same wording as the shared checker and cuda::topk
    throw ArgumentError("`queries`: expected finite values, got NaN or Inf at flat index " + std::to_string(first_bad) +
                        " of " + queries.describe());
  if (whole) return whole_matrix(queries, rows, k, metric, scores, indices, fp32_rows, stream);

  std::vector<std::vector<float>> lows(static_cast<size_t>(b)), ups(static_cast<size_t>(b));
  std::vector<std::vector<int32_t>> ids(static_cast<size_t>(b));
  for (int64_t q = 0; q < b; ++q) {
    const int64_t n = static_cast<int64_t>(host_status[b + q]);
    lows[q].resize(n), ups[q].resize(n), ids[q].resize(n);
    copy_to_host(lows[q].data(), cand_lower + q * cap, n, stream);
    copy_to_host(ups[q].data(), cand_upper + q * cap, n, stream);
    copy_to_host(ids[q].data(), cand_index + q * cap, n, stream);
  }
  METAEDGE_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<int64_t> picked;
  for (int64_t q = 0; q < b; ++q) {
    std::vector<float> sorted = lows[q];
    if (static_cast<int64_t>(sorted.size()) < k)  // cannot happen (k classes have lower >= L); stay exact anyway
      return whole_matrix(queries, rows, k, metric, scores, indices, fp32_rows, stream);
    std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<float>());
    const float L = sorted[k - 1];
    for (size_t j = 0; j < ups[q].size(); ++j)
      if (ups[q][j] >= L) picked.push_back(ids[q][j]);
  }
  std::sort(picked.begin(), picked.end());
  picked.erase(std::unique(picked.begin(), picked.end()), picked.end());
  const int64_t n_picked = static_cast<int64_t>(picked.size());
  if (n_picked > C / 16 + k * b)
    return whole_matrix(queries, rows, k, metric, scores, indices, fp32_rows, stream);

  Carver sizer2(nullptr);
  sizer2.take<int64_t>(n_picked);
  sizer2.take<float>(n_picked * d);
  Workspace ws2(sizer2.bytes(), device, stream);
  Carver carve2(ws2.data());
  int64_t* picked_dev = carve2.take<int64_t>(n_picked);
  float* gathered = carve2.take<float>(n_picked * d);
  METAEDGE_CUDA_CHECK(cudaMemcpyAsync(picked_dev, picked.data(), n_picked * sizeof(int64_t), cudaMemcpyHostToDevice,
                                      stream));
  gather_rows_kernel<<<static_cast<unsigned>(n_picked), 128, 0, stream>>>(rows.ptr<float>(), picked_dev, d, gathered);
  METAEDGE_CUDA_CHECK_LAUNCH("compact_gather_rows");
  Tensor candidates = rows;
  candidates.data = gathered;
  candidates.shape = {n_picked, d};
  try {
    cuda::topk(queries, candidates, k, metric, scores, indices);
  } catch (const ArgumentError&) {
    // a score outside float32 range: the whole-matrix call reports it, naming the right row
    return whole_matrix(queries, rows, k, metric, scores, indices, fp32_rows, stream);
  }
  map_indices_kernel<<<static_cast<unsigned>(ceil_div(b * k, 256)), 256, 0, stream>>>(indices.ptr<int64_t>(), b * k,
                                                                                     picked_dev);
  METAEDGE_CUDA_CHECK_LAUNCH("compact_map_indices");
  fill_fp32_rows(fp32_rows, b, n_picked, stream);  // (synchronises: `picked` may go out of scope after)
}

}  // namespace metaedge::cuda
