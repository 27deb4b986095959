// Cosine-classifier head adaptation on the CPU: forward, analytic gradient and momentum-SGD update fused,
// all steps in one call (maths: the docstring of metaedge.kernels.adapt_head).
//
// Two exact algorithms, picked per call by a flop count:
//  * direct: per step two sgemms (logits = Sn W^T, G = R^T Sn, each n*C*d) plus fused O(nC) and O(Cd) passes.
//  * span: the normalised support rows Sn are fixed and every gradient lies in span{Sn rows, W_c}, so
//    W_c = a_c W0_c + b_c V0_c + A_c Sn and V_c = p_c W0_c + q_c V0_c + B_c Sn at every step. Tracking the raw
//    logits s = Sn W^T, r = Sn V^T and the coefficients (|W_c|^2 follows from them in O(n)) needs one
//    n x n x C product per step (R K with the Gram matrix K = Sn Sn^T) instead of two n x C x d products, and
//    W, V are rebuilt once at the end. Nothing is solved or inverted, so (nearly) collinear support rows cost
//    no accuracy; its rounding errors are those of the direct path. It wins when n < 2d, the few-shot case.
// Both allocate their workspace once per call. METAEDGE_ADAPT_HEAD_ALGO=direct|span forces one (diagnostics,
// tests); anything else means auto. The per-step loops (adapt_head_impl.h) are compiled for the baseline and
// for AVX2+FMA and picked by simd_target() like gemm and topk (METAEDGE_CPU_SIMD caps it).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_kernels.h"
#include "gemm.h"
#include "simd.h"

namespace metaedge::cpu {
namespace {

constexpr double kNormEps = 1e-12;
// Below this many scalar operations a loop stays on one thread: waking a team costs more than it saves.
constexpr int64_t kParallelWork = 1 << 16;
// Products below this many multiply-adds run on one thread (a few tens of microseconds of work).
constexpr int64_t kParallelGemm = 1 << 20;

struct Hyper {
  int64_t steps;
  double lr, momentum, weight_decay, scale;
};

// K = Sn Sn^T: the blocks on and above the diagonal, then mirrored (exactly symmetric, half the flops).
void gram_matrix(const float* Sn, int64_t n, int64_t d, float* K) {
  constexpr int64_t kBlock = 64;
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t rows = std::min(kBlock, n - i0);
    sgemm(false, true, rows, n - i0, d, 1.f, Sn + i0 * d, d, Sn + i0 * d, d, 0.f, K + i0 * n + i0, n,
          rows * (n - i0) * d > kParallelGemm);
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < i; ++j) K[i * n + j] = K[j * n + i];
}

}  // namespace

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace adapt_avx2 {
#include "adapt_head_impl.h"
}  // namespace adapt_avx2
#pragma GCC pop_options
#endif

namespace adapt_baseline {
#include "adapt_head_impl.h"
}  // namespace adapt_baseline

namespace {

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
  auto* run_span = &adapt_baseline::run_span;
  auto* run_direct = &adapt_baseline::run_direct;
#if defined(__x86_64__)
  // The loops here are short and memory-light: AVX-512 machines take the AVX2 variant.
  if (simd_target() != SimdTarget::kBaseline) {
    run_span = &adapt_avx2::run_span;
    run_direct = &adapt_avx2::run_direct;
  }
#endif
  int64_t done = 0;
  if (algo == Algo::kSpan)
    done = run_span(W, V, support.ptr<float>(), labels.ptr<int64_t>(), losses.ptr<float>(), C, d, n, hyper,
                    has_velocity);
  if (done < steps) {
    Hyper rest = hyper;
    rest.steps = steps - done;
    run_direct(W, V, support.ptr<float>(), labels.ptr<int64_t>(), losses.ptr<float>() + done, C, d, n, rest);
  }
}

}  // namespace metaedge::cpu
