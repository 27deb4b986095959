// What gemm.cpp shares with its per-SIMD-variant code (gemm_simd_impl.h) and with topk.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace metaedge::cpu {

// C(i,j) = alpha * sum_p A(i,p) B(p,j) + beta * C(i,j) for i < M, j < N, with
// A(i,p) = a_row_major ? a[i*lda + p] : a[p*lda + i], B(p,j) = b_row_major ? b[p*ldb + j] : b[j*ldb + p],
// C(i,j) = c[i*rs_c + j*cs_c]. beta == 0 never reads C.
struct GemmProblem {
  int64_t M = 0, N = 0, K = 0;
  float alpha = 1.f, beta = 0.f;
  const float* a = nullptr;
  int64_t lda = 0;
  bool a_row_major = true;
  const float* b = nullptr;
  int64_t ldb = 0;
  bool b_row_major = true;
  float* c = nullptr;
  int64_t rs_c = 0, cs_c = 1;
};

// Micro-tile of the selected variant: MR rows of A (broadcast) times NR columns of B (NR/lanes vectors).
struct GemmTile {
  int mr, nr, lanes;
};

// One thread, no OpenMP: for callers that already run in parallel (topk scores its class blocks with it).
void gemm_serial(const GemmProblem& problem);
GemmTile gemm_tile();
// The same product with the roles of A and B swapped (C^T = B^T A^T) when that fills the vector lanes better.
// Both orientations compute every C element as the same chain of multiply-adds, so results are identical.
GemmProblem gemm_best_orientation(const GemmProblem& problem);

// 64-byte aligned scratch memory, grown on demand and kept for reuse (one per thread via thread_local).
class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { std::free(data_); }
  float* get(size_t floats) {
    if (floats > capacity_) {
      std::free(data_);
      const size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
      data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (data_ == nullptr) {
        capacity_ = 0;
        throw std::bad_alloc();
      }
      capacity_ = bytes / sizeof(float);
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace metaedge::cpu
