// Single-precision matrix multiply used by topk (batched scoring) and adapt_head (logits and gradients).
// Row-major: C[M,N] = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T; lda/ldb/ldc are row strides.
// Parallelises internally with OpenMP unless `parallel` is false (callers already inside a parallel region).
#pragma once

#include <cstdint>

namespace metaedge::cpu {

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc, bool parallel = true);

}  // namespace metaedge::cpu
