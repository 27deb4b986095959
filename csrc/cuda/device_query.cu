// Device and runtime queries behind metaedge.build_info() and metaedge.cuda.is_available().
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "cuda_kernels.h"
#include "metaedge/checks.h"

namespace metaedge::cuda {

int device_count(std::string* why) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    if (why) *why = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return 0;
  }
  if (count == 0 && why) *why = "the CUDA driver reports no devices";
  return count;
}

int runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) return 0;
  return v;
}

DeviceProperties device_properties(int device) {
  cudaDeviceProp prop{};
  cudaError_t err = cudaGetDeviceProperties(&prop, device);
  if (err != cudaSuccess) {
    throw CudaError("cudaGetDeviceProperties(" + std::to_string(device) + ") failed: " +
                    cudaGetErrorString(err));
  }
  DeviceProperties out;
  out.name = prop.name;
  out.major = prop.major;
  out.minor = prop.minor;
  out.total_memory = static_cast<int64_t>(prop.totalGlobalMem);
  out.multiprocessors = prop.multiProcessorCount;
  out.integrated = prop.integrated != 0;
  out.can_map_host_memory = prop.canMapHostMemory != 0;
  return out;
}

}  // namespace metaedge::cuda
