// Cosine-classifier head adaptation on the GPU: all steps on the device, two launches per step, the losses
// written to a device array. Same maths and the same float/double split as the "direct" algorithm of
// csrc/cpu/adapt_head.cpp (see the docstring of metaedge.kernels.adapt_head):
//   prep     Sn = S / max(|S_i|, eps); per class |W_c|^2 (double) -> 1/max(|W_c|, eps), clamp flag, scale/|W_c|
//   forward  one block per support row i: logits = (Sn_i . W_c) * scale/|W_c|, softmax, loss_i (double),
//            R_ic = (p_ic - [c == y_i]) * scale / n
//   update   one block per class c: G_c = sum_i R_ic Sn_i, kappa = wd - (W_c.G_c)/|W_c|^3 (wd when clamped),
//            v <- m v + (G_c/|W_c| + kappa W_c), W <- W - lr v, the next |W_c|^2; block 0 also averages the
//            losses of the step.
// Every sum runs in a fixed order, so repeated runs give identical results.
#include "cuda_common.cuh"
#include "cuda_kernels.h"

namespace metaedge::cuda {
namespace {

constexpr double kNormEps = 1e-12;
constexpr int kThreads = 256;

struct ClassState {
  double* inv;         // 1 / max(|W_c|, eps)
  float* logit_scale;  // scale / max(|W_c|, eps)
  int* clamped;        // |W_c| < eps: normalisation is W/eps, whose Jacobian has no projection term
};

__device__ void set_class_norm(const ClassState& cs, int64_t c, double squared_norm, double scale) {
  const double norm = sqrt(fmax(squared_norm, 0.0));
  cs.clamped[c] = !(norm >= kNormEps);
  const double inv = 1.0 / fmax(norm, kNormEps);
  cs.inv[c] = inv;
  cs.logit_scale[c] = static_cast<float>(scale * inv);
}

// Blocks [0, n): normalised support rows. Blocks [n, n + C): class norms.
__global__ void adapt_prep_kernel(const float* __restrict__ S, const float* __restrict__ W, int64_t n, int64_t C,
                                  int64_t d, double scale, float* Sn, ClassState cs) {
  __shared__ double scratch[32];
  const int64_t block = blockIdx.x;
  const bool support_row = block < n;
  const int64_t row = support_row ? block : block - n;
  const float* src = (support_row ? S : W) + row * d;
  double sq = 0.0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) sq += static_cast<double>(src[j]) * src[j];
  sq = block_sum(sq, scratch);
  if (support_row) {
    const float inv = static_cast<float>(1.0 / fmax(sqrt(sq), kNormEps));
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) Sn[row * d + j] = src[j] * inv;
  } else if (threadIdx.x == 0) {
    set_class_norm(cs, row, sq, scale);
  }
}

__global__ void adapt_forward_kernel(const float* __restrict__ Sn, const float* __restrict__ W,
                                     const int64_t* __restrict__ labels, const float* __restrict__ logit_scale,
                                     int64_t C, int64_t d, float coef, float* R, double* row_loss) {
  __shared__ float fscratch[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int64_t i = blockIdx.x;
  const float* s = Sn + i * d;
  float* r = R + i * C;
  for (int64_t c = warp; c < C; c += warps) {
    const float* w = W + c * d;
    float dot = 0.f;
    for (int64_t j = lane; j < d; j += 32) dot = fmaf(s[j], w[j], dot);
    dot = warp_sum(dot);
    if (lane == 0) r[c] = dot * logit_scale[c];
  }
  __syncthreads();
  const int64_t y = labels[i];
  const float label_logit = r[y];
  float local_max = -INFINITY;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) local_max = fmaxf(local_max, r[c]);
  const float peak = block_max(local_max, fscratch);  // its barriers also order the reads above before the writes below
  float local_sum = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float e = expf(r[c] - peak);
    r[c] = e;
    local_sum += e;
  }
  const float sum = block_sum(local_sum, fscratch);
  const float inv_sum = coef / sum;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float g = r[c] * inv_sum;
    if (c == y) g -= coef;
    r[c] = g;
  }
  // As the CPU kernel: the largest logit gives exp(0) = 1 exactly, so sum >= 1 and the loss is never negative.
  if (threadIdx.x == 0)
    row_loss[i] = (static_cast<double>(peak) - static_cast<double>(label_logit)) + log(static_cast<double>(sum));
}

__global__ void adapt_update_kernel(const float* __restrict__ Sn, const float* __restrict__ R, int64_t n, int64_t C,
                                    int64_t d, float* W, float* V, float* G, ClassState cs, double scale,
                                    double weight_decay, float momentum, float lr, const double* __restrict__ row_loss,
                                    float* loss_out) {
  __shared__ double scratch[32];
  const int64_t c = blockIdx.x;
  float* w = W + c * d;
  float* v = V + c * d;
  float* g = G + c * d;
  double w_dot_g = 0.0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float acc = 0.f;
#pragma unroll 4
    for (int64_t i = 0; i < n; ++i) acc = fmaf(R[i * C + c], Sn[i * d + j], acc);
    g[j] = acc;
    w_dot_g += static_cast<double>(w[j]) * acc;
  }
  w_dot_g = block_sum(w_dot_g, scratch);
  const double inv_d = cs.inv[c];
  const float inv = static_cast<float>(inv_d);
  const float kappa =
      static_cast<float>(cs.clamped[c] ? weight_decay : weight_decay - w_dot_g * inv_d * inv_d * inv_d);
  double next_sq = 0.0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float vj = momentum * v[j] + (g[j] * inv + kappa * w[j]);
    const float wj = w[j] - lr * vj;
    v[j] = vj;
    w[j] = wj;
    next_sq += static_cast<double>(wj) * wj;
  }
  next_sq = block_sum(next_sq, scratch);
  // Every thread has read cs.inv[c] / cs.clamped[c] before block_sum's barriers; now they may change.
  if (threadIdx.x == 0) set_class_norm(cs, c, next_sq, scale);
  if (c == 0) {
    double total = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) total += row_loss[i];
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) *loss_out = static_cast<float>(total / static_cast<double>(n));
  }
}

}  // namespace

void adapt_head(const Tensor& weights, const Tensor& velocity, const Tensor& support, const Tensor& labels,
                int64_t steps, double lr, double momentum, double weight_decay, double scale,
                const Tensor& losses) {
  const int64_t C = weights.size(0), d = weights.size(1), n = support.size(0);
  if (steps == 0 || n == 0) return;
  if (n + C > INT32_MAX) throw ArgumentError("adapt_head: at most 2^31 - 1 support rows plus classes on the GPU");
  const int device = weights.device_index;
  DeviceGuard guard(device);
  const cudaStream_t stream = stream_of(weights);

  auto layout = [&](Carver& cv, float** Sn, float** R, float** G, double** row_loss, ClassState* cs) {
    *Sn = cv.take<float>(n * d);
    *R = cv.take<float>(n * C);
    *G = cv.take<float>(C * d);
    *row_loss = cv.take<double>(n);
    cs->inv = cv.take<double>(C);
    cs->logit_scale = cv.take<float>(C);
    cs->clamped = cv.take<int>(C);
  };
  float *Sn, *R, *G;
  double* row_loss;
  ClassState cs{};
  Carver sizer(nullptr);
  layout(sizer, &Sn, &R, &G, &row_loss, &cs);
  Workspace ws(sizer.bytes(), device, stream);
  Carver carve(ws.data());
  layout(carve, &Sn, &R, &G, &row_loss, &cs);

  float* W = weights.ptr<float>();
  float* V = velocity.ptr<float>();
  adapt_prep_kernel<<<static_cast<unsigned>(n + C), kThreads, 0, stream>>>(support.ptr<float>(), W, n, C, d, scale,
                                                                          Sn, cs);
  METAEDGE_CUDA_CHECK_LAUNCH("adapt_head prep");
  const float coef = static_cast<float>(scale / static_cast<double>(n));
  float* loss_out = losses.ptr<float>();
  for (int64_t t = 0; t < steps; ++t) {
    adapt_forward_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(Sn, W, labels.ptr<int64_t>(),
                                                                           cs.logit_scale, C, d, coef, R, row_loss);
    METAEDGE_CUDA_CHECK_LAUNCH("adapt_head forward");
    adapt_update_kernel<<<static_cast<unsigned>(C), kThreads, 0, stream>>>(
        Sn, R, n, C, d, W, V, G, cs, scale, weight_decay, static_cast<float>(momentum), static_cast<float>(lr),
        row_loss, loss_out + t);
    METAEDGE_CUDA_CHECK_LAUNCH("adapt_head update");
  }
}

}  // namespace metaedge::cuda
