// Scans behind check_finite / check_labels (and the counts check of update_prototypes) for device memory.
// Each returns the first offending flat index, like the CPU scans, so the error messages are identical.
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

namespace metaedge::cuda {
namespace {

constexpr unsigned long long kNone = ULLONG_MAX;

__device__ __forceinline__ bool is_bad(float x) { return !isfinite(x); }
__device__ __forceinline__ bool is_bad(__half x) {
  return (__half_as_ushort(x) & 0x7c00u) == 0x7c00u;  // exponent all ones: Inf or NaN
}

template <typename T>
__global__ void first_non_finite_kernel(const T* __restrict__ x, int64_t n, unsigned long long* first) {
  unsigned long long mine = kNone;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (is_bad(x[i])) {
      mine = static_cast<unsigned long long>(i);
      break;  // later indices of this thread are larger
    }
  }
  if (mine != kNone) atomicMin(first, mine);
}

__global__ void first_label_out_of_range_kernel(const int64_t* __restrict__ y, int64_t n, int64_t num_classes,
                                                unsigned long long* first) {
  unsigned long long mine = kNone;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (y[i] < 0 || y[i] >= num_classes) {
      mine = static_cast<unsigned long long>(i);
      break;
    }
  }
  if (mine != kNone) atomicMin(first, mine);
}

__global__ void first_negative_kernel(const int64_t* __restrict__ v, int64_t n, unsigned long long* first) {
  unsigned long long mine = kNone;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (v[i] < 0) {
      mine = static_cast<unsigned long long>(i);
      break;
    }
  }
  if (mine != kNone) atomicMin(first, mine);
}

// Runs `launch(grid, block, stream, result)` and returns the index it found, or -1.
template <typename Launch>
int64_t scan(const Tensor& t, Launch launch) {
  const int64_t n = t.numel();
  if (n == 0) return -1;
  DeviceGuard guard(t.device_index);
  const cudaStream_t stream = stream_of(t);
  Workspace ws(sizeof(unsigned long long), t.device_index, stream);
  auto* result = reinterpret_cast<unsigned long long*>(ws.data());
  METAEDGE_CUDA_CHECK(cudaMemsetAsync(result, 0xff, sizeof(unsigned long long), stream));
  const int threads = 256;
  const LaunchLimits lim = launch_limits(t.device_index);
  const int64_t blocks = std::min<int64_t>(ceil_div(n, threads), static_cast<int64_t>(lim.multiprocessors) * 8);
  launch(static_cast<unsigned>(blocks), threads, stream, result);
  unsigned long long host = kNone;
  METAEDGE_CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof host, cudaMemcpyDeviceToHost, stream));
  METAEDGE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host == kNone ? -1 : static_cast<int64_t>(host);
}

}  // namespace

int64_t first_non_finite(const Tensor& t) {
  if (t.dtype != DType::kFloat32 && t.dtype != DType::kFloat16) return -1;  // integers are always finite
  return scan(t, [&](unsigned blocks, int threads, cudaStream_t stream, unsigned long long* result) {
    if (t.dtype == DType::kFloat32) {
      first_non_finite_kernel<float><<<blocks, threads, 0, stream>>>(t.ptr<float>(), t.numel(), result);
    } else {
      first_non_finite_kernel<__half><<<blocks, threads, 0, stream>>>(t.ptr<__half>(), t.numel(), result);
    }
    METAEDGE_CUDA_CHECK_LAUNCH("first_non_finite");
  });
}

int64_t first_label_out_of_range(const Tensor& labels, int64_t num_classes) {
  return scan(labels, [&](unsigned blocks, int threads, cudaStream_t stream, unsigned long long* result) {
    first_label_out_of_range_kernel<<<blocks, threads, 0, stream>>>(labels.ptr<int64_t>(), labels.numel(),
                                                                   num_classes, result);
    METAEDGE_CUDA_CHECK_LAUNCH("first_label_out_of_range");
  });
}

int64_t first_negative(const Tensor& values) {
  return scan(values, [&](unsigned blocks, int threads, cudaStream_t stream, unsigned long long* result) {
    first_negative_kernel<<<blocks, threads, 0, stream>>>(values.ptr<int64_t>(), values.numel(), result);
    METAEDGE_CUDA_CHECK_LAUNCH("first_negative");
  });
}

}  // namespace metaedge::cuda
