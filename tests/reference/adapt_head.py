"""Float64 reference for adapt_head, written from the maths in the docstring of metaedge.kernels.adapt_head
without looking at the kernel: cosine classifier logits = scale * normalize(W) normalize(S)^T, mean softmax
cross-entropy, SGD with momentum in PyTorch's convention (v <- m v + g + wd W; W <- W - lr v)."""
import numpy as np

EPS = 1e-12


def normalize_rows(x, eps=EPS):
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def loss_and_grad(weights, support_normalized, labels, scale, eps=EPS):
    """Mean cross-entropy and its analytic gradient w.r.t. the raw weights (no weight decay)."""
    W = np.asarray(weights, dtype=np.float64)
    Sn = np.asarray(support_normalized, dtype=np.float64)
    y = np.asarray(labels)
    n = len(y)
    norms = np.linalg.norm(W, axis=1)
    denom = np.maximum(norms, eps)
    Wn = W / denom[:, None]
    logits = scale * Sn @ Wn.T
    peak = logits.max(axis=1, keepdims=True)
    lse = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
    loss = float(np.mean(lse - logits[np.arange(n), y]))
    probs = np.exp(logits - lse[:, None])
    probs[np.arange(n), y] -= 1.0
    grad_normalized = scale / n * probs.T @ Sn  # d loss / d Wn, [C, d]
    # Jacobian of W / max(|W|, eps): (I - Wn Wn^T) / |W| above eps, I / eps below it (the clamp is constant).
    radial = np.where(norms >= eps, (Wn * grad_normalized).sum(axis=1), 0.0)
    grad = (grad_normalized - Wn * radial[:, None]) / denom[:, None]
    return loss, grad


def loss_only(weights, support_normalized, labels, scale):
    return loss_and_grad(weights, support_normalized, labels, scale)[0]


def adapt_head(weights, support, labels, steps, lr, momentum, weight_decay, scale, velocity=None):
    """Returns (losses[steps], final W, final velocity), all float64; the inputs are not modified."""
    W = np.array(weights, dtype=np.float64)
    V = np.zeros_like(W) if velocity is None else np.array(velocity, dtype=np.float64)
    Sn = normalize_rows(support)
    losses = np.zeros(steps)
    for t in range(steps):
        losses[t], grad = loss_and_grad(W, Sn, labels, scale)
        V = momentum * V + grad + weight_decay * W
        W = W - lr * V
    return losses, W, V
