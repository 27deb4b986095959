// l2_normalize, class_prototypes, update_prototypes on the CPU. Sums are accumulated in double so that a
// running mean over many enrollments stays exact to float32 rounding.
#include <cmath>
#include <algorithm>
#include <vector>

#include "cpu_kernels.h"

namespace metaedge::cpu {

void l2_normalize(const Tensor& x, const Tensor& out, double eps) {
  const int64_t n = x.size(0), d = x.size(1);
  const float* src = x.ptr<float>();
  float* dst = out.ptr<float>();
#pragma omp parallel for schedule(static) if (n * d > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const float* row = src + i * d;
    // Scale by the largest magnitude first so that huge or tiny rows neither overflow nor underflow.
    float peak = 0.f;
    for (int64_t j = 0; j < d; ++j) peak = std::fmax(peak, std::fabs(row[j]));
    double sq = 0.0;
    if (peak > 0.f) {
      const double inv_peak = 1.0 / peak;
#pragma omp simd reduction(+ : sq)
      for (int64_t j = 0; j < d; ++j) {
        const double v = row[j] * inv_peak;
        sq += v * v;
      }
    }
    const double norm = std::sqrt(sq) * peak;
    const float inv = static_cast<float>(1.0 / std::fmax(norm, eps));
    float* o = dst + i * d;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) o[j] = row[j] * inv;
  }
}

void class_prototypes(const Tensor& emb, const Tensor& labels, int64_t num_classes, const Tensor& protos,
                      const Tensor& counts) {
  const int64_t n = emb.size(0), d = emb.size(1);
  const float* e = emb.ptr<float>();
  const int64_t* y = labels.ptr<int64_t>();
  float* p = protos.ptr<float>();
  int64_t* cnt = counts.ptr<int64_t>();
  std::vector<double> sums(static_cast<size_t>(num_classes * d), 0.0);
  for (int64_t c = 0; c < num_classes; ++c) cnt[c] = 0;
  for (int64_t i = 0; i < n; ++i) {
    double* s = sums.data() + y[i] * d;
    const float* row = e + i * d;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) s[j] += row[j];
    cnt[y[i]] += 1;
  }
#pragma omp parallel for schedule(static) if (num_classes * d > 65536)
  for (int64_t c = 0; c < num_classes; ++c) {
    const double inv = cnt[c] > 0 ? 1.0 / static_cast<double>(cnt[c]) : 0.0;
    const double* s = sums.data() + c * d;
    float* row = p + c * d;
    for (int64_t j = 0; j < d; ++j) row[j] = static_cast<float>(s[j] * inv);
  }
}

void update_prototypes(const Tensor& protos, const Tensor& counts, const Tensor& emb, const Tensor& labels) {
  const int64_t m = emb.size(0), d = emb.size(1);
  const float* e = emb.ptr<float>();
  const int64_t* y = labels.ptr<int64_t>();
  float* p = protos.ptr<float>();
  int64_t* cnt = counts.ptr<int64_t>();
  // Group the new rows by class so every touched prototype is rewritten once: p <- (p*n + sum e) / (n + m_c).
  std::vector<int64_t> order(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return y[a] < y[b]; });
  std::vector<double> acc(static_cast<size_t>(d));
  for (int64_t start = 0; start < m;) {
    const int64_t c = y[order[start]];
    int64_t end = start;
    while (end < m && y[order[end]] == c) ++end;
    const double n_old = static_cast<double>(cnt[c]);
    float* row = p + c * d;
    for (int64_t j = 0; j < d; ++j) acc[j] = static_cast<double>(row[j]) * n_old;
    for (int64_t r = start; r < end; ++r) {
      const float* src = e + order[r] * d;
      for (int64_t j = 0; j < d; ++j) acc[j] += src[j];
    }
    const double inv = 1.0 / (n_old + static_cast<double>(end - start));
    for (int64_t j = 0; j < d; ++j) row[j] = static_cast<float>(acc[j] * inv);
    cnt[c] += end - start;
    start = end;
  }
}

}  // namespace metaedge::cpu
