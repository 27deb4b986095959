"""The compact class matrix on a GPU: encoding identical to the CPU's (the same double maths), exact top-k
(the indices of the CUDA float32 top-k; scores equal to it, which are the GPU's float32 scores), incremental
changes equal to a rebuild, the whole-matrix fallbacks (k > 32, a zero cosine query, overflow), 1M classes.
tools/bench/kernels_gpu.py times it (bandwidth on the compact bytes)."""
import numpy as np
import pytest

from metaedge import cuda, kernels
from tests.reference import compact as ref

pytestmark = pytest.mark.gpu
METRICS = ("cosine", "dot", "euclidean")


def gpu_matrix(rows, metric, **kw):
    return kernels.CompactClassMatrix.from_rows(rows, metric, method="compact", device="cuda", **kw)


def assert_exact_on_gpu(m, queries, rows, k):
    """Against the CUDA float32 top-k of the same queries over all rows (the route the union is scored by)."""
    scores, indices, fp32_rows = m.topk_with_stats(cuda.DeviceArray.from_numpy(queries), k)
    want_s, want_i = kernels.topk(cuda.DeviceArray.from_numpy(queries), cuda.DeviceArray.from_numpy(rows), k,
                                  m.metric)
    np.testing.assert_array_equal(indices.to_numpy(), want_i.to_numpy())
    np.testing.assert_array_equal(scores.to_numpy(), want_s.to_numpy())
    return fp32_rows.to_numpy()


@pytest.mark.parametrize("metric", METRICS)
def test_gpu_encoding_equals_the_cpu_encoding(rng, metric):
    rows = (rng.standard_normal((300, 37)) * rng.uniform(0.01, 100, (300, 1))).astype(np.float32)
    rows[5] = 0
    host = kernels.CompactClassMatrix.from_rows(rows, metric, method="compact")
    dev = gpu_matrix(rows, metric)
    np.testing.assert_array_equal(dev._store.codes.to_numpy(), host._store.codes)
    got, want = dev._store.meta.to_numpy(), host._store.meta
    np.testing.assert_array_equal(got[:, 0], want[:, 0])  # scales
    np.testing.assert_allclose(got[:, 1:], want[:, 1:], rtol=2e-7)
    unpacked = ref.unpack_codes(dev._store.codes.to_numpy(), got, 300, 37)
    assert np.all(unpacked["err"] >= ref.quantise(rows, metric)["err"])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("b,c,d,k", [(1, 1, 1, 1), (1, 5000, 512, 5), (3, 20000, 128, 10), (8, 3000, 64, 5),
                                     (32, 10000, 96, 5), (40, 700, 33, 32), (2, 100, 16, 33)])
def test_gpu_topk_is_exact(rng, metric, b, c, d, k):
    rows = rng.standard_normal((c, d)).astype(np.float32)
    queries = rng.standard_normal((b, d)).astype(np.float32)
    fp32_rows = assert_exact_on_gpu(gpu_matrix(rows, metric), queries, rows, k)
    if k > 32:
        assert np.all(fp32_rows == c)  # beyond the fused selection: the whole matrix, exactly


@pytest.mark.parametrize("metric", METRICS)
def test_gpu_near_ties_duplicates_and_zero_rows(rng, metric):
    base = rng.standard_normal((1, 256)).astype(np.float32)
    rows = np.concatenate([rng.standard_normal((5000, 256)), base + 1e-5 * rng.standard_normal((50, 256)),
                           np.repeat(base, 4, axis=0), np.zeros((3, 256))]).astype(np.float32)
    rows = rows[rng.permutation(len(rows))]
    queries = np.concatenate([base, base + 1e-3 * rng.standard_normal((2, 256))]).astype(np.float32)
    assert_exact_on_gpu(gpu_matrix(rows, metric), queries, rows, 20)


def test_gpu_prunes_and_falls_back_where_it_must(rng):
    rows = rng.standard_normal((50000, 128)).astype(np.float32)
    m = gpu_matrix(rows, "cosine")
    fp32_rows = assert_exact_on_gpu(m, rng.standard_normal((1, 128)).astype(np.float32), rows, 5)
    assert fp32_rows[0] < 50000 / 50
    assert assert_exact_on_gpu(m, np.zeros((1, 128), np.float32), rows, 5)[0] == 50000  # zero query: all tie
    big = rows.copy()
    big[77] = 1e30
    with pytest.raises(ValueError, match="not representable in float32"):
        gpu_matrix(big, "dot").topk(np.full((1, 128), 1e20, np.float32), 3)
    q = rng.standard_normal((2, 128)).astype(np.float32)
    q[1, 5] = np.nan
    with pytest.raises(ValueError, match="queries.*finite"):
        m.topk(cuda.DeviceArray.from_numpy(q), 3)


@pytest.mark.parametrize("metric", METRICS)
def test_gpu_changes_equal_a_rebuild(rng, metric):
    d = 48
    m = kernels.CompactClassMatrix(d, metric, method="compact", device="cuda")
    mirror = np.zeros((0, d), np.float32)
    for step in range(60):
        op = rng.choice(["add", "replace", "remove"], p=[0.5, 0.25, 0.25])
        if op == "add" or len(mirror) < 3:
            rows = rng.standard_normal((int(rng.integers(1, 30)), d)).astype(np.float32)
            m.add(rows)
            mirror = np.concatenate([mirror, rows])
        elif op == "replace":
            idx = rng.choice(len(mirror), size=2, replace=False)
            rows = rng.standard_normal((2, d)).astype(np.float32)
            m.replace(idx, rows)
            mirror[idx] = rows
        else:
            i = int(rng.integers(len(mirror)))
            m.remove(i)
            mirror[i] = mirror[-1]
            mirror = mirror[:-1]
    rebuilt = kernels.CompactClassMatrix.from_rows(mirror, metric, method="compact")
    used = (len(mirror) + 15) // 16
    np.testing.assert_array_equal(m.rows.to_numpy(), mirror)
    np.testing.assert_array_equal(m._store.codes.to_numpy()[:used], rebuilt._store.codes[:used])
    assert np.all(m._store.codes.to_numpy()[used:] == 128)
    assert_exact_on_gpu(m, rng.standard_normal((4, d)).astype(np.float32), mirror, 5)
    # numpy queries come back as numpy
    s, i = m.topk(rng.standard_normal(d).astype(np.float32), 3)
    assert isinstance(s, np.ndarray) and s.shape == (3,)


def test_gpu_a_million_classes(rng):
    """1M x 512 on the device, added in blocks: exact against the CUDA float32 top-k (tools/bench/kernels_gpu.py
    times it and reports the bandwidth on the compact bytes)."""
    C, d = 1_000_000, 512
    m = kernels.CompactClassMatrix(d, "dot", method="compact", device="cuda", capacity=C)
    for start in range(0, C, 100_000):
        m.add(rng.standard_normal((100_000, d)).astype(np.float32))
    q = rng.standard_normal((3, d)).astype(np.float32)
    s, i, fp32_rows = m.topk_with_stats(cuda.DeviceArray.from_numpy(q), 5)
    want_s, want_i = kernels.topk(cuda.DeviceArray.from_numpy(q), m.rows, 5, "dot")
    np.testing.assert_array_equal(i.to_numpy(), want_i.to_numpy())
    assert np.all(fp32_rows.to_numpy() < C / 100)
