// l2_normalize, class_prototypes, update_prototypes on the GPU. Same arithmetic as csrc/cpu/prototypes.cpp:
// norms and class sums accumulated in double, rows of one class summed in their input order (a stable sort
// groups them), so results match the CPU kernel to float rounding and are deterministic run to run.
#include <climits>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

namespace metaedge::cuda {
namespace {

// One warp per row. In double no peak scaling is needed: squares of any float stay in double's range.
__global__ void l2_normalize_kernel(const float* __restrict__ x, float* out, int64_t n, int64_t d, double eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= n) return;  // whole warps leave together, so the shuffles below see full warps
  const float* src = x + row * d;
  double sq = 0.0;
  for (int64_t j = lane; j < d; j += 32) {
    const double v = src[j];
    sq += v * v;
  }
  sq = warp_sum(sq);
  const float inv = static_cast<float>(1.0 / fmax(sqrt(sq), eps));
  float* dst = out + row * d;
  for (int64_t j = lane; j < d; j += 32) dst[j] = src[j] * inv;  // out may alias x: each lane rewrites what it read
}

__global__ void sort_keys_kernel(const int64_t* __restrict__ labels, int64_t n, uint64_t* keys, uint32_t* rows) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    keys[i] = static_cast<uint64_t>(labels[i]);  // validated: 0 <= label < C
    rows[i] = static_cast<uint32_t>(i);
  }
}

// First position in sorted[lo, hi) whose key is > c (upper) or >= c (lower).
__device__ int64_t bound(const uint64_t* sorted, int64_t lo, int64_t hi, uint64_t c, bool upper) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (upper ? sorted[mid] <= c : sorted[mid] < c) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// One block per class: its rows are sorted[start, end) (input order kept by the stable sort).
__global__ void class_mean_kernel(const float* __restrict__ emb, const uint64_t* __restrict__ sorted_keys,
                                  const uint32_t* __restrict__ sorted_rows, int64_t n, int64_t d, float* protos,
                                  int64_t* counts) {
  const int64_t c = blockIdx.x;
  const int64_t start = bound(sorted_keys, 0, n, static_cast<uint64_t>(c), false);
  const int64_t end = bound(sorted_keys, start, n, static_cast<uint64_t>(c), true);
  const int64_t count = end - start;
  const double inv = count > 0 ? 1.0 / static_cast<double>(count) : 0.0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    double s = 0.0;
    for (int64_t r = start; r < end; ++r) s += emb[static_cast<int64_t>(sorted_rows[r]) * d + j];
    protos[c * d + j] = static_cast<float>(s * inv);
  }
  if (threadIdx.x == 0) counts[c] = count;
}

// One block per position of the sorted new rows; only the first position of each class does the work, so
// every touched prototype is rewritten once: p <- (p * n + sum e) / (n + m).
__global__ void class_update_kernel(const float* __restrict__ emb, const uint64_t* __restrict__ sorted_keys,
                                    const uint32_t* __restrict__ sorted_rows, int64_t m, int64_t d, float* protos,
                                    int64_t* counts) {
  const int64_t start = blockIdx.x;
  const uint64_t c = sorted_keys[start];
  if (start > 0 && sorted_keys[start - 1] == c) return;
  const int64_t end = bound(sorted_keys, start, m, c, true);
  const int64_t n_old = counts[c];
  const double old = static_cast<double>(n_old);
  const double inv = 1.0 / (old + static_cast<double>(end - start));
  float* row = protos + static_cast<int64_t>(c) * d;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    double acc = static_cast<double>(row[j]) * old;
    for (int64_t r = start; r < end; ++r) acc += emb[static_cast<int64_t>(sorted_rows[r]) * d + j];
    row[j] = static_cast<float>(acc * inv);
  }
  __syncthreads();  // every thread has read counts[c] above before it changes
  if (threadIdx.x == 0) counts[c] = n_old + (end - start);
}

// Rows sorted by label (stable), in a workspace this object owns: keys[i] = label << 32 | row and rows[i] the
// row, for i < labels.numel().
class RowsByLabel {
 public:
  RowsByLabel(const Tensor& labels, int64_t num_classes, cudaStream_t stream)
      : ws_(workspace_bytes(labels.numel()), labels.device_index, stream) {
    const int64_t n = labels.numel();
    Carver carve(ws_.data());
    uint64_t* keys_in = carve.take<uint64_t>(n);
    uint32_t* rows_in = carve.take<uint32_t>(n);
    keys = carve.take<uint64_t>(n);
    rows = carve.take<uint32_t>(n);
    if (n == 0) return;
    sort_keys_kernel<<<static_cast<unsigned>(ceil_div(n, 256)), 256, 0, stream>>>(labels.ptr<int64_t>(), n,
                                                                                     keys_in, rows_in);
    METAEDGE_CUDA_CHECK_LAUNCH("sort_keys");
    sort_pairs_u64_u32(keys_in, keys, rows_in, rows, n, bits_for(static_cast<uint64_t>(num_classes)),
                       labels.device_index, stream);
  }

  uint64_t* keys = nullptr;
  uint32_t* rows = nullptr;

 private:
  static int64_t workspace_bytes(int64_t n) {
    Carver size(nullptr);
    size.take<uint64_t>(n), size.take<uint32_t>(n), size.take<uint64_t>(n), size.take<uint32_t>(n);
    return size.bytes();
  }
  Workspace ws_;
};

void check_row_count(int64_t n, const char* name) {
  if (n >= static_cast<int64_t>(UINT32_MAX) || n > INT_MAX)
    throw ArgumentError(std::string("`") + name + "`: at most " + std::to_string(INT_MAX) +
                        " rows are supported on the GPU, got " + std::to_string(n));
}

int block_threads_for(int64_t d) { return d >= 256 ? 256 : (d >= 128 ? 128 : 64); }

}  // namespace

void l2_normalize(const Tensor& x, const Tensor& out, double eps) {
  const int64_t n = x.size(0), d = x.size(1);
  if (n == 0) return;
  DeviceGuard guard(x.device_index);
  const int warps_per_block = 8;
  const int64_t blocks = ceil_div(n, warps_per_block);
  l2_normalize_kernel<<<static_cast<unsigned>(blocks), warps_per_block * 32, 0, stream_of(x)>>>(
      x.ptr<float>(), out.ptr<float>(), n, d, eps);
  METAEDGE_CUDA_CHECK_LAUNCH("l2_normalize");
}

void class_prototypes(const Tensor& emb, const Tensor& labels, int64_t num_classes, const Tensor& protos,
                      const Tensor& counts) {
  const int64_t n = emb.size(0), d = emb.size(1);
  if (num_classes == 0) return;
  check_row_count(n, "emb");
  if (num_classes > INT_MAX) throw ArgumentError("`num_classes`: at most 2^31 - 1 classes on the GPU");
  DeviceGuard guard(emb.device_index);
  const cudaStream_t stream = stream_of(emb);
  const RowsByLabel sorted(labels, num_classes, stream);
  class_mean_kernel<<<static_cast<unsigned>(num_classes), block_threads_for(d), 0, stream>>>(
      emb.ptr<float>(), sorted.keys, sorted.rows, n, d, protos.ptr<float>(), counts.ptr<int64_t>());
  METAEDGE_CUDA_CHECK_LAUNCH("class_prototypes");
}

void update_prototypes(const Tensor& protos, const Tensor& counts, const Tensor& emb, const Tensor& labels) {
  const int64_t m = emb.size(0), d = emb.size(1);
  if (m == 0) return;
  check_row_count(m, "emb");
  DeviceGuard guard(protos.device_index);
  const cudaStream_t stream = stream_of(protos);
  const RowsByLabel sorted(labels, protos.size(0), stream);
  class_update_kernel<<<static_cast<unsigned>(m), block_threads_for(d), 0, stream>>>(
      emb.ptr<float>(), sorted.keys, sorted.rows, m, d, protos.ptr<float>(), counts.ptr<int64_t>());
  METAEDGE_CUDA_CHECK_LAUNCH("update_prototypes");
}

}  // namespace metaedge::cuda
