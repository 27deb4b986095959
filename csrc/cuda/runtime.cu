// Host-side CUDA plumbing: error translation, device guard, stream-ordered scratch memory, and the memory /
// copy / stream functions behind metaedge.cuda.
#include <cuda_runtime.h>

#include <mutex>
#include <string>
#include <vector>

#include "cuda_common.cuh"
#include "cuda_memory.h"

namespace metaedge::cuda {

void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  // Clear a non-sticky error so that the next call starts clean; sticky ones (a kernel fault) stay, and every
  // later call reports them, which is the truth about the context.
  cudaGetLastError();
  const char* base = file;
  for (const char* p = file; *p; ++p)
    if (*p == '/') base = p + 1;
  throw CudaError(std::string("CUDA error ") + cudaGetErrorName(err) + ": " + cudaGetErrorString(err) + " (in " +
                  what + ", " + base + ":" + std::to_string(line) + ")");
}

void check_launch(const char* kernel, const char* file, int line) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda_error(err, (std::string("launch of ") + kernel).c_str(), file, line);
}

DeviceGuard::DeviceGuard(int device) : device_(device) {
  METAEDGE_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device_) METAEDGE_CUDA_CHECK(cudaSetDevice(device_));
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0 && previous_ != device_) cudaSetDevice(previous_);
}

namespace {

bool device_has_pools(int device) {
  static std::mutex mu;
  static std::vector<int> known;  // -1 unknown, 0 no, 1 yes; indexed by device
  std::lock_guard<std::mutex> lock(mu);
  if (device >= static_cast<int>(known.size())) known.resize(device + 1, -1);
  if (known[device] < 0) {
    int value = 0;
    if (cudaDeviceGetAttribute(&value, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess) {
      cudaGetLastError();
      value = 0;
    }
    known[device] = value ? 1 : 0;
  }
  return known[device] == 1;
}

}  // namespace

void* stream_alloc(int64_t bytes, int device, cudaStream_t stream, bool* used_pool) {
  void* ptr = nullptr;
  if (bytes <= 0) bytes = 1;
  *used_pool = device_has_pools(device);
  if (*used_pool) {
    METAEDGE_CUDA_CHECK(cudaMallocAsync(&ptr, static_cast<size_t>(bytes), stream));
  } else {
    METAEDGE_CUDA_CHECK(cudaMalloc(&ptr, static_cast<size_t>(bytes)));
  }
  return ptr;
}

void stream_free(void* ptr, int device, cudaStream_t stream, bool used_pool) noexcept {
  if (ptr == nullptr) return;
  if (used_pool) {
    cudaFreeAsync(ptr, stream);
  } else {
    // Work queued on `stream` may still read the buffer: wait for it before handing the memory back.
    cudaStreamSynchronize(stream);
    cudaFree(ptr);
  }
  cudaGetLastError();  // a destructor must not throw; the op has already reported any real failure
}

Workspace::Workspace(int64_t bytes, int device, cudaStream_t stream) : device_(device), stream_(stream) {
  ptr_ = stream_alloc(bytes, device, stream, &pool_);
}

Workspace::~Workspace() { stream_free(ptr_, device_, stream_, pool_); }

LaunchLimits launch_limits(int device) {
  static std::mutex mu;
  static std::vector<LaunchLimits> cache;
  static std::vector<bool> filled;
  std::lock_guard<std::mutex> lock(mu);
  if (device >= static_cast<int>(cache.size())) {
    cache.resize(device + 1);
    filled.resize(device + 1, false);
  }
  if (!filled[device]) {
    LaunchLimits lim;
    METAEDGE_CUDA_CHECK(cudaDeviceGetAttribute(&lim.multiprocessors, cudaDevAttrMultiProcessorCount, device));
    METAEDGE_CUDA_CHECK(
        cudaDeviceGetAttribute(&lim.max_shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    cache[device] = lim;
    filled[device] = true;
  }
  return cache[device];
}

// ---- metaedge.cuda -------------------------------------------------------------------------------------

Allocation malloc_device(int64_t bytes, int device, std::uintptr_t stream) {
  DeviceGuard guard(device);
  Allocation a;
  void* ptr = stream_alloc(bytes, device, reinterpret_cast<cudaStream_t>(stream), &a.stream_ordered);
  a.ptr = reinterpret_cast<std::uintptr_t>(ptr);
  return a;
}

void free_device(std::uintptr_t ptr, int device, std::uintptr_t stream, bool stream_ordered) {
  if (ptr == 0) return;
  DeviceGuard guard(device);
  if (stream_ordered) {
    METAEDGE_CUDA_CHECK(cudaFreeAsync(reinterpret_cast<void*>(ptr), reinterpret_cast<cudaStream_t>(stream)));
  } else {
    METAEDGE_CUDA_CHECK(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream)));
    METAEDGE_CUDA_CHECK(cudaFree(reinterpret_cast<void*>(ptr)));
  }
}

std::uintptr_t host_alloc(int64_t bytes, bool mapped) {
  void* ptr = nullptr;
  const unsigned flags = cudaHostAllocPortable | (mapped ? cudaHostAllocMapped : 0u);
  METAEDGE_CUDA_CHECK(cudaHostAlloc(&ptr, static_cast<size_t>(bytes > 0 ? bytes : 1), flags));
  return reinterpret_cast<std::uintptr_t>(ptr);
}

std::uintptr_t host_device_pointer(std::uintptr_t host_ptr) {
  void* dptr = nullptr;
  METAEDGE_CUDA_CHECK(cudaHostGetDevicePointer(&dptr, reinterpret_cast<void*>(host_ptr), 0));
  return reinterpret_cast<std::uintptr_t>(dptr);
}

void free_host(std::uintptr_t ptr) {
  if (ptr == 0) return;
  METAEDGE_CUDA_CHECK(cudaFreeHost(reinterpret_cast<void*>(ptr)));
}

void copy_bytes(std::uintptr_t dst, std::uintptr_t src, int64_t bytes, CopyKind kind, int device,
            std::uintptr_t stream, bool synchronize) {
  if (bytes <= 0) return;
  DeviceGuard guard(device);
  cudaMemcpyKind k = cudaMemcpyDefault;
  switch (kind) {
    case CopyKind::kHostToDevice: k = cudaMemcpyHostToDevice; break;
    case CopyKind::kDeviceToHost: k = cudaMemcpyDeviceToHost; break;
    case CopyKind::kDeviceToDevice: k = cudaMemcpyDeviceToDevice; break;
    case CopyKind::kDefault: k = cudaMemcpyDefault; break;
  }
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  METAEDGE_CUDA_CHECK(cudaMemcpyAsync(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src),
                                      static_cast<size_t>(bytes), k, s));
  if (synchronize) METAEDGE_CUDA_CHECK(cudaStreamSynchronize(s));
}

void fill_bytes(std::uintptr_t ptr, int value, int64_t bytes, int device, std::uintptr_t stream) {
  if (bytes <= 0) return;
  DeviceGuard guard(device);
  METAEDGE_CUDA_CHECK(cudaMemsetAsync(reinterpret_cast<void*>(ptr), value, static_cast<size_t>(bytes),
                                      reinterpret_cast<cudaStream_t>(stream)));
}

std::uintptr_t stream_create(int device, bool non_blocking) {
  DeviceGuard guard(device);
  cudaStream_t s = nullptr;
  METAEDGE_CUDA_CHECK(cudaStreamCreateWithFlags(&s, non_blocking ? cudaStreamNonBlocking : cudaStreamDefault));
  return reinterpret_cast<std::uintptr_t>(s);
}

void stream_destroy(std::uintptr_t stream, int device) {
  if (stream == 0) return;
  DeviceGuard guard(device);
  METAEDGE_CUDA_CHECK(cudaStreamDestroy(reinterpret_cast<cudaStream_t>(stream)));
}

void stream_synchronize(std::uintptr_t stream, int device) {
  DeviceGuard guard(device);
  METAEDGE_CUDA_CHECK(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream)));
}

void device_synchronize(int device) {
  DeviceGuard guard(device);
  METAEDGE_CUDA_CHECK(cudaDeviceSynchronize());
}

int current_device() {
  int device = 0;
  METAEDGE_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

int pointer_device(std::uintptr_t ptr) {
  if (ptr == 0) return -1;
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
  if (err != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  if (attr.type == cudaMemoryTypeUnregistered) return -1;
  return attr.device;
}

}  // namespace metaedge::cuda
