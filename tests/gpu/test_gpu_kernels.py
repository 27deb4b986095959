"""Every CUDA kernel vs the float64 references in tests/reference and vs the CPU kernel, on seeded random
inputs and edge cases. Outputs are poisoned (NaN / a sentinel) before the native call so unwritten elements
fail. top-k results are compared by scores (indices only where ties are exact by construction).

Tolerances (float32 accumulation over d terms, float64 references):
  l2_normalize, prototypes  rtol 1e-6 (sums in double, one final rounding)
  topk                      scores within 1e-5 x the score scale (|q||p| for dot, |q|^2 + |p|^2 for euclidean,
                            1 for cosine). float16 protos/queries: the same, because the references run on the
                            float16 values upcast exactly, and the kernel converts exactly and accumulates in
                            float32.
  adapt_head                losses rtol 2e-4, weights atol 2e-4 x max|W| after 25 steps (float32 drift)
  preprocess                atol 2e-5 (outputs are O(1/std))
"""
import numpy as np
import pytest

from metaedge import kernels
from metaedge._native import native
from metaedge.cuda import DeviceArray
from tests.reference import prototypes as ref_protos

pytestmark = pytest.mark.gpu


def poisoned(shape, dtype):
    dtype = np.dtype(dtype)
    fill = np.nan if dtype.kind == "f" else np.iinfo(dtype).min
    return DeviceArray.from_numpy(np.full(shape, fill, dtype))


@pytest.fixture
def ref_topk():
    return pytest.importorskip("tests.reference.topk", reason="tests/reference/topk.py (CPU topk branch) not merged")


@pytest.fixture
def ref_adapt():
    return pytest.importorskip("tests.reference.adapt_head",
                               reason="tests/reference/adapt_head.py (CPU adapt branch) not merged")


@pytest.fixture
def ref_pre():
    return pytest.importorskip("tests.reference.preprocess",
                               reason="tests/reference/preprocess.py (CPU adapt branch) not merged")


# ---- l2_normalize ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,d", [(1, 1), (1, 64), (37, 512), (1000, 3), (5, 1000)])
def test_l2_normalize_matches_reference_and_cpu(rng, gpu, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    out = poisoned((n, d), np.float32)
    native().l2_normalize(gpu(x), out, 1e-12)
    got = out.to_numpy()
    np.testing.assert_allclose(got, ref_protos.l2_normalize(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, kernels.l2_normalize(x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("magnitude", [1e-30, 1e-20, 1e20, 1e30])
def test_l2_normalize_huge_and_tiny_rows(rng, gpu, magnitude):
    x = (rng.standard_normal((5, 64)) * magnitude).astype(np.float32)
    got = kernels.l2_normalize(gpu(x), eps=1e-37).to_numpy()
    np.testing.assert_allclose(np.linalg.norm(got.astype(np.float64), axis=1), 1.0, rtol=1e-6)


def test_l2_normalize_edge_rows(gpu):
    x = np.zeros((3, 4), np.float32)
    x[1] = 1e-14  # below eps: divided by eps
    x[2, 0] = np.float32(1e-45)  # a denormal row must not flush to zero (no fast-math)
    got = kernels.l2_normalize(gpu(x), eps=1e-12).to_numpy()
    np.testing.assert_array_equal(got[0], 0)
    np.testing.assert_allclose(got, ref_protos.l2_normalize(x, eps=1e-12), rtol=1e-6)
    assert kernels.l2_normalize(gpu(np.zeros((0, 8), np.float32))).shape == (0, 8)


def test_l2_normalize_rejects_nan_with_its_index(gpu):
    x = np.ones((4, 4), np.float32)
    x[2, 1] = np.nan
    x[3, 0] = np.inf
    with pytest.raises(ValueError, match=r"`x`.*NaN or Inf at flat index 9 "):
        kernels.l2_normalize(gpu(x))


# ---- class_prototypes / update_prototypes ----------------------------------------------------------------

@pytest.mark.parametrize("n,d,c", [(1, 8, 1), (50, 64, 7), (200, 512, 40), (3000, 16, 1000), (10, 4, 50)])
def test_class_prototypes_matches_reference_and_cpu(rng, gpu, n, d, c):
    emb = rng.standard_normal((n, d)).astype(np.float32)
    labels = rng.integers(0, c, n)
    protos, counts = poisoned((c, d), np.float32), poisoned((c,), np.int64)
    native().class_prototypes(gpu(emb), gpu(labels), c, protos, counts)
    want_p, want_c = ref_protos.class_prototypes(emb, labels, c)
    np.testing.assert_array_equal(counts.to_numpy(), want_c)
    np.testing.assert_allclose(protos.to_numpy(), want_p, rtol=1e-6, atol=1e-7)
    cpu_p, cpu_c = kernels.class_prototypes(emb, labels, c)
    np.testing.assert_allclose(protos.to_numpy(), cpu_p, rtol=1e-6, atol=1e-7)


def test_class_prototypes_empty_input_and_empty_classes(rng, gpu):
    protos, counts = kernels.class_prototypes(gpu(np.zeros((0, 5), np.float32)), gpu(np.zeros(0, np.int64)), 3)
    assert protos.to_numpy().tolist() == [[0.0] * 5] * 3 and counts.to_numpy().tolist() == [0, 0, 0]
    emb = rng.standard_normal((4, 3)).astype(np.float32)
    protos, counts = kernels.class_prototypes(gpu(emb), gpu(np.array([0, 0, 2, 2])), 3)
    assert counts.to_numpy().tolist() == [2, 0, 2] and np.all(protos.to_numpy()[1] == 0)


@pytest.mark.parametrize("labels,index", [([0, 3], 1), ([-1, 0], 0), ([0, 1, 2, 9, -4], 3)])
def test_class_prototypes_rejects_out_of_range_labels(gpu, labels, index):
    emb = np.ones((len(labels), 2), np.float32)
    with pytest.raises(ValueError, match=rf"`labels`.*\[0, 3\).*index {index}"):
        kernels.class_prototypes(gpu(emb), gpu(np.array(labels, np.int64)), 3)


@pytest.mark.parametrize("m,c", [(1, 1), (30, 5), (500, 100), (64, 1)])
def test_update_prototypes_matches_reference_and_cpu(rng, gpu, m, c):
    d = 33
    protos = rng.standard_normal((c, d)).astype(np.float32)
    counts = rng.integers(0, 5, c).astype(np.int64)
    emb = rng.standard_normal((m, d)).astype(np.float32)
    labels = rng.integers(0, c, m)
    want_p, want_c = ref_protos.update_prototypes(protos, counts, emb, labels)
    dp, dc = gpu(protos), gpu(counts)
    kernels.update_prototypes(dp, dc, gpu(emb), gpu(labels))
    np.testing.assert_array_equal(dc.to_numpy(), want_c)
    np.testing.assert_allclose(dp.to_numpy(), want_p, rtol=1e-6, atol=1e-6)
    cp, cc = protos.copy(), counts.copy()
    kernels.update_prototypes(cp, cc, emb, labels)
    np.testing.assert_allclose(dp.to_numpy(), cp, rtol=1e-6, atol=1e-6)


def test_update_prototypes_rejects_negative_counts(gpu):
    with pytest.raises(ValueError, match=r"`counts`.*index 1"):
        kernels.update_prototypes(gpu(np.zeros((2, 3), np.float32)), gpu(np.array([0, -1])),
                                  gpu(np.ones((1, 3), np.float32)), gpu(np.array([0])))


# ---- topk ------------------------------------------------------------------------------------------------

def _scale(metric, q, p):
    if metric == "cosine":
        return 1.0
    qn, pn = np.linalg.norm(q, axis=1).max(), np.linalg.norm(p, axis=1).max()
    return max(1.0, qn * pn) if metric == "dot" else max(1.0, qn * qn + pn * pn)


def _check_topk(ref_topk, q, p, k, metric, scores, indices):
    q64, p64 = q.astype(np.float64), p.astype(np.float64)
    want_s, _, full = ref_topk.topk(q64, p64, k, metric)
    tol = 1e-5 * _scale(metric, q64, p64)
    assert np.isfinite(scores).all() and (indices >= 0).all() and (indices < len(p)).all()
    np.testing.assert_allclose(scores, want_s, rtol=0, atol=tol)
    # The scores returned belong to the classes returned, every class appears once, order is descending.
    np.testing.assert_allclose(scores, np.take_along_axis(full, indices, axis=1), rtol=0, atol=tol)
    assert all(len(set(row)) == k for row in indices.tolist())
    assert (np.diff(scores, axis=1) <= 0).all()
    # And the CPU kernel agrees (it computes in float32 too, with the same score formulas).
    cpu_s, _ = kernels.topk(q.astype(np.float32), p.astype(np.float32), k, metric)
    np.testing.assert_allclose(scores, cpu_s, rtol=0, atol=tol)


# (b, C, d, k): b=1 -> rows kernel, 1 query per block; b<=8 -> rows, 4 queries; b>=9 & k<=32 & d%8==0 -> tiled;
# 32<k<=256 -> rows with longer lists; k>256 -> materialised + radix sort; d*elem % 16 != 0 -> scalar loads.
TOPK_CASES = [
    (1, 1, 8, 1), (1, 1000, 128, 5), (1, 5000, 512, 10), (3, 777, 64, 5), (8, 2048, 96, 32),
    (9, 300, 64, 3), (64, 1000, 128, 5), (100, 2049, 64, 32), (130, 513, 8, 1),
    (20, 3000, 64, 40), (5, 2000, 128, 100), (2, 1500, 32, 256),
    (5, 300, 16, 257), (3, 300, 16, 300), (2, 5000, 64, 1000),
    (4, 500, 3, 7), (64, 700, 37, 9), (1, 100000, 20, 16),
]


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
@pytest.mark.parametrize("b,C,d,k", TOPK_CASES)
def test_topk_float32_matches_reference(rng, gpu, ref_topk, metric, b, C, d, k):
    q = rng.standard_normal((b, d)).astype(np.float32)
    p = rng.standard_normal((C, d)).astype(np.float32)
    scores, indices = poisoned((b, k), np.float32), poisoned((b, k), np.int64)
    native().topk(gpu(q), gpu(p), k, metric, scores, indices)
    _check_topk(ref_topk, q, p, k, metric, scores.to_numpy(), indices.to_numpy())


@pytest.mark.parametrize("qdtype", [np.float32, np.float16])
@pytest.mark.parametrize("b,C,d,k", [(1, 3000, 512, 5), (4, 1000, 64, 8), (64, 2000, 128, 10), (16, 600, 24, 300),
                                     (2, 500, 12, 3)])
def test_topk_float16_protos_and_queries(rng, gpu, ref_topk, qdtype, b, C, d, k):
    q = rng.standard_normal((b, d)).astype(qdtype)
    p = rng.standard_normal((C, d)).astype(np.float16)
    for metric in ("cosine", "dot", "euclidean"):
        scores, indices = poisoned((b, k), np.float32), poisoned((b, k), np.int64)
        native().topk(gpu(q), gpu(p), k, metric, scores, indices)
        _check_topk(ref_topk, q.astype(np.float32), p.astype(np.float32), k, metric, scores.to_numpy(),
                    indices.to_numpy())


@pytest.mark.parametrize("b,C,d,k", [(1, 4000, 64, 6), (3, 4000, 64, 6), (64, 4000, 64, 6), (20, 4000, 64, 64),
                                     (2, 600, 64, 300)])
def test_topk_exact_ties_go_to_the_lower_index(rng, gpu, b, C, d, k):
    # Duplicate rows give bit-identical scores on every path, so the order of their indices is exact.
    p = rng.standard_normal((C, d)).astype(np.float32) * 0.01
    q = rng.standard_normal((b, d)).astype(np.float32)
    best = q[0].copy()  # the best class of query 0 under every metric
    dup_at = [3, 1500 % C, C - 1, 777 % C]
    for i in dup_at:
        p[i] = best
    for metric in ("cosine", "dot", "euclidean"):
        _, idx = kernels.topk(gpu(q), gpu(p), k, metric)
        assert idx.to_numpy()[0, :4].tolist() == sorted(dup_at), metric
    zero = np.zeros((C, d), np.float32)  # all scores equal: indices 0..k-1 in order
    for metric in ("cosine", "dot", "euclidean"):
        s, idx = kernels.topk(gpu(q), gpu(zero), k, metric)
        assert (idx.to_numpy() == np.arange(k)).all(), metric


def test_topk_k_equals_c_returns_every_class_sorted(rng, gpu, ref_topk):
    q = rng.standard_normal((3, 16)).astype(np.float32)
    for C in (1, 7, 256, 400):
        p = rng.standard_normal((C, 16)).astype(np.float32)
        s, idx = kernels.topk(gpu(q), gpu(p), C, "dot")
        assert sorted(idx.to_numpy()[0].tolist()) == list(range(C))
        _check_topk(ref_topk, q, p, C, "dot", s.to_numpy(), idx.to_numpy())


def test_topk_unaligned_protos_pointer_uses_the_scalar_path(rng, gpu, ref_topk):
    # d * 4 is a multiple of 16, but the data starts 4 bytes into an allocation: no 16-byte loads allowed.
    C, d = 400, 8
    flat = rng.standard_normal(1 + C * d).astype(np.float32)
    dev = gpu(flat)
    p_view = DeviceArray(buffer=dev._buffer, offset=4, shape=(C, d), dtype=np.float32, device=dev.device_index,
                         stream=dev.stream)
    assert p_view.ptr % 16 == 4
    for b in (1, 3, 64):
        q = rng.standard_normal((b, d)).astype(np.float32)
        s, idx = kernels.topk(gpu(q), p_view, 4, "cosine")
        _check_topk(ref_topk, q, flat[1:].reshape(C, d), 4, "cosine", s.to_numpy(), idx.to_numpy())


def test_topk_zero_dim_embeddings(gpu):
    s, idx = kernels.topk(gpu(np.zeros((2, 0), np.float32)), gpu(np.zeros((10, 0), np.float32)), 3, "cosine")
    assert (s.to_numpy() == 0).all() and (idx.to_numpy() == np.arange(3)).all()


def test_topk_one_dimensional_query_on_the_gpu(rng, gpu):
    q = rng.standard_normal(32).astype(np.float32)
    p = rng.standard_normal((50, 32)).astype(np.float32)
    s, idx = kernels.topk(gpu(q), gpu(p), 3, "dot")
    assert s.shape == (3,) and idx.shape == (3,)
    np.testing.assert_array_equal(idx.to_numpy(), np.argsort(-(p.astype(np.float64) @ q))[:3])


@pytest.mark.parametrize("b,k,dtype", [(1, 5, np.float32), (64, 5, np.float32), (3, 300, np.float32),
                                       (1, 5, np.float16), (64, 5, np.float16)])
def test_topk_rejects_non_finite_protos_naming_the_first(gpu, rng, b, k, dtype):
    p = rng.standard_normal((1000, 64)).astype(dtype)
    p[700, 5] = np.inf
    p[321, 63] = np.nan
    q = rng.standard_normal((b, 64)).astype(np.float32)
    with pytest.raises(ValueError, match=rf"`protos`.*NaN or Inf in row 321 \(flat index {321 * 64 + 63}\)"):
        kernels.topk(gpu(q), gpu(p), k)


@pytest.mark.parametrize("b,k", [(1, 3), (64, 3), (2, 300)])
def test_topk_overflowing_scores_name_the_query_and_class(gpu, b, k):
    p = np.ones((400, 16), np.float32)
    p[5] = 1e30  # finite, but its dot product with these queries is not
    q = np.full((b, 16), 1e10, np.float32)
    for metric in ("dot", "euclidean"):
        with pytest.raises(ValueError, match=r"dot|euclidean") as info:
            kernels.topk(gpu(q), gpu(p), k, metric)
        assert "`queries` row 0 against `protos` row 5 is not representable in float32" in str(info.value)


@pytest.mark.parametrize("magnitude", [1e-25, 1e-15, 1e25, 1e35])
def test_topk_cosine_of_tiny_and_huge_rows_is_exact(rng, gpu, ref_topk, magnitude):
    # |p|^2 underflows or overflows float32 here: the kernels recompute 1/|p| in double, like the CPU kernel.
    p = rng.standard_normal((300, 32)).astype(np.float32)
    p[::3] *= np.float32(magnitude)
    p[7] = 0  # a zero row scores 0
    for b in (1, 3, 64):
        q = rng.standard_normal((b, 32)).astype(np.float32) * np.float32(magnitude)
        s, idx = kernels.topk(gpu(q), gpu(p), 5, "cosine")
        _check_topk(ref_topk, q, p, 5, "cosine", s.to_numpy(), idx.to_numpy())


def test_topk_rejects_non_finite_queries(gpu):
    q = np.ones((2, 4), np.float32)
    q[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"`queries`.*flat index 6"):
        kernels.topk(gpu(q), gpu(np.ones((5, 4), np.float32)), 1)


def test_topk_bad_arguments_name_the_argument(gpu):
    q, p = gpu(np.ones((2, 4), np.float32)), gpu(np.ones((5, 4), np.float32))
    with pytest.raises(ValueError, match="`k`"):
        kernels.topk(q, p, 6)
    with pytest.raises(ValueError, match="`protos`"):
        kernels.topk(q, gpu(np.ones((5, 3), np.float32)), 1)
    with pytest.raises(ValueError, match="host array"):
        kernels.topk(np.ones((2, 4), np.float32), p, 1)


def test_topk_matches_the_cpu_kernel_at_a_million_classes(rng, gpu):
    C, d = 1_000_000, 64
    p = rng.standard_normal((C, d), dtype=np.float32)
    q = rng.standard_normal((2, d), dtype=np.float32)
    for b in (1, 2):
        s, idx = kernels.topk(gpu(q[:b]), gpu(p), 10, "cosine")
        cpu_s, _ = kernels.topk(q[:b], p, 10, "cosine")
        np.testing.assert_allclose(s.to_numpy(), cpu_s, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_topk_index_arithmetic_past_2_31_elements(torch_cuda):
    torch = torch_cuda
    d = 512
    C = (1 << 31) // d + 5  # C * d > 2^31 elements
    if torch.cuda.mem_get_info()[0] < C * d * 2 + (2 << 30):
        pytest.skip("not enough free GPU memory for a 4 GiB prototype matrix")
    gen = torch.Generator(device="cuda").manual_seed(7)
    p = torch.randn((C, d), generator=gen, device="cuda", dtype=torch.float16).mul_(0.01)
    q = torch.randn((1, d), generator=gen, device="cuda")
    p[C - 2] = q[0].half()  # the clear winner sits past element 2^31
    s, idx = kernels.topk(q, p, 3, "cosine")
    assert idx.to_numpy()[0, 0] == C - 2
    assert s.to_numpy()[0, 0] > 0.99
    p[C - 1, 7] = float("nan")
    with pytest.raises(ValueError, match=rf"flat index {(C - 1) * d + 7}\)"):
        kernels.topk(q, p, 3, "cosine")
    del p
    torch.cuda.empty_cache()


# ---- adapt_head ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("C,n,d,wd", [(5, 25, 64, 0.0), (20, 100, 512, 1e-3), (3, 2, 8, 0.0), (64, 500, 128, 5e-4)])
def test_adapt_head_matches_reference_and_cpu(rng, gpu, ref_adapt, C, n, d, wd):
    W = rng.standard_normal((C, d)).astype(np.float32)
    S = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.integers(0, C, n)
    steps, lr, momentum, scale = 25, 0.1, 0.9, 10.0
    want_losses, want_W, want_V = ref_adapt.adapt_head(W, S, y, steps, lr, momentum, wd, scale)
    dW, dV = gpu(W), DeviceArray.zeros((C, d), np.float32)
    losses = poisoned((steps,), np.float32)
    native().adapt_head(dW, dV, gpu(S), gpu(y), steps, lr, momentum, wd, scale, losses)
    np.testing.assert_allclose(losses.to_numpy(), want_losses, rtol=2e-4, atol=1e-6)
    wscale = np.abs(want_W).max()
    np.testing.assert_allclose(dW.to_numpy(), want_W, rtol=0, atol=2e-4 * wscale)
    np.testing.assert_allclose(dV.to_numpy(), want_V, rtol=0, atol=2e-4 * max(1.0, np.abs(want_V).max()))
    cpu_W = W.copy()
    cpu_losses = kernels.adapt_head(cpu_W, S, y, steps, lr, momentum, wd, scale)
    np.testing.assert_allclose(losses.to_numpy(), cpu_losses, rtol=2e-4, atol=1e-6)


def test_adapt_head_continues_exactly_with_the_same_velocity(rng, gpu):
    W = rng.standard_normal((6, 32)).astype(np.float32)
    S = rng.standard_normal((18, 32)).astype(np.float32)
    y = gpu(rng.integers(0, 6, 18))
    a, b = gpu(W), gpu(W)
    va, vb = DeviceArray.zeros((6, 32)), DeviceArray.zeros((6, 32))
    la = kernels.adapt_head(a, gpu(S), y, steps=10, velocity=va).to_numpy()
    lb = np.concatenate([kernels.adapt_head(b, gpu(S), y, steps=4, velocity=vb).to_numpy(),
                         kernels.adapt_head(b, gpu(S), y, steps=6, velocity=vb).to_numpy()])
    np.testing.assert_allclose(la, lb, rtol=1e-6)  # only the restart's norm recomputation may round differently
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-6, atol=1e-7)


def test_adapt_head_zero_weight_row_and_zero_steps(rng, gpu, ref_adapt):
    W = rng.standard_normal((4, 16)).astype(np.float32)
    W[2] = 0  # clamped normalisation: W/eps
    S = rng.standard_normal((12, 16)).astype(np.float32)
    y = rng.integers(0, 4, 12)
    want_losses, want_W, _ = ref_adapt.adapt_head(W, S, y, 5, 0.01, 0.5, 0.0, 5.0)
    dW = gpu(W)
    losses = kernels.adapt_head(dW, gpu(S), gpu(y), steps=5, lr=0.01, momentum=0.5, scale=5.0)
    np.testing.assert_allclose(losses.to_numpy(), want_losses, rtol=2e-4)
    np.testing.assert_allclose(dW.to_numpy(), want_W, rtol=0, atol=2e-4 * np.abs(want_W).max())
    assert kernels.adapt_head(dW, gpu(S), gpu(y), steps=0).shape == (0,)


def test_adapt_head_is_deterministic(rng, gpu):
    W = rng.standard_normal((10, 64)).astype(np.float32)
    S, y = gpu(rng.standard_normal((40, 64)).astype(np.float32)), gpu(rng.integers(0, 10, 40))
    runs = []
    for _ in range(2):
        w = gpu(W)
        runs.append((kernels.adapt_head(w, S, y, steps=15).to_numpy(), w.to_numpy()))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


# ---- preprocess ------------------------------------------------------------------------------------------

PRE_CASES = [  # (b, h, w, c, H, W, color, invert)
    (1, 105, 105, 1, 84, 84, "keep", True), (2, 480, 640, 3, 224, 224, "keep", False),
    (3, 50, 70, 3, 64, 32, "gray", False), (1, 20, 30, 4, 40, 60, "keep", False), (2, 9, 9, 4, 3, 5, "gray", True),
    (1, 28, 28, 1, 56, 56, "rgb", False), (1, 1, 1, 3, 4, 4, "keep", False), (4, 33, 17, 1, 33, 17, "keep", False),
]


@pytest.mark.parametrize("b,h,w,c,H,W,color,invert", PRE_CASES)
def test_preprocess_matches_reference_and_cpu(rng, gpu, ref_pre, b, h, w, c, H, W, color, invert):
    images = rng.integers(0, 256, (b, h, w, c), dtype=np.uint8)
    oc = 1 if color == "gray" or (color == "keep" and c == 1) else 3
    mean = [0.485, 0.456, 0.406][:oc] if oc == 3 else [0.5]
    std = [0.229, 0.224, 0.225][:oc] if oc == 3 else [0.25]
    out = poisoned((b, oc, H, W), np.float32)
    native().preprocess(gpu(images), "auto", None, H, W, color, mean, std, invert, "squeeze", False, 0.0, "bt601", out)
    got = out.to_numpy()
    want = ref_pre.preprocess(images, (H, W), mean=mean, std=std, color=color, invert=invert)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    cpu = kernels.preprocess(images, (H, W), mean=mean, std=std, color=color, invert=invert)
    np.testing.assert_allclose(got, cpu, rtol=0, atol=2e-5)


def test_preprocess_single_images_on_the_gpu(rng, gpu):
    img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out = kernels.preprocess(gpu(img), (16, 16))
    assert out.shape == (3, 16, 16)
    gray = kernels.preprocess(gpu(img[:, :, 0].copy()), (8, 8))
    assert gray.shape == (1, 8, 8)
    np.testing.assert_allclose(out.to_numpy(), kernels.preprocess(img, (16, 16)), atol=2e-5)


def test_preprocess_identity_size_is_exact(rng, gpu):
    images = rng.integers(0, 256, (2, 12, 10, 3), dtype=np.uint8)
    got = kernels.preprocess(gpu(images), (12, 10)).to_numpy()
    np.testing.assert_allclose(got, images.transpose(0, 3, 1, 2) / 255.0, rtol=0, atol=1e-6)


# Camera frames: every pixel format, resize mode and the box prefilter, whole frames and boxes, padded rows.
FRAME_FORMATS = ("gray", "rgb", "bgr", "rgba", "bgra", "nv12", "yuyv")


@pytest.mark.parametrize("fmt", FRAME_FORMATS)
@pytest.mark.parametrize("resize", ["squeeze", "letterbox", "center_crop"])
@pytest.mark.parametrize("antialias", [False, True])
def test_preprocess_frames_match_reference_and_cpu(rng, gpu, ref_pre, fmt, resize, antialias):
    from tests.test_kernels_frames import random_frame
    frame = random_frame(rng, fmt, 120, 160)
    for size, rois in [((56, 56), None), ((12, 12), None), ((24, 18), [(0, 0, 160, 120), (7, 9, 101, 77),
                                                                      (120, 80, 40, 40)])]:
        kwargs = dict(pixel_format=fmt, resize=resize, antialias=antialias, pad=50, rois=rois, mean=0.5, std=0.25)
        got = kernels.preprocess(gpu(frame), size, **kwargs).to_numpy()
        want = ref_pre.preprocess(frame, size, **kwargs)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=4e-5)
        np.testing.assert_allclose(got, kernels.preprocess(frame, size, **kwargs), rtol=1e-5, atol=4e-5)


def test_preprocess_frames_with_padded_rows_on_the_gpu(rng, gpu):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    padded = torch.randint(0, 256, (72, 160), dtype=torch.uint8, device="cuda")[:, :128]  # nv12, pitch 160
    got = kernels.preprocess(padded, (16, 16), pixel_format="nv12", antialias=True).to_numpy()
    want = kernels.preprocess(padded.cpu().numpy(), (16, 16), pixel_format="nv12", antialias=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=4e-5)
