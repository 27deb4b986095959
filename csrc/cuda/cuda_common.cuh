// Helpers shared by the .cu files: error checking that throws CudaError (never aborts), the device guard,
// stream-ordered workspace, and warp-level building blocks.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "metaedge/checks.h"
#include "metaedge/tensor.h"

namespace metaedge::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line);

// Every runtime call goes through this: a failure becomes CudaError (Python RuntimeError) carrying the CUDA
// error name and text and the call that failed.
#define METAEDGE_CUDA_CHECK(expr)                                                        \
  do {                                                                                   \
    const cudaError_t metaedge_err_ = (expr);                                            \
    if (metaedge_err_ != cudaSuccess)                                                    \
      ::metaedge::cuda::throw_cuda_error(metaedge_err_, #expr, __FILE__, __LINE__);      \
  } while (0)

// After every <<<...>>>: catches bad launch configurations now; faults inside the kernel surface at the next
// synchronising call, which is checked too.
#define METAEDGE_CUDA_CHECK_LAUNCH(name) \
  ::metaedge::cuda::check_launch(name, __FILE__, __LINE__)

void check_launch(const char* kernel, const char* file, int line);

inline cudaStream_t stream_of(const Tensor& t) { return reinterpret_cast<cudaStream_t>(t.stream); }

// Makes the tensor's device current for the scope of an op and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  int device_ = -1;
};

// Device memory ordered on `stream`: cudaMallocAsync/cudaFreeAsync where the device has memory pools (no
// device-wide synchronisation, pooled), cudaMalloc/cudaFree otherwise.
void* stream_alloc(int64_t bytes, int device, cudaStream_t stream, bool* used_pool);
void stream_free(void* ptr, int device, cudaStream_t stream, bool used_pool) noexcept;

// Scratch memory for one op call, released (stream-ordered) when the op returns or throws.
class Workspace {
 public:
  Workspace(int64_t bytes, int device, cudaStream_t stream);
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  char* data() const { return static_cast<char*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  int device_;
  cudaStream_t stream_;
  bool pool_ = false;
};

// Carves 256-byte aligned pieces out of one Workspace. Used twice: once with base=nullptr to size it.
class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <typename T>
  T* take(int64_t count) {
    offset_ = (offset_ + 255) / 256 * 256;
    T* p = base_ ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += count * static_cast<int64_t>(sizeof(T));
    return p;
  }
  int64_t bytes() const { return offset_ + 256; }

 private:
  char* base_;
  int64_t offset_ = 0;
};

struct LaunchLimits {
  int multiprocessors = 1;
  int max_shared_optin = 48 * 1024;  // bytes of dynamic shared memory one block may opt into
};
LaunchLimits launch_limits(int device);

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Stable ascending sort of (key, value) pairs by the low `end_bit` bits of the key (CUB radix sort), ordered
// on `stream`. Stability is what makes ties come out in their input order. One instantiation serves topk and
// the prototype ops, which keeps the CUDA build time down.
void sort_pairs_u64_u32(const uint64_t* keys_in, uint64_t* keys_out, const uint32_t* values_in,
                        uint32_t* values_out, int64_t n, int end_bit, int device, cudaStream_t stream);

// Number of bits needed to represent values in [0, n).
inline int bits_for(uint64_t n) {
  int bits = 0;
  while (bits < 64 && (n - 1) >> bits) ++bits;
  return bits;
}

constexpr unsigned kFullMask = 0xffffffffu;

#ifdef __CUDACC__
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

__device__ __forceinline__ double warp_max(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

// Reduces NV per-lane values across the warp with NV-1+ (5 - log2 NV) shuffles instead of 5 NV: every stage
// halves the values each lane holds by trading the half it does not keep with its partner. Afterwards lane L
// holds the warp total of value index (L >> (5 - log2 NV)). The summation tree is the same for every index,
// so equal inputs give bit-identical totals wherever they sit (this keeps exact ties exact).
template <int HALF, int NV>
__device__ __forceinline__ void transpose_reduce_stage(float (&v)[NV], int lane) {
  if constexpr (HALF >= 1) {
    constexpr int kOff = 16 * HALF * 2 / NV;  // 16 for the first stage, then 8, 4, ...
    const bool upper = (lane & kOff) != 0;
#pragma unroll
    for (int i = 0; i < HALF; ++i) {
      const float send = upper ? v[i] : v[i + HALF];
      const float keep = upper ? v[i + HALF] : v[i];
      v[i] = keep + __shfl_xor_sync(kFullMask, send, kOff);
    }
    transpose_reduce_stage<HALF / 2, NV>(v, lane);
  }
}

// Reduces NV per-lane values across the warp with NV-1+ (5 - log2 NV) shuffles instead of 5 NV: every stage
// halves the values each lane holds by trading the half it does not keep with its partner. Afterwards lane L
// holds the warp total of value index (L >> (5 - log2 NV)). The summation tree is the same for every index,
// so equal inputs give bit-identical totals wherever they sit (this keeps exact ties exact).
template <int NV>
__device__ __forceinline__ float transpose_reduce(float (&v)[NV], int lane) {
  static_assert(NV >= 1 && NV <= 32 && (NV & (NV - 1)) == 0, "NV must be a power of two <= 32");
  transpose_reduce_stage<NV / 2, NV>(v, lane);
  float total = v[0];
#pragma unroll
  for (int off = 16 / NV; off > 0; off >>= 1) total += __shfl_xor_sync(kFullMask, total, off);
  return total;
}

// Block-wide sum in a fixed order (deterministic), result returned to every thread; float or double. `scratch`
// holds blockDim.x / 32 values; the caller must not reuse it before the next __syncthreads.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

// Block-wide maximum (float or double), result returned to every thread; `scratch` as for block_sum.
template <typename T>
__device__ __forceinline__ T block_max(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T m = scratch[0];
  for (int w = 1; w < warps; ++w) m = fmax(m, scratch[w]);
  return m;
}

#endif  // __CUDACC__

}  // namespace metaedge::cuda
