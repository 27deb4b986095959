// A non-owning view of an array in host or device memory: what every op receives. C-contiguous unless
// `strides` is filled (only frames for preprocess: camera buffers with padded rows, crops of a bigger frame).
// The Python side (metaedge.kernels) owns the memory and allocates outputs, so kernels never allocate result
// arrays and the same op signature serves CPU and CUDA.
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
  std::vector<int64_t> strides;  // bytes per step along each axis; empty = C-contiguous

  int64_t ndim() const { return static_cast<int64_t>(shape.size()); }
  int64_t size(int64_t axis) const { return shape.at(static_cast<size_t>(axis)); }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  bool is_cuda() const { return device == Device::kCUDA; }
  // Bytes from one element to the next along `axis` (C-contiguous unless `strides` says otherwise).
  int64_t stride(int64_t axis) const {
    if (!strides.empty()) return strides.at(static_cast<size_t>(axis));
    int64_t s = dtype_size(dtype);
    for (int64_t a = ndim() - 1; a > axis; --a) s *= size(a);
    return s;
  }
  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }
  std::string describe() const;  // e.g. "float32[3, 64] on cpu"
};

}  // namespace metaedge
