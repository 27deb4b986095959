"""adapt_head vs the float64 reference in tests/reference/adapt_head.py, whose gradient is itself checked
against finite differences and torch autograd.

The kernel has two exact algorithms (direct, and "span" which works in the span of the support rows); every
comparison runs both, forced through METAEDGE_ADAPT_HEAD_ALGO. Tolerances (float32 kernel vs float64
reference): losses within 2e-5 absolute; final weights and velocity within 2e-5 of the largest reference
entry of their row (float32 rounding accumulates over the steps)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaedge import kernels
from tests.reference import adapt_head as ref

ALGOS = ("direct", "span")


@pytest.fixture(params=ALGOS)
def algo(request, monkeypatch):
    monkeypatch.setenv("METAEDGE_ADAPT_HEAD_ALGO", request.param)
    return request.param


def make_problem(rng, C, d, n, magnitude=1.0, support_magnitude=1.0):
    """Support rows are noisy copies of class centres, so the problem is learnable but not trivial."""
    centres = rng.standard_normal((C, d))
    y = rng.integers(0, C, n)
    S = (centres[y] + 0.8 * rng.standard_normal((n, d))) * support_magnitude
    W = (centres + 0.5 * rng.standard_normal((C, d))) * magnitude
    return W.astype(np.float32), S.astype(np.float32), y


def assert_rows_close(got, want, rel=2e-5):
    scale = np.maximum(np.abs(want).max(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    err = np.abs(got.astype(np.float64) - want) / scale
    assert err.max() <= rel, f"max row-relative error {err.max():.3g} > {rel}"


def run_both(W0, S, y, steps, lr=0.1, momentum=0.9, weight_decay=0.0, scale=10.0, V0=None):
    W = W0.copy()
    V = np.zeros_like(W0) if V0 is None else V0.copy()
    losses = kernels.adapt_head(W, S, y, steps, lr=lr, momentum=momentum, weight_decay=weight_decay, scale=scale,
                                velocity=V)
    want = ref.adapt_head(W0, S, y, steps, lr, momentum, weight_decay, scale, velocity=V0)
    return (losses, W, V), want


# ---------------------------------------------------------------- the reference's own gradient


def numeric_grad(W, Sn, y, scale, h):
    grad = np.zeros_like(W)
    for idx in np.ndindex(*W.shape):
        plus, minus = W.copy(), W.copy()
        plus[idx] += h
        minus[idx] -= h
        grad[idx] = (ref.loss_only(plus, Sn, y, scale) - ref.loss_only(minus, Sn, y, scale)) / (2 * h)
    return grad


@pytest.mark.parametrize("scale", [1.0, 10.0, 30.0])
def test_reference_gradient_matches_finite_differences(rng, scale):
    W = rng.standard_normal((4, 6))
    Sn = ref.normalize_rows(rng.standard_normal((9, 6)))
    y = rng.integers(0, 4, 9)
    _, grad = ref.loss_and_grad(W, Sn, y, scale)
    np.testing.assert_allclose(grad, numeric_grad(W, Sn, y, scale, 1e-6), rtol=1e-6, atol=1e-8)


def test_reference_gradient_below_the_norm_clamp_matches_finite_differences(rng):
    # |W_0| < eps: W_0 / eps is linear in W_0, so the gradient is G / eps with no projection term.
    W = rng.standard_normal((3, 5))
    W[0] *= 3e-13 / np.linalg.norm(W[0])
    Sn = ref.normalize_rows(rng.standard_normal((6, 5)))
    y = np.array([0, 1, 2, 0, 1, 2])
    _, grad = ref.loss_and_grad(W, Sn, y, 10.0)
    numeric = numeric_grad(W, Sn, y, 10.0, 1e-17)
    np.testing.assert_allclose(grad[0], numeric[0], rtol=1e-5)


def test_reference_gradient_matches_torch_autograd(rng):
    torch = pytest.importorskip("torch")
    W = rng.standard_normal((5, 7))
    W[3] = 0.0  # a class never imprinted: its gradient is G / eps
    S = rng.standard_normal((11, 7))
    y = rng.integers(0, 5, 11)
    Wt = torch.tensor(W, requires_grad=True)
    Sn = torch.nn.functional.normalize(torch.tensor(S), dim=1, eps=1e-12)
    logits = 10.0 * Sn @ torch.nn.functional.normalize(Wt, dim=1, eps=1e-12).T
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    loss.backward()
    want_loss, grad = ref.loss_and_grad(W, ref.normalize_rows(S), y, 10.0)
    assert want_loss == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(grad, Wt.grad.numpy(), rtol=1e-9, atol=1e-12 * np.abs(grad).max())


def test_reference_run_matches_torch_sgd_with_momentum_and_weight_decay(rng):
    torch = pytest.importorskip("torch")
    W0, S, y = make_problem(rng, 4, 8, 12)
    W = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = torch.optim.SGD([W], lr=0.2, momentum=0.8, weight_decay=0.01)
    Sn = torch.nn.functional.normalize(torch.tensor(S, dtype=torch.float64), dim=1)
    torch_losses = []
    for _ in range(7):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(5.0 * Sn @ torch.nn.functional.normalize(W, dim=1).T,
                                                 torch.tensor(y))
        loss.backward()
        opt.step()
        torch_losses.append(loss.item())
    losses, W_ref, V_ref = ref.adapt_head(W0, S, y, 7, 0.2, 0.8, 0.01, 5.0)
    np.testing.assert_allclose(losses, torch_losses, rtol=1e-12)
    np.testing.assert_allclose(W_ref, W.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(V_ref, opt.state[W]["momentum_buffer"].numpy(), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- kernel vs reference


@pytest.mark.parametrize("C,d,n,steps", [(5, 64, 25, 60), (20, 512, 100, 30), (3, 8, 50, 40), (10, 32, 7, 25),
                                         (40, 16, 200, 15)])
def test_matches_reference(rng, algo, C, d, n, steps):
    W0, S, y = make_problem(rng, C, d, n)
    (losses, W, V), (want_losses, want_W, want_V) = run_both(W0, S, y, steps, weight_decay=1e-3)
    assert losses.dtype == np.float32 and losses.shape == (steps,)
    np.testing.assert_allclose(losses, want_losses, atol=2e-5)
    assert_rows_close(W, want_W)


@pytest.mark.parametrize("momentum,weight_decay,lr,scale", [(0.0, 0.0, 0.5, 10.0), (0.0, 0.05, 0.1, 16.0),
                                                            (0.9, 0.0, 0.01, 30.0), (0.5, 0.01, 1.0, 1.0)])
def test_hyperparameters(rng, algo, momentum, weight_decay, lr, scale):
    W0, S, y = make_problem(rng, 6, 24, 30)
    (losses, W, V), (want_losses, want_W, want_V) = run_both(W0, S, y, 20, lr=lr, momentum=momentum,
                                                             weight_decay=weight_decay, scale=scale)
    np.testing.assert_allclose(losses, want_losses, atol=2e-5)
    assert_rows_close(W, want_W)


def test_continuing_with_the_same_velocity_equals_one_long_run(rng, algo):
    W0, S, y = make_problem(rng, 5, 32, 20)
    W_long = W0.copy()
    long_losses = kernels.adapt_head(W_long, S, y, 30, lr=0.1, momentum=0.9, weight_decay=1e-3)
    W = W0.copy()
    V = np.zeros_like(W)
    first = kernels.adapt_head(W, S, y, 12, lr=0.1, momentum=0.9, weight_decay=1e-3, velocity=V)
    assert np.any(V != 0)
    second = kernels.adapt_head(W, S, y, 18, lr=0.1, momentum=0.9, weight_decay=1e-3, velocity=V)
    np.testing.assert_allclose(np.concatenate([first, second]), long_losses, atol=1e-5)
    assert_rows_close(W, W_long.astype(np.float64), rel=1e-5)
    _, want_W, want_V = ref.adapt_head(W0, S, y, 30, 0.1, 0.9, 1e-3, 10.0)
    assert_rows_close(W, want_W)
    assert_rows_close(V, want_V)


def test_given_velocity_is_used_and_updated(rng, algo):
    W0, S, y = make_problem(rng, 4, 16, 12)
    V0 = (0.3 * rng.standard_normal(W0.shape)).astype(np.float32)
    (losses, W, V), (want_losses, want_W, want_V) = run_both(W0, S, y, 10, V0=V0)
    np.testing.assert_allclose(losses, want_losses, atol=2e-5)
    assert_rows_close(W, want_W)
    assert_rows_close(V, want_V)


def test_loss_decreases_on_a_learnable_problem(rng, algo):
    _, S, y = make_problem(rng, 8, 64, 40)
    W0 = rng.standard_normal((8, 64)).astype(np.float32)  # unrelated to the classes: loss starts high
    losses = kernels.adapt_head(W0.copy(), S, y, 50, lr=0.5, momentum=0.9, scale=10.0)
    assert losses[0] > 1.0 and losses[-1] < 0.1 * losses[0]
    assert np.all(np.diff(losses[:10]) < 0)


def test_steps_zero_returns_empty_and_leaves_weights(rng):
    W0, S, y = make_problem(rng, 3, 8, 6)
    W = W0.copy()
    losses = kernels.adapt_head(W, S, y, 0)
    assert losses.shape == (0,) and losses.dtype == np.float32
    np.testing.assert_array_equal(W, W0)


def test_steps_zero_accepts_empty_support(rng):
    W = rng.standard_normal((3, 8)).astype(np.float32)
    assert kernels.adapt_head(W, np.zeros((0, 8), np.float32), np.zeros(0, np.int64), 0).shape == (0,)


def test_one_step(rng, algo):
    W0, S, y = make_problem(rng, 7, 20, 14)
    (losses, W, V), (want_losses, want_W, want_V) = run_both(W0, S, y, 1, weight_decay=0.1)
    np.testing.assert_allclose(losses, want_losses, atol=2e-5)
    assert_rows_close(W, want_W)
    assert_rows_close(V, want_V)


def test_one_class_has_zero_loss_and_only_weight_decay_moves_it(rng, algo):
    W0, S, _ = make_problem(rng, 1, 16, 5)
    y = np.zeros(5, np.int64)
    W = W0.copy()
    losses = kernels.adapt_head(W, S, y, 10)
    np.testing.assert_allclose(losses, 0.0, atol=1e-6)
    np.testing.assert_allclose(W, W0, rtol=1e-6, atol=1e-7)
    (losses, W, V), (_, want_W, _) = run_both(W0, S, y, 10, weight_decay=0.1)
    assert_rows_close(W, want_W)
    assert np.linalg.norm(W) < np.linalg.norm(W0)


def test_one_sample(rng, algo):
    W0, S, y = make_problem(rng, 4, 12, 1)
    (losses, W, V), (want_losses, want_W, _) = run_both(W0, S, y, 15)
    np.testing.assert_allclose(losses, want_losses, atol=2e-5)
    assert_rows_close(W, want_W)


def test_fewer_samples_than_classes_and_unimprinted_zero_rows(rng, algo):
    # Classes 1, 3, 5 have no support sample; class 5 has a zero weight row (imprinted from no sample),
    # whose first gradient is G / eps: it jumps far, then behaves like any other row.
    C, d = 6, 10
    W0 = rng.standard_normal((C, d)).astype(np.float32)
    W0[5] = 0.0
    S = rng.standard_normal((3, d)).astype(np.float32)
    y = np.array([0, 2, 4])
    (losses, W, V), (want_losses, want_W, want_V) = run_both(W0, S, y, 12)
    np.testing.assert_allclose(losses, want_losses, atol=2e-5)
    assert_rows_close(W, want_W)
    assert_rows_close(V, want_V)
    assert np.isfinite(W).all()


@pytest.mark.parametrize("magnitude,support_magnitude", [(1e-20, 1.0), (1e20, 1.0), (1.0, 1e-30), (1.0, 1e30),
                                                         (1e-8, 1e15)])
def test_huge_and_tiny_magnitudes(rng, algo, magnitude, support_magnitude):
    W0, S, y = make_problem(rng, 5, 16, 15, magnitude=magnitude, support_magnitude=support_magnitude)
    (losses, W, V), (want_losses, want_W, want_V) = run_both(W0, S, y, 8)
    assert np.isfinite(losses).all() and np.isfinite(W).all()
    np.testing.assert_allclose(losses, want_losses, atol=2e-5)
    assert_rows_close(W, want_W, rel=5e-5)


def test_rows_just_below_the_norm_clamp(rng, algo):
    # |W_c| = 0.6 eps: W_c / eps has norm 0.6, so using the projected gradient there would be visibly wrong.
    W0, S, y = make_problem(rng, 4, 8, 12)
    W0[1] *= np.float32(6e-13 / np.linalg.norm(W0[1].astype(np.float64)))
    (losses, W, V), (want_losses, want_W, want_V) = run_both(W0, S, y, 1)
    np.testing.assert_allclose(losses, want_losses, atol=2e-5)
    assert_rows_close(W, want_W)
    assert_rows_close(V, want_V)


def test_zero_support_rows_are_handled_like_the_reference(rng, algo):
    W0, S, y = make_problem(rng, 3, 6, 6)
    S[2] = 0.0
    (losses, W, V), (want_losses, want_W, _) = run_both(W0, S, y, 10)
    np.testing.assert_allclose(losses, want_losses, atol=2e-5)
    assert_rows_close(W, want_W)


def test_converts_float64_support_and_int32_labels(rng):
    W0, S, y = make_problem(rng, 3, 8, 9)
    W = W0.copy()
    losses = kernels.adapt_head(W, S.astype(np.float64)[:, ::1], y.astype(np.int32), 5)
    want_losses, want_W, _ = ref.adapt_head(W0, S, y, 5, 0.1, 0.9, 0.0, 10.0)
    np.testing.assert_allclose(losses, want_losses, atol=2e-5)
    assert_rows_close(W, want_W)


# ---------------------------------------------------------------- bad input


def good_args(rng):
    W, S, y = make_problem(rng, 3, 8, 6)
    return dict(weights=W, support=S, labels=y, steps=3)


@pytest.mark.parametrize("change,exc,words", [
    (dict(weights=np.ones((3, 8))), TypeError, ["`weights`", "float32", "float64"]),
    (dict(weights=np.ones((3, 8), np.float32)[:, ::2]), TypeError, ["`weights`", "contiguous"]),
    (dict(weights=np.ones(8, np.float32)), ValueError, ["`weights`", "2-d"]),
    (dict(weights=np.ones((0, 8), np.float32)), ValueError, ["`weights`", "at least one class"]),
    (dict(support=np.ones((6, 7), np.float32)), ValueError, ["`support`", "7"]),
    (dict(support=np.ones(8, np.float32)), ValueError, ["`support`", "2-d"]),
    (dict(support=np.ones((6, 8), np.int64)), TypeError, ["`support`", "floating", "int64"]),
    (dict(labels=np.zeros(5, np.int64)), ValueError, ["`labels`", "5"]),
    (dict(labels=np.array([0, 1, 2, 3, 0, 1])), ValueError, ["`labels`", "value 3"]),
    (dict(labels=np.array([0, 1, -1, 2, 0, 1])), ValueError, ["`labels`", "value -1"]),
    (dict(labels=np.zeros(6, np.float32)), TypeError, ["`labels`", "integer"]),
    (dict(steps=-1), ValueError, ["`steps`", ">= 0", "-1"]),
    (dict(lr=-0.1), ValueError, ["`lr`", ">= 0"]),
    (dict(lr=float("nan")), ValueError, ["`lr`"]),
    (dict(momentum=1.0), ValueError, ["`momentum`", "< 1"]),
    (dict(momentum=-0.1), ValueError, ["`momentum`"]),
    (dict(weight_decay=-1e-4), ValueError, ["`weight_decay`"]),
    (dict(scale=0.0), ValueError, ["`scale`"]),
    (dict(velocity=np.zeros((3, 7), np.float32)), ValueError, ["`velocity`"]),
    (dict(velocity=np.zeros((3, 8))), TypeError, ["`velocity`", "float32"]),
    (dict(support=np.zeros((0, 8), np.float32), labels=np.zeros(0, np.int64)), ValueError,
     ["`support`", "at least one"]),
])
def test_rejects_bad_input(rng, change, exc, words):
    args = good_args(rng)
    args.update(change)
    with pytest.raises(exc) as info:
        kernels.adapt_head(**args)
    for w in words:
        assert w in str(info.value), str(info.value)


@pytest.mark.parametrize("name,where", [("weights", (1, 2)), ("support", (4, 0)), ("velocity", (0, 7))])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_rejects_non_finite(rng, name, where, bad):
    args = good_args(rng)
    args["velocity"] = np.zeros((3, 8), np.float32)
    args[name] = args[name].copy()
    args[name][where] = bad
    W_before = args["weights"].copy()
    with pytest.raises(ValueError) as info:
        kernels.adapt_head(**args)
    assert f"`{name}`" in str(info.value) and "NaN or Inf" in str(info.value)
    np.testing.assert_array_equal(args["weights"], W_before)  # nothing ran


# ---------------------------------------------------------------- property


def step_amplification(W0, S, y, steps, lr, momentum, weight_decay, scale):
    """max over steps and classes of lr/(1-momentum) * |G_c| / |W_c|^2 (G: the gradient w.r.t. the normalised
    row): how far a step could move W_c relative to its norm. The radial part of G cancels in the exact
    gradient but not in its rounding, so float32 results carry about epsilon times this much extra error
    (tiny rows, large learning rates, d = 1 where every gradient is radial)."""
    Sn = ref.normalize_rows(S)
    W = np.array(W0, dtype=np.float64)
    V = np.zeros_like(W)
    worst = 0.0
    for _ in range(steps):
        norms = np.maximum(np.linalg.norm(W, axis=1), ref.EPS)
        logits = scale * Sn @ (W / norms[:, None]).T
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        probs[np.arange(len(y)), y] -= 1.0
        G = scale / len(y) * probs.T @ Sn
        worst = max(worst, float((np.linalg.norm(G, axis=1) / norms**2).max()))
        _, grad = ref.loss_and_grad(W, Sn, y, scale)
        V = momentum * V + grad + weight_decay * W
        W = W - lr * V
    return lr / (1.0 - momentum) * worst


@settings(max_examples=30, deadline=None)
@given(C=st.integers(1, 6), d=st.integers(1, 12), n=st.integers(1, 15), steps=st.integers(0, 12),
       momentum=st.sampled_from([0.0, 0.5, 0.9]), weight_decay=st.sampled_from([0.0, 1e-3, 0.1]),
       lr=st.sampled_from([0.01, 0.1, 0.5]), scale=st.sampled_from([1.0, 10.0]), seed=st.integers(0, 2**31 - 1),
       algo=st.sampled_from(ALGOS))
def test_property_matches_reference(C, d, n, steps, momentum, weight_decay, lr, scale, seed, algo):
    import os
    rng = np.random.default_rng(seed)
    W0, S, y = make_problem(rng, C, d, n)
    old = os.environ.get("METAEDGE_ADAPT_HEAD_ALGO")
    os.environ["METAEDGE_ADAPT_HEAD_ALGO"] = algo
    try:
        (losses, W, V), (want_losses, want_W, want_V) = run_both(W0, S, y, steps, lr=lr, momentum=momentum,
                                                                 weight_decay=weight_decay, scale=scale)
    finally:
        if old is None:
            del os.environ["METAEDGE_ADAPT_HEAD_ALGO"]
        else:
            os.environ["METAEDGE_ADAPT_HEAD_ALGO"] = old
    amplification = max(1.0, step_amplification(W0, S, y, steps, lr, momentum, weight_decay, scale))
    np.testing.assert_allclose(losses, want_losses, atol=3e-5 * amplification)
    assert_rows_close(W, want_W, rel=3e-5 * amplification)
    assert np.all(losses >= 0)


def test_lr_zero_evaluates_the_loss_without_moving_the_weights(rng):
    """lr = 0 is how callers (EdgeClassifier.adapt) measure the loss at given weights with the same kernel."""
    W = rng.standard_normal((4, 16)).astype(np.float32)
    S = rng.standard_normal((12, 16)).astype(np.float32)
    y = np.arange(12) % 4
    before = W.copy()
    losses = kernels.adapt_head(W, S, y, steps=1, lr=0.0, momentum=0.0)
    np.testing.assert_array_equal(W, before)
    want_losses, want_W, _ = ref.adapt_head(before.astype(np.float64), S, y, steps=1, lr=0.0, momentum=0.0,
                                            weight_decay=0.0, scale=10.0)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    np.testing.assert_array_equal(want_W, before)


def test_large_steps_against_tiny_rows_stay_accurate(algo):
    # d = 1: every gradient is radial, so the exact update is zero and only rounding moves W; with steps
    # hundreds of times |W| the span representation degenerates and must hand over to the direct algorithm.
    W0 = np.array([[-0.1421], [0.0487]], np.float32)
    S = np.array([[0.2097]], np.float32)
    y = np.array([0])
    (losses, W, V), (want_losses, want_W, _) = run_both(W0, S, y, 5, lr=0.1, momentum=0.0)
    amplification = step_amplification(W0, S, y, 5, 0.1, 0.0, 0.0, 10.0)
    assert amplification > 100
    np.testing.assert_allclose(losses, want_losses, atol=1e-5)
    assert_rows_close(W, want_W, rel=3e-5 * amplification)
    assert_rows_close(W, W0.astype(np.float64), rel=1e-3)


# ---------------------------------------------------------------- every SIMD variant


def test_baseline_simd_variant_matches_reference():
    """The variant is chosen once per process (METAEDGE_CPU_SIMD caps it), so the baseline build of the
    loops, which this machine would otherwise never run, is checked in a child process."""
    import os
    import subprocess
    import sys
    script = r"""
import os, sys, numpy as np
from metaedge import kernels
from tests.reference import adapt_head as ref
from tests.test_kernels_adapt_head import make_problem
rng = np.random.default_rng(7)
worst = 0.0
for algo in ("direct", "span"):
    os.environ["METAEDGE_ADAPT_HEAD_ALGO"] = algo
    for C, d, n in ((5, 37, 23), (12, 64, 30)):
        W0, S, y = make_problem(rng, C, d, n)
        W = W0.copy()
        losses = kernels.adapt_head(W, S, y, 15, weight_decay=1e-3)
        want_losses, want_W, _ = ref.adapt_head(W0, S, y, 15, 0.1, 0.9, 1e-3, 10.0)
        worst = max(worst, np.abs(losses - want_losses).max(), np.abs(W - want_W).max() / np.abs(want_W).max())
print(worst)
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, METAEDGE_CPU_SIMD="baseline", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip().splitlines()[-1]) < 2e-5
