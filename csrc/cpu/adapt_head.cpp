// Cosine-classifier head adaptation on the CPU: forward, analytic gradient and momentum-SGD update fused,
// all steps in one call (maths: the docstring of metaedge.kernels.adapt_head).
//
// Two exact algorithms, picked per call by a flop count:
//  * direct: per step two sgemms (logits = Sn W^T, G = R^T Sn, each n*C*d) plus fused O(nC) and O(Cd) passes.
//  * span: the normalised support rows Sn are fixed and every gradient lies in span{Sn rows, W_c}, so
//    W_c = a_c W0_c + b_c V0_c + A_c Sn and V_c = p_c W0_c + q_c V0_c + B_c Sn at every step. Tracking the raw
//    logits s = Sn W^T, r = Sn V^T, the coefficients and the per-class scalars |W|^2, W.V, |V|^2 needs one
//    n x n x C product per step (K R with the Gram matrix K = Sn Sn^T) instead of two n x C x d products, and
//    W, V are rebuilt once at the end. Nothing is solved or inverted, so it is as well conditioned as the
//    direct path (no loss of accuracy when support rows are (nearly) collinear). It wins when n < 2d, the
//    few-shot case.
// Both allocate their workspace once per call. METAEDGE_ADAPT_HEAD_ALGO=direct|span forces one (diagnostics,
// tests); anything else means auto.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_kernels.h"
#include "gemm.h"

namespace metaedge::cpu {
namespace {

constexpr double kNormEps = 1e-12;
// Below this many scalar operations a loop stays on one thread: waking a team costs more than it saves.
constexpr int64_t kParallelWork = 1 << 16;
// Products below this many multiply-adds run on one thread (a few tens of microseconds of work).
constexpr int64_t kParallelGemm = 1 << 20;

// The per-step loops are compiled twice on x86-64, for the baseline and for AVX2+FMA, and picked at load
// time: the wheel stays portable and the fast path needs no -march switch.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && !defined(METAEDGE_NO_MULTIVERSION)
#define METAEDGE_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define METAEDGE_MULTIVERSION
#endif

struct Hyper {
  int64_t steps;
  double lr, momentum, weight_decay, scale;
};

// exp(x) for x <= 0 (logits minus their row maximum), branch-free so that `omp simd` vectorises it:
// Cephes' expf polynomial after x = k ln2 + f, |f| <= ln2/2; relative error < 1e-7 on [-87, 0]. Inputs
// below -87 (compared on the bit patterns: a float compare would block vectorisation under trapping maths)
// give ~1.6e-38 instead of a denormal or zero, harmless for softmax probabilities.
inline float exp_nonpositive(float x) {
  const uint32_t floor_bits = 0xC2AE0000u;  // -87.0f; for negative floats more bits = more negative
  const uint32_t x_bits = __builtin_bit_cast(uint32_t, x);
  x = __builtin_bit_cast(float, x_bits < floor_bits ? x_bits : floor_bits);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const float k = (x * 1.44269504088896341f + magic) - magic;
  const float f = (x - k * 0.693359375f) - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  const float y = p * f * f + f + 1.0f;
  const int32_t two_k_bits = (static_cast<int32_t>(k) + 127) << 23;
  return y * __builtin_bit_cast(float, two_k_bits);
}

// One sample's softmax cross-entropy. `raw[c]` times `logit_scale[c]` are the logits; writes
// out[c] = (p_c - [c == label]) * coef (the gradient of the mean loss w.r.t. the logits, times coef) and
// returns -log p_label. `out` may alias `raw`. The logits are stored before the maximum is taken so that
// the largest one gives exp(0) = 1 exactly: the sum is >= 1 and the loss never comes out negative.
inline double softmax_xent_row(const float* raw, const float* logit_scale, int64_t C, int64_t label, float coef,
                               float* out) {
  float peak = -INFINITY;
#pragma omp simd reduction(max : peak)
  for (int64_t c = 0; c < C; ++c) {
    const float z = raw[c] * logit_scale[c];
    out[c] = z;
    peak = std::max(peak, z);
  }
  const float label_logit = out[label];
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < C; ++c) {
    const float e = exp_nonpositive(out[c] - peak);
    out[c] = e;
    sum += e;
  }
  const float inv_sum = coef / sum;
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) out[c] *= inv_sum;
  out[label] -= coef;
  return (static_cast<double>(peak) - static_cast<double>(label_logit)) + std::log(static_cast<double>(sum));
}

// mean_i (peak_i - label_logit_i + log(sum_i)). The logs are taken of products of 16 sums (each in
// [1, C]) to save 15 of every 16 calls to log.
double mean_cross_entropy(const float* peak, const float* label_logit, const float* sum, int64_t n) {
  double total = 0.0;
  for (int64_t i0 = 0; i0 < n; i0 += 16) {
    double product = 1.0;
    for (int64_t i = i0; i < std::min(i0 + 16, n); ++i) {
      product *= sum[i];
      total += static_cast<double>(peak[i]) - static_cast<double>(label_logit[i]);
    }
    total += std::log(product);
  }
  return total / static_cast<double>(n);
}

double row_dot(const float* a, const float* b, int64_t d) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < d; ++j) acc += static_cast<double>(a[j]) * b[j];
  return acc;
}

// Sn = S / max(||S_i||, eps), norms in double so that huge or tiny rows neither overflow nor underflow.
std::vector<float> normalized_support(const float* S, int64_t n, int64_t d) {
  std::vector<float> Sn(static_cast<size_t>(n * d));
#pragma omp parallel for schedule(static) if (n * d > kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float* row = S + i * d;
    const float inv = static_cast<float>(1.0 / std::max(std::sqrt(row_dot(row, row, d)), kNormEps));
    float* out = Sn.data() + i * d;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) out[j] = row[j] * inv;
  }
  return Sn;
}

// Per-class factors of one step from |W_c|^2: 1/max(|W_c|, eps), whether the clamp is active (then the
// normalisation is W/eps, whose Jacobian is I/eps: no projection term), and scale/max(|W_c|, eps).
struct ClassNorms {
  std::vector<double> inv;
  std::vector<float> logit_scale;
  std::vector<char> clamped;
  explicit ClassNorms(int64_t C) : inv(C), logit_scale(C), clamped(C) {}
  void set(int64_t c, double squared_norm, double scale) {
    const double norm = std::sqrt(std::max(squared_norm, 0.0));
    clamped[c] = !(norm >= kNormEps);
    inv[c] = 1.0 / std::max(norm, kNormEps);
    logit_scale[c] = static_cast<float>(scale * inv[c]);
  }
  // W_c . G_c -> the factor kappa_c in g_c = G_c / |W_c| + kappa_c W_c (weight decay included).
  double kappa(int64_t c, double w_dot_g, double weight_decay) const {
    return clamped[c] ? weight_decay : weight_decay - w_dot_g * inv[c] * inv[c] * inv[c];
  }
};

METAEDGE_MULTIVERSION
void run_direct(float* W, float* V, const float* S, const int64_t* y, float* losses, int64_t C, int64_t d,
                int64_t n, const Hyper& h) {
  const std::vector<float> Sn = normalized_support(S, n, d);
  std::vector<float> logits(static_cast<size_t>(n * C));  // raw dots Sn W^T, then the loss gradient R
  std::vector<float> G(static_cast<size_t>(C * d));
  std::vector<double> squared_norm(C);
  ClassNorms norms(C);
  const bool parallel_gemm = n * C * d > kParallelGemm;
  const float coef = static_cast<float>(h.scale / static_cast<double>(n));
  const float momentum = static_cast<float>(h.momentum), lr = static_cast<float>(h.lr);
  for (int64_t c = 0; c < C; ++c) squared_norm[c] = row_dot(W + c * d, W + c * d, d);

  for (int64_t t = 0; t < h.steps; ++t) {
    for (int64_t c = 0; c < C; ++c) norms.set(c, squared_norm[c], h.scale);
    sgemm(false, true, n, C, d, 1.f, Sn.data(), d, W, d, 0.f, logits.data(), C, parallel_gemm);
    double loss = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : loss) if (n * C > kParallelWork)
    for (int64_t i = 0; i < n; ++i) {
      float* row = logits.data() + i * C;
      loss += softmax_xent_row(row, norms.logit_scale.data(), C, y[i], coef, row);
    }
    losses[t] = static_cast<float>(loss / static_cast<double>(n));
    // G = R^T Sn is the gradient w.r.t. the normalised weights once divided by |W_c| below.
    sgemm(true, false, C, d, n, 1.f, logits.data(), C, Sn.data(), d, 0.f, G.data(), d, parallel_gemm);
#pragma omp parallel for schedule(static) if (C * d > kParallelWork)
    for (int64_t c = 0; c < C; ++c) {
      float* w = W + c * d;
      float* v = V + c * d;
      const float* g = G.data() + c * d;
      const float inv = static_cast<float>(norms.inv[c]);
      const float kappa = static_cast<float>(norms.kappa(c, row_dot(w, g, d), h.weight_decay));
      double next_squared_norm = 0.0;
#pragma omp simd reduction(+ : next_squared_norm)
      for (int64_t j = 0; j < d; ++j) {
        const float vj = momentum * v[j] + (g[j] * inv + kappa * w[j]);
        const float wj = w[j] - lr * vj;
        v[j] = vj;
        w[j] = wj;
        next_squared_norm += static_cast<double>(wj) * wj;
      }
      squared_norm[c] = next_squared_norm;
    }
  }
}

// K = Sn Sn^T: the blocks on and above the diagonal, then mirrored (exactly symmetric, half the flops).
void gram_matrix(const float* Sn, int64_t n, int64_t d, float* K) {
  constexpr int64_t kBlock = 64;
  const bool parallel = n * n * d > 2 * kParallelGemm;
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t rows = std::min(kBlock, n - i0);
    sgemm(false, true, rows, n - i0, d, 1.f, Sn + i0 * d, d, Sn + i0 * d, d, 0.f, K + i0 * n + i0, n, parallel);
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < i; ++j) K[i * n + j] = K[j * n + i];
}

METAEDGE_MULTIVERSION
void run_span(float* W, float* V, const float* S, const int64_t* y, float* losses, int64_t C, int64_t d,
              int64_t n, const Hyper& h, bool has_velocity) {
  const std::vector<float> Sn = normalized_support(S, n, d);
  std::vector<float> gram(static_cast<size_t>(n * n));
  gram_matrix(Sn.data(), n, d, gram.data());
  // All [C, n], class-major so that every per-class pass is a contiguous loop over the samples: s = W Sn^T
  // and r = V Sn^T (the raw logits and their velocity), the loss gradient R and R K, and the coefficients
  // A, B of W and V on the support rows.
  const size_t Cn = static_cast<size_t>(C * n);
  std::vector<float> s(Cn), r(Cn, 0.f), R(Cn), RK(Cn), A(Cn, 0.f), B(Cn, 0.f);
  const bool parallel_setup = n * C * d > kParallelGemm;
  sgemm(false, true, C, n, d, 1.f, W, d, Sn.data(), d, 0.f, s.data(), n, parallel_setup);
  if (has_velocity) sgemm(false, true, C, n, d, 1.f, V, d, Sn.data(), d, 0.f, r.data(), n, parallel_setup);
  // Per class: |W|^2, W.V, |V|^2 and the coefficients of W0 and V0 in W (a, b) and in V (p, q).
  std::vector<double> ww(C), wv(C), vv(C), a(C, 1.0), b(C, 0.0), p(C, 0.0), q(C, 1.0);
  for (int64_t c = 0; c < C; ++c) {
    const float *w = W + c * d, *v = V + c * d;
    ww[c] = row_dot(w, w, d);
    wv[c] = has_velocity ? row_dot(w, v, d) : 0.0;
    vv[c] = has_velocity ? row_dot(v, v, d) : 0.0;
  }
  std::vector<float> peak(n), sum(n), label_logit(n);
  ClassNorms norms(C);
  const bool parallel_gemm = n * n * C > kParallelGemm;
  const float coef = static_cast<float>(h.scale / static_cast<double>(n));
  const double m = h.momentum, lr = h.lr;
  const float m_f = static_cast<float>(m), lr_f = static_cast<float>(lr);

  for (int64_t t = 0; t < h.steps; ++t) {
    for (int64_t c = 0; c < C; ++c) norms.set(c, ww[c], h.scale);
    // Softmax over the classes of every sample, vectorised along the samples; R holds the logits first.
    std::fill(peak.begin(), peak.end(), -INFINITY);
    std::fill(sum.begin(), sum.end(), 0.f);
    for (int64_t c = 0; c < C; ++c) {
      const float zs = norms.logit_scale[c];
      const float* sc = s.data() + c * n;
      float* Rc = R.data() + c * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const float z = sc[i] * zs;
        Rc[i] = z;
        peak[i] = std::max(peak[i], z);
      }
    }
    for (int64_t i = 0; i < n; ++i) label_logit[i] = R[y[i] * n + i];
    for (int64_t c = 0; c < C; ++c) {
      float* Rc = R.data() + c * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const float e = exp_nonpositive(Rc[i] - peak[i]);
        Rc[i] = e;
        sum[i] += e;
      }
    }
    losses[t] = static_cast<float>(mean_cross_entropy(peak.data(), label_logit.data(), sum.data(), n));
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) sum[i] = coef / sum[i];
    for (int64_t c = 0; c < C; ++c) {
      float* Rc = R.data() + c * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) Rc[i] *= sum[i];
    }
    for (int64_t i = 0; i < n; ++i) R[y[i] * n + i] -= coef;
    // R K = (K R^T)^T: row c is Sn G_c with G_c = sum_i R_ci Sn_i (K is symmetric).
    sgemm(false, false, C, n, n, 1.f, R.data(), n, gram.data(), n, 0.f, RK.data(), n, parallel_gemm);
    // g_c = G_c/|W_c| + kappa_c W_c; Sn g_c = (R K)_c/|W_c| + kappa_c s_c; v <- m v + g; W <- W - lr v.
    for (int64_t c = 0; c < C; ++c) {
      float* sc = s.data() + c * n;
      float* rc = r.data() + c * n;
      float* Ac = A.data() + c * n;
      float* Bc = B.data() + c * n;
      const float* Rc = R.data() + c * n;
      const float* RKc = RK.data() + c * n;
      const double w_dot_g = row_dot(Rc, sc, n), v_dot_g = row_dot(Rc, rc, n), g_dot_g = row_dot(Rc, RKc, n);
      const double inv = norms.inv[c], k = norms.kappa(c, w_dot_g, h.weight_decay);
      const float inv_f = static_cast<float>(inv), k_f = static_cast<float>(k);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const float rv = m_f * rc[i] + (RKc[i] * inv_f + k_f * sc[i]);
        rc[i] = rv;
        sc[i] -= lr_f * rv;
        const float bv = m_f * Bc[i] + (Rc[i] * inv_f + k_f * Ac[i]);
        Bc[i] = bv;
        Ac[i] -= lr_f * bv;
      }
      // The same step on the scalars: |g|^2, g.W, g.V, then v' = m v + g and W' = W - lr v'.
      const double gg = g_dot_g * inv * inv + 2.0 * k * inv * w_dot_g + k * k * ww[c];
      const double gw = w_dot_g * inv + k * ww[c];
      const double gv = v_dot_g * inv + k * wv[c];
      const double vv_next = m * m * vv[c] + 2.0 * m * gv + gg;
      const double wv_mid = m * wv[c] + gw;  // W . v', before W moves
      ww[c] = std::max(ww[c] - 2.0 * lr * wv_mid + lr * lr * vv_next, 0.0);
      wv[c] = wv_mid - lr * vv_next;
      vv[c] = vv_next;
      p[c] = m * p[c] + k * a[c];
      q[c] = m * q[c] + k * b[c];
      a[c] -= lr * p[c];
      b[c] -= lr * q[c];
    }
  }

  // W = diag(a) W0 + diag(b) V0 + A Sn and V = diag(p) W0 + diag(q) V0 + B Sn.
  std::vector<float> from_support_w(static_cast<size_t>(C * d)), from_support_v(static_cast<size_t>(C * d));
  sgemm(false, false, C, d, n, 1.f, A.data(), n, Sn.data(), d, 0.f, from_support_w.data(), d, parallel_setup);
  sgemm(false, false, C, d, n, 1.f, B.data(), n, Sn.data(), d, 0.f, from_support_v.data(), d, parallel_setup);
#pragma omp parallel for schedule(static) if (C * d > kParallelWork)
  for (int64_t c = 0; c < C; ++c) {
    const float ac = static_cast<float>(a[c]), bc = static_cast<float>(b[c]);
    const float pc = static_cast<float>(p[c]), qc = static_cast<float>(q[c]);
    float* w = W + c * d;
    float* v = V + c * d;
    const float* sw = from_support_w.data() + c * d;
    const float* sv = from_support_v.data() + c * d;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) {
      const float w0 = w[j], v0 = v[j];
      w[j] = ac * w0 + bc * v0 + sw[j];
      v[j] = pc * w0 + qc * v0 + sv[j];
    }
  }
}

enum class Algo { kAuto, kDirect, kSpan };

Algo forced_algo() {
  const char* env = std::getenv("METAEDGE_ADAPT_HEAD_ALGO");
  if (env == nullptr) return Algo::kAuto;
  const std::string value(env);
  if (value == "direct") return Algo::kDirect;
  if (value == "span") return Algo::kSpan;
  return Algo::kAuto;
}

// Flop counts (elementwise passes weighted by their rough cost relative to a multiply-add).
bool span_is_cheaper(int64_t C, int64_t d, int64_t n, int64_t steps, bool has_velocity) {
  if (n > 4096) return false;  // keeps the Gram matrix within 64 MiB
  const double Cd = static_cast<double>(C) * d, nC = static_cast<double>(n) * C, nn = static_cast<double>(n) * n;
  const double direct = static_cast<double>(steps) * (2.0 * nC * d + 8.0 * nC + 4.0 * Cd);
  const double span = nn * d + (has_velocity ? 4.0 : 3.0) * nC * d + 2.0 * Cd +
                      static_cast<double>(steps) * (nn * C + 24.0 * nC);
  return span < direct;
}

}  // namespace

void adapt_head(const Tensor& weights, const Tensor& velocity, const Tensor& support, const Tensor& labels,
                int64_t steps, double lr, double momentum, double weight_decay, double scale,
                const Tensor& losses) {
  const int64_t C = weights.size(0), d = weights.size(1), n = support.size(0);
  float* W = weights.ptr<float>();
  float* V = velocity.ptr<float>();
  const Hyper hyper{steps, lr, momentum, weight_decay, scale};
  if (steps == 0 || n == 0) return;
  bool has_velocity = false;
  for (int64_t k = 0; k < C * d && !has_velocity; ++k) has_velocity = V[k] != 0.f;
  Algo algo = forced_algo();
  if (algo == Algo::kAuto) algo = span_is_cheaper(C, d, n, steps, has_velocity) ? Algo::kSpan : Algo::kDirect;
  if (algo == Algo::kSpan)
    run_span(W, V, support.ptr<float>(), labels.ptr<int64_t>(), losses.ptr<float>(), C, d, n, hyper,
             has_velocity);
  else
    run_direct(W, V, support.ptr<float>(), labels.ptr<int64_t>(), losses.ptr<float>(), C, d, n, hyper);
}

}  // namespace metaedge::cpu
