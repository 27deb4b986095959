// The hot loops of adapt_head (csrc/cpu/adapt_head.cpp), included once per SIMD variant inside its own
// namespace and `#pragma GCC target` region (see simd.h). Expects the standard headers, gemm.h and the
// shared definitions of adapt_head.cpp (kNormEps, kParallelWork, kParallelGemm, Hyper, gram_matrix).
// No include guard: it is meant to be included several times.

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

// Returns the number of steps taken: fewer than h.steps when the representation stopped being accurate
// (see `rebuild`); W and V are then those of that step and the caller finishes with run_direct.
int64_t run_span(float* W, float* V, const float* S, const int64_t* y, float* losses, int64_t C, int64_t d,
                 int64_t n, const Hyper& h, bool has_velocity) {
  const std::vector<float> Sn = normalized_support(S, n, d);
  std::vector<float> gram(static_cast<size_t>(n * n));
  gram_matrix(Sn.data(), n, d, gram.data());
  // |A Sn| <= sqrt(lambda_max(K)) |A|, and lambda_max(K) <= the largest absolute row sum (Gershgorin).
  double gram_bound = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    double row = 0.0;
    for (int64_t j = 0; j < n; ++j) row += std::fabs(gram[i * n + j]);
    gram_bound = std::max(gram_bound, row);
  }
  const double support_gain = std::sqrt(gram_bound);
  // All [C, n], class-major so that every per-class pass is a contiguous loop over the samples: s = W Sn^T
  // and r = V Sn^T (the raw logits and their velocity), the loss gradient R and R K, the coefficients A, B
  // of W and V on the support rows, and s0, r0: s and r when the coefficients were last reset.
  const size_t Cn = static_cast<size_t>(C * n);
  std::vector<float> s(Cn), r(Cn, 0.f), R(Cn), RK(Cn), A(Cn, 0.f), B(Cn, 0.f), s0(Cn), r0(Cn);
  const bool parallel_setup = n * C * d > kParallelGemm;
  sgemm(false, true, C, n, d, 1.f, W, d, Sn.data(), d, 0.f, s.data(), n, parallel_setup);
  if (has_velocity) sgemm(false, true, C, n, d, 1.f, V, d, Sn.data(), d, 0.f, r.data(), n, parallel_setup);
  // Per class: the coefficients of W0 and V0 (W and V at the last reset) in W (a, b) and in V (p, q), the
  // Gram entries of W0 and V0, and |W|^2, evaluated from the coefficients at every step. (Propagating |W|^2
  // through |g|^2 would subtract nearly equal squares whenever the gradient is nearly radial.)
  std::vector<double> a(C), b(C), p(C), q(C), ww(C), ww0(C), wv0(C), vv0(C);
  std::vector<float> from_support_w(static_cast<size_t>(C * d)), from_support_v(static_cast<size_t>(C * d));

  // W <- diag(a) W0 + diag(b) V0 + A Sn, V <- diag(p) W0 + diag(q) V0 + B Sn (`first`: only initialise the
  // coefficients). The rounding error of the representation is float epsilon times the ratio of its terms
  // to |W| (squared for |W|^2, and s drifts from Sn W by as much). The ratio stays near 1 while steps are
  // small against |W|; steps much larger than |W| make a W0 and A Sn nearly cancel, and then the remaining
  // steps are left to the direct algorithm, whose error grows only linearly with the step size.
  auto rebuild = [&](bool first) {
    if (!first) {
      sgemm(false, false, C, d, n, 1.f, A.data(), n, Sn.data(), d, 0.f, from_support_w.data(), d, parallel_setup);
      sgemm(false, false, C, d, n, 1.f, B.data(), n, Sn.data(), d, 0.f, from_support_v.data(), d, parallel_setup);
    }
#pragma omp parallel for schedule(static) if (C * d > kParallelWork)
    for (int64_t c = 0; c < C; ++c) {
      float* w = W + c * d;
      float* v = V + c * d;
      if (!first) {
        const float ac = static_cast<float>(a[c]), bc = static_cast<float>(b[c]);
        const float pc = static_cast<float>(p[c]), qc = static_cast<float>(q[c]);
        const float* sw = from_support_w.data() + c * d;
        const float* sv = from_support_v.data() + c * d;
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) {
          const float w0 = w[j], v0 = v[j];
          w[j] = ac * w0 + bc * v0 + sw[j];
          v[j] = pc * w0 + qc * v0 + sv[j];
        }
      }
      ww[c] = ww0[c] = row_dot(w, w, d);
      wv0[c] = row_dot(w, v, d);
      vv0[c] = row_dot(v, v, d);
      a[c] = q[c] = 1.0;
      b[c] = p[c] = 0.0;
    }
    std::fill(A.begin(), A.end(), 0.f);
    std::fill(B.begin(), B.end(), 0.f);
    s0 = s;
    r0 = r;
  };
  rebuild(true);
  constexpr double kMaxGrowth = 8.0;

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
    bool degenerate = false;
    for (int64_t c = 0; c < C; ++c) {
      float* sc = s.data() + c * n;
      float* rc = r.data() + c * n;
      float* Ac = A.data() + c * n;
      float* Bc = B.data() + c * n;
      const float* Rc = R.data() + c * n;
      const float* RKc = RK.data() + c * n;
      const double w_dot_g = row_dot(Rc, sc, n);
      const double inv = norms.inv[c], k = norms.kappa(c, w_dot_g, h.weight_decay);
      const float inv_f = static_cast<float>(inv), k_f = static_cast<float>(k);
      const float* s0c = s0.data() + c * n;
      const float* r0c = r0.data() + c * n;
      double a_dot_s0 = 0.0, a_dot_r0 = 0.0, a_dot_s = 0.0;
      float a_squares = 0.f, b_squares = 0.f;
#pragma omp simd reduction(+ : a_dot_s0, a_dot_r0, a_dot_s, a_squares, b_squares)
      for (int64_t i = 0; i < n; ++i) {
        const float rv = m_f * rc[i] + (RKc[i] * inv_f + k_f * sc[i]);
        rc[i] = rv;
        const float si = sc[i] - lr_f * rv;
        sc[i] = si;
        const float bv = m_f * Bc[i] + (Rc[i] * inv_f + k_f * Ac[i]);
        Bc[i] = bv;
        const float ai = Ac[i] - lr_f * bv;
        Ac[i] = ai;
        a_dot_s0 += static_cast<double>(ai) * s0c[i];
        a_dot_r0 += static_cast<double>(ai) * r0c[i];
        a_dot_s += static_cast<double>(ai) * si;
        a_squares += ai * ai;
        b_squares += bv * bv;
      }
      p[c] = m * p[c] + k * a[c];
      q[c] = m * q[c] + k * b[c];
      a[c] -= lr * p[c];
      b[c] -= lr * q[c];
      // |W|^2 = a W0.W + b V0.W + A.(Sn W), with W0.W = a |W0|^2 + b W0.V0 + A.s0, V0.W likewise.
      const double w0_dot_w = a[c] * ww0[c] + b[c] * wv0[c] + a_dot_s0;
      const double v0_dot_w = a[c] * wv0[c] + b[c] * vv0[c] + a_dot_r0;
      ww[c] = std::max(a[c] * w0_dot_w + b[c] * v0_dot_w + a_dot_s, 0.0);
      // Bounds on the terms that sum to W and to lr V.
      const double w0_norm = std::sqrt(ww0[c]), v0_norm = std::sqrt(vv0[c]);
      const double w_terms = std::fabs(a[c]) * w0_norm + std::fabs(b[c]) * v0_norm +
                             support_gain * std::sqrt(static_cast<double>(a_squares));
      const double v_terms = std::fabs(p[c]) * w0_norm + std::fabs(q[c]) * v0_norm +
                             support_gain * std::sqrt(static_cast<double>(b_squares));
      if (w_terms + lr * v_terms > kMaxGrowth * std::max(std::sqrt(ww[c]), kNormEps)) degenerate = true;
    }
    if (degenerate) {
      rebuild(false);
      return t + 1;
    }
  }
  rebuild(false);
  return h.steps;
}
