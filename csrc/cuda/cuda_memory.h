// Memory, copies and streams behind metaedge.cuda (DeviceArray, Stream). Plain C++ types only, so that
// bindings.cpp (compiled without the CUDA headers) can call them. Every function throws CudaError on failure.
#pragma once

#include <cstdint>

namespace metaedge::cuda {

struct Allocation {
  std::uintptr_t ptr = 0;
  bool stream_ordered = false;  // from cudaMallocAsync: release with free_device(..., stream_ordered=true)
};

// Device memory on `device`, ordered on `stream` where the device supports memory pools.
Allocation malloc_device(int64_t bytes, int device, std::uintptr_t stream);
void free_device(std::uintptr_t ptr, int device, std::uintptr_t stream, bool stream_ordered);

// Page-locked host memory; `mapped` also maps it into the device address space (on Jetson the GPU and CPU
// share DRAM, so a mapped buffer is zero-copy for both).
std::uintptr_t host_alloc(int64_t bytes, bool mapped);
std::uintptr_t host_device_pointer(std::uintptr_t host_ptr);
void free_host(std::uintptr_t ptr);

enum class CopyKind { kHostToDevice, kDeviceToHost, kDeviceToDevice, kDefault };
// Ordered on `stream`; with `synchronize` the call returns once the copy is complete.
void copy_bytes(std::uintptr_t dst, std::uintptr_t src, int64_t bytes, CopyKind kind, int device,
            std::uintptr_t stream, bool synchronize);
void fill_bytes(std::uintptr_t ptr, int value, int64_t bytes, int device, std::uintptr_t stream);

std::uintptr_t stream_create(int device, bool non_blocking);
void stream_destroy(std::uintptr_t stream, int device);
void stream_synchronize(std::uintptr_t stream, int device);
void device_synchronize(int device);
int current_device();

// The device a pointer belongs to, or -1 for memory CUDA does not know (pageable host memory).
int pointer_device(std::uintptr_t ptr);

}  // namespace metaedge::cuda
