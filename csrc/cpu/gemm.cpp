// PLACEHOLDER implementation (correct, slow): a register-blocked micro-kernel replaces it.
#include "gemm.h"

namespace metaedge::cpu {

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc, bool parallel) {
#pragma omp parallel for schedule(static) if (parallel && M * N * K > 100000)
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      float acc = 0.f;
      for (int64_t p = 0; p < K; ++p) {
        const float a = trans_a ? A[p * lda + i] : A[i * lda + p];
        const float b = trans_b ? B[j * ldb + p] : B[p * ldb + j];
        acc += a * b;
      }
      C[i * ldc + j] = alpha * acc + (beta == 0.f ? 0.f : beta * C[i * ldc + j]);
    }
  }
}

}  // namespace metaedge::cpu
