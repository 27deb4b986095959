// Self-test of the CPU sgemm and topk without Python, for targets where the Python tests cannot run (e.g. an
// aarch64 cross build executed under qemu by tools/check_aarch64_build.sh --run). Compares against naive
// double-precision references; exits non-zero on the first mismatch.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "../../csrc/cpu/gemm.h"
#include "metaedge/checks.h"
#include "metaedge/ops.h"

namespace {

int failures = 0;

void fail(const char* what, double detail) {
  std::printf("FAIL %s (%g)\n", what, detail);
  ++failures;
}

void check_sgemm(std::mt19937& rng, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
  std::normal_distribution<float> normal;
  const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
  std::vector<float> A((ta ? K : M) * lda + 1), B((tb ? N : K) * ldb + 1), C(M * ldc + 1);
  for (auto& x : A) x = normal(rng);
  for (auto& x : B) x = normal(rng);
  for (auto& x : C) x = beta == 0.f ? NAN : normal(rng);  // beta == 0 must not read C
  const std::vector<float> C0 = C;
  metaedge::cpu::sgemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < ldc && i * ldc + j < static_cast<int64_t>(C.size()); ++j) {
      if (j >= N) {
        if (!(C[i * ldc + j] == C0[i * ldc + j]) && !(std::isnan(C[i * ldc + j]) && std::isnan(C0[i * ldc + j])))
          fail("sgemm wrote outside C", static_cast<double>(j));
        continue;
      }
      double sum = 0, magnitude = 0;
      for (int64_t p = 0; p < K; ++p) {
        const double a = ta ? A[p * lda + i] : A[i * lda + p];
        const double b = tb ? B[j * ldb + p] : B[p * ldb + j];
        sum += a * b;
        magnitude += std::fabs(a * b);
      }
      const double c0 = beta == 0.f ? 0.0 : beta * static_cast<double>(C0[i * ldc + j]);
      const double want = alpha * sum + c0;
      const double err = std::fabs(C[i * ldc + j] - want) / (std::fabs(alpha) * magnitude + std::fabs(c0) + 1e-30);
      if (!(err <= 1e-5)) {
        std::printf("  sgemm ta=%d tb=%d M=%lld N=%lld K=%lld at (%lld,%lld)\n", ta, tb, (long long)M, (long long)N,
                    (long long)K, (long long)i, (long long)j);
        fail("sgemm mismatch", err);
        return;
      }
    }
  }
}

metaedge::Tensor view(void* data, metaedge::DType dtype, std::vector<int64_t> shape) {
  metaedge::Tensor t;
  t.data = data;
  t.dtype = dtype;
  t.shape = std::move(shape);
  return t;
}

// Naive float64 reference: full score matrix, stable sort (scores descending, lower index first).
void check_topk(std::mt19937& rng, int64_t b, int64_t C, int64_t d, int64_t k, metaedge::Metric metric,
                int64_t duplicate_every) {
  std::normal_distribution<float> normal;
  std::vector<float> q(b * d), p(C * d);
  for (auto& x : q) x = normal(rng);
  for (auto& x : p) x = normal(rng);
  if (duplicate_every > 0) {  // exact duplicates of a long row 0 spread over the classes: ties go to lower indices
    for (int64_t j = 0; j < d; ++j) p[j] *= 3.f;
    for (int64_t c = duplicate_every; c < C; c += duplicate_every) std::copy(p.begin(), p.begin() + d, p.begin() + c * d);
  }
  if (duplicate_every > 0)
    for (int64_t i = 0; i < b; ++i)
      for (int64_t j = 0; j < d; ++j) q[i * d + j] = p[j] + 0.01f * q[i * d + j];
  std::vector<float> scores(b * k);
  std::vector<int64_t> indices(b * k);
  metaedge::topk(view(q.data(), metaedge::DType::kFloat32, {b, d}), view(p.data(), metaedge::DType::kFloat32, {C, d}),
                 k, metric, view(scores.data(), metaedge::DType::kFloat32, {b, k}),
                 view(indices.data(), metaedge::DType::kInt64, {b, k}));
  for (int64_t i = 0; i < b; ++i) {
    std::vector<double> ref(C);
    double qn = 0;
    for (int64_t j = 0; j < d; ++j) qn += double(q[i * d + j]) * q[i * d + j];
    double scale = 1.0;
    for (int64_t c = 0; c < C; ++c) {
      double dot = 0, pn = 0, dist = 0;
      for (int64_t j = 0; j < d; ++j) {
        const double x = q[i * d + j], y = p[c * d + j];
        dot += x * y, pn += y * y, dist += (x - y) * (x - y);
      }
      if (metric == metaedge::Metric::kCosine) ref[c] = (qn > 0 && pn > 0) ? dot / std::sqrt(qn * pn) : 0.0;
      if (metric == metaedge::Metric::kDot) ref[c] = dot, scale = std::max(scale, std::sqrt(qn * pn));
      if (metric == metaedge::Metric::kEuclidean) ref[c] = -dist, scale = std::max(scale, qn + pn);
    }
    std::vector<int64_t> order(C);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return ref[x] > ref[y]; });
    for (int64_t j = 0; j < k; ++j) {
      const double got = scores[i * k + j];
      if (std::fabs(got - ref[order[j]]) > 1e-4 * std::fabs(ref[order[j]]) + 1e-5 * scale)
        fail("topk score mismatch", got - ref[order[j]]);
      const int64_t idx = indices[i * k + j];
      if (idx < 0 || idx >= C || std::fabs(ref[idx] - got) > 1e-4 * std::fabs(got) + 1e-5 * scale)
        fail("topk index does not hold its score", static_cast<double>(idx));
      if (duplicate_every > 0 && j < C / duplicate_every && idx != j * duplicate_every)
        fail("topk tie not broken towards the lower index", static_cast<double>(idx));
    }
  }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  const int64_t sizes[] = {1, 2, 3, 5, 12, 13, 17, 32, 33, 70};
  const int64_t depths[] = {0, 1, 7, 256, 300};
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (int64_t m : sizes)
        for (int64_t n : sizes)
          for (int64_t kk : depths)
            if (m * n * kk <= 400000) check_sgemm(rng, ta, tb, m, n, kk, 1.f, 0.f);
  check_sgemm(rng, false, false, 130, 700, 40, 0.5f, 2.f);
  check_sgemm(rng, true, true, 700, 130, 600, -1.f, 1.f);
  check_sgemm(rng, false, true, 1000, 37, 512, 1.f, 0.f);
  check_sgemm(rng, true, false, 37, 1000, 512, 1.f, 0.5f);
  for (int ta = 0; ta < 2; ++ta)  // matrix-vector products (their own path), serial and threaded
    for (int tb = 0; tb < 2; ++tb) {
      check_sgemm(rng, ta, tb, 1, 3000, 100, 0.5f, -2.f);
      check_sgemm(rng, ta, tb, 3000, 1, 100, 1.f, 0.f);
    }
  const metaedge::Metric metrics[] = {metaedge::Metric::kCosine, metaedge::Metric::kDot, metaedge::Metric::kEuclidean};
  for (auto metric : metrics) {
    check_topk(rng, 1, 1000, 64, 5, metric, 0);
    check_topk(rng, 3, 777, 33, 7, metric, 0);
    check_topk(rng, 9, 500, 3, 500, metric, 0);
    check_topk(rng, 40, 3000, 130, 10, metric, 0);
    check_topk(rng, 1, 5000, 16, 6, metric, 997);
    check_topk(rng, 33, 5000, 16, 6, metric, 997);
  }
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
