// A non-owning view of a C-contiguous array in host or device memory: what every op receives.
// The Python side (metaedge.kernels) owns the memory, makes inputs contiguous and allocates outputs, so
// kernels never allocate result arrays and the same op signature serves CPU and CUDA.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace metaedge {

enum class DType { kFloat32, kFloat16, kInt64, kInt32, kUInt8 };
enum class Device { kCPU, kCUDA };

const char* dtype_name(DType dtype);
int64_t dtype_size(DType dtype);

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  Device device = Device::kCPU;
  int device_index = 0;
  std::uintptr_t stream = 0;  // cudaStream_t for CUDA tensors; 0 = the legacy default stream
  std::vector<int64_t> shape;

  int64_t ndim() const { return static_cast<int64_t>(shape.size()); }
  int64_t size(int64_t axis) const { return shape.at(static_cast<size_t>(axis)); }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  bool is_cuda() const { return device == Device::kCUDA; }
  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }
  std::string describe() const;  // e.g. "float32[3, 64] on cpu"
};

}  // namespace metaedge
