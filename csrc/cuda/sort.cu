// The one CUB radix-sort instantiation of the library (see sort_pairs_u64_u32 in cuda_common.cuh).
#include <cub/device/device_radix_sort.cuh>

#include <climits>

#include "cuda_common.cuh"

namespace metaedge::cuda {

void sort_pairs_u64_u32(const uint64_t* keys_in, uint64_t* keys_out, const uint32_t* values_in,
                        uint32_t* values_out, int64_t n, int end_bit, int device, cudaStream_t stream) {
  if (n <= 0) return;
  if (n > INT_MAX)
    throw ArgumentError("internal sort of " + std::to_string(n) + " items: at most " + std::to_string(INT_MAX) +
                        " are supported per call");
  if (end_bit < 1) end_bit = 1;
  size_t temp_bytes = 0;
  METAEDGE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, keys_out, values_in,
                                                      values_out, static_cast<int>(n), 0, end_bit, stream));
  Workspace temp(static_cast<int64_t>(temp_bytes), device, stream);
  METAEDGE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, keys_in, keys_out, values_in,
                                                      values_out, static_cast<int>(n), 0, end_bit, stream));
}

}  // namespace metaedge::cuda
