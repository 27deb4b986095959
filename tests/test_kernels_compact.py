"""The compact class matrix: its encoding against the float64 reference (tests/reference/compact.py), its top-k
against kernels.topk (bit for bit: the candidates are re-scored by topk itself) and the float64 reference, and
its incremental changes against a rebuild from scratch.

Exactness is the claim under test: every case compares scores and indices with np.array_equal, never a
tolerance, on seeded random data, near-ties built to defeat the first pass, duplicate and all-zero rows, tiny and
huge magnitudes, and long random sequences of add / replace / remove.
"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from metaedge import compact, kernels
from metaedge._native import native
from tests.reference import compact as ref

METRICS = ("cosine", "dot", "euclidean")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def per_query_topk(queries, rows, k, metric):
    """What the compact path promises: kernels.topk of each query on its own."""
    out = [kernels.topk(q[None], rows, k, metric) for q in np.asarray(queries, np.float32)]
    return np.concatenate([s for s, _ in out]), np.concatenate([i for _, i in out])


def assert_exact(matrix, queries, rows, k):
    scores, indices, fp32_rows = matrix.topk_with_stats(queries, k)
    want_s, want_i = per_query_topk(queries, rows, k, matrix.metric)
    np.testing.assert_array_equal(scores, want_s)
    np.testing.assert_array_equal(indices, want_i)
    assert fp32_rows.dtype == np.int64 and np.all((fp32_rows >= k) & (fp32_rows <= len(rows)))
    return fp32_rows


def compact_matrix(rows, metric, **kw):
    return kernels.CompactClassMatrix.from_rows(rows, metric, method="compact", **kw)


# ---------------------------------------------------------------------------------------------- encoding
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("c,d", [(1, 1), (5, 3), (16, 4), (37, 33), (200, 64), (50, 512)])
@pytest.mark.parametrize("centered", [False, True], ids=["no-center", "center"])
def test_encoding_matches_the_reference_and_the_layout(rng, metric, c, d, centered):
    rows = (rng.standard_normal((c, d)) * rng.uniform(0.01, 100, (c, 1))).astype(np.float32)
    rows[0] = 0.0 if c > 2 else rows[0]  # an all-zero row (with no center: encodes as an empty slot)
    center = (0.3 * rng.standard_normal(d)).astype(np.float32) if centered else np.zeros(d, np.float32)
    m = compact_matrix(rows, metric, capacity=c + 20, center=center)
    np.testing.assert_array_equal(m.center, center)
    got = ref.unpack_codes(m._store.codes, m._store.meta, c, d)
    want = ref.quantise(rows, metric, center=center)
    np.testing.assert_array_equal(got["codes"], want["codes"])
    assert np.all(got["padding"] == 0) and np.all(got["empty_codes"] == 0) and np.all(got["empty_terms"] == 0)
    np.testing.assert_array_equal(got["scale"], want["scale"])
    # error and code norms are rounded up (a bound must not shrink), by at most a few float32 ulps
    for name in ("err", "code_norm"):
        assert np.all(got[name] >= want[name]), name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(got["norm"], want["norm"], rtol=1e-6)
    assert np.all(np.abs(got["codes"]) <= 127)


def test_encoding_keeps_tiny_and_huge_cosine_rows_exact(rng):
    rows = rng.standard_normal((6, 40)).astype(np.float32)
    rows[1] *= 1e-30
    rows[2] *= 1e30
    rows[3] = 0.0
    rows[4, :] = 0.0
    rows[4, 7] = 3e-38
    m = compact_matrix(rows, "cosine")
    got = ref.unpack_codes(m._store.codes, m._store.meta, 6, 40)
    want = ref.quantise(rows, "cosine")
    np.testing.assert_array_equal(got["codes"], want["codes"])
    np.testing.assert_allclose(got["norm"], [1, 1, 1, 0, 1, 1], rtol=1e-6)


def test_the_bound_holds_in_float64_on_random_and_adversarial_data(rng):
    """The theorem the search rests on, checked in exact arithmetic: every class's true score lies in
    [approx - radius, approx + radius], and the candidates {upper >= L} contain the true top-k, for any center."""
    base = rng.standard_normal((1, 48))
    rows = np.concatenate([rng.standard_normal((300, 48)) + 2, base + 1e-4 * rng.standard_normal((40, 48)),
                           np.repeat(base, 5, axis=0), np.zeros((2, 48))]).astype(np.float32)
    queries = np.concatenate([rng.standard_normal((6, 48)), base, np.zeros((1, 48))]).astype(np.float32)
    for metric in METRICS:
        for qmax, center in ((127, None), (64, None), (127, rows[:100].mean(0)), (127, 5 * rng.standard_normal(48))):
            approx, radius, exact = ref.bounds(queries, rows, metric, qmax, center)
            assert np.all(np.abs(exact - approx) <= radius * (1 + 1e-9) + 1e-9)
            s, i, cands, full = ref.two_pass_topk(queries, rows, 5, metric, qmax, center)
            for row, cand, idx in zip(full, cands, i):
                true_top = np.argsort(-row, kind="stable")[:5]
                assert set(true_top) <= set(cand)
                np.testing.assert_array_equal(row[idx], row[true_top])


def test_encode_checks_its_arguments(rng):
    C = native()
    rows = rng.standard_normal((3, 10)).astype(np.float32)
    codes = np.full((1, 3, 16, 4), 128, np.uint8)
    meta = np.zeros((1, 4, 16), np.float32)
    slots = np.arange(3, dtype=np.int64)
    mu = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="slots"):
        C.compact_encode(rows, np.array([0, 1, 16], np.int64), "dot", mu, codes, meta)
    with pytest.raises(ValueError, match="codes.*ceil"):
        C.compact_encode(rows, slots, "dot", mu, np.full((1, 2, 16, 4), 128, np.uint8), meta)
    with pytest.raises(ValueError, match="meta"):
        C.compact_encode(rows, slots, "dot", mu, codes, np.zeros((2, 4, 16), np.float32))
    with pytest.raises(TypeError, match="codes"):
        C.compact_encode(rows, slots, "dot", mu, codes.astype(np.int32), meta)
    with pytest.raises(ValueError, match="center.*embedding dim"):
        C.compact_encode(rows, slots, "dot", np.zeros(9, np.float32), codes, meta)
    with pytest.raises(ValueError, match="center.*finite"):
        C.compact_encode(rows, slots, "dot", np.full(10, np.inf, np.float32), codes, meta)
    bad = rows.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="rows.*finite"):
        C.compact_encode(bad, slots, "dot", mu, codes, meta)
    with pytest.raises(ValueError, match="metric"):
        C.compact_encode(rows, slots, "hamming", mu, codes, meta)


# ---------------------------------------------------------------------------------------------- search
# Batches of 1..8 share one pass over a group; 9..32 take several; 40 > one query block of 32.
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("b,c,d,k", [
    (1, 1, 1, 1), (1, 17, 3, 4), (2, 300, 64, 5), (3, 1000, 33, 10), (8, 2000, 64, 5), (9, 777, 128, 3),
    (32, 3000, 96, 5), (40, 500, 16, 7), (1, 5000, 512, 5), (5, 64, 8, 64),
])
def test_topk_is_exactly_the_float32_topk(rng, metric, b, c, d, k):
    rows = rng.standard_normal((c, d)).astype(np.float32)
    queries = rng.standard_normal((b, d)).astype(np.float32)
    assert_exact(compact_matrix(rows, metric), queries, rows, k)


@pytest.mark.parametrize("metric", METRICS)
def test_topk_agrees_with_the_float64_two_pass_reference(rng, metric):
    rows = rng.standard_normal((4000, 64)).astype(np.float32)
    queries = rng.standard_normal((4, 64)).astype(np.float32)
    m = compact_matrix(rows, metric)
    assert np.any(m.center != 0)  # 4000 classes: centered on the mean of the first 1,024
    scores, indices, fp32_rows = m.topk_with_stats(queries, 5)
    want_s, want_i, cands, full = ref.two_pass_topk(queries, rows, 5, metric, center=m.center)
    np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-5 * (1 if metric == "cosine" else 64))
    np.testing.assert_allclose(np.take_along_axis(full, indices, 1), want_s, rtol=1e-5,
                               atol=1e-5 * (1 if metric == "cosine" else 64))
    # the kernel's bound is the reference's plus a float32 round-off slack: at least as many candidates
    assert np.all(fp32_rows >= np.array([len(c) for c in cands]) - 2)


def test_the_first_pass_rules_out_almost_every_class(rng):
    """Not a timing: the compact pass is only worth it if few rows need float32. On random data (the hard case
    for a proportional bound: top scores barely above the rest) a few dozen of 20,000 do."""
    rows = rng.standard_normal((20000, 128)).astype(np.float32)
    for metric in METRICS:
        fp32_rows = assert_exact(compact_matrix(rows, metric), rng.standard_normal((16, 128)), rows, 5)
        assert np.median(fp32_rows) < 20000 / 50, (metric, fp32_rows)


@pytest.mark.parametrize("metric", METRICS)
def test_near_ties_that_the_int8_copy_cannot_separate_are_still_exact(rng, metric):
    """Classes closer to each other than the int8 step: all of them survive the first pass and the float32
    re-scoring orders them; perturbations down to float32 resolution, including exact duplicates."""
    base = rng.standard_normal((1, 256)).astype(np.float32)
    for eps in (1e-2, 1e-4, 1e-6, 0.0):
        near = base + eps * rng.standard_normal((60, 256)).astype(np.float32)
        rows = np.concatenate([rng.standard_normal((3000, 256)).astype(np.float32), near,
                               rng.standard_normal((1000, 256)).astype(np.float32)])
        rows = rows[rng.permutation(len(rows))]
        queries = np.concatenate([base, base + 1e-3 * rng.standard_normal((3, 256))]).astype(np.float32)
        for k in (1, 5, 20):
            assert_exact(compact_matrix(rows, metric), queries, rows, k)


@pytest.mark.parametrize("metric", METRICS)
def test_duplicate_rows_tie_to_the_lower_index(rng, metric):
    rows = rng.standard_normal((2000, 64)).astype(np.float32)
    rows[[100, 700, 1500, 1999]] = rows[42]
    queries = rows[[42]] * 1.5
    scores, indices = compact_matrix(rows, metric).topk(queries, 5)
    np.testing.assert_array_equal(indices[0], [42, 100, 700, 1500, 1999])
    assert len(set(scores[0].tolist())) == 1


def test_all_zero_rows_and_a_zero_query_under_cosine(rng):
    rows = rng.standard_normal((3000, 32)).astype(np.float32)
    rows[::7] = 0.0
    m = compact_matrix(rows, "cosine")
    assert_exact(m, rng.standard_normal((3, 32)), rows, 5)
    # a zero query scores every class 0: no class can be ruled out, so the whole matrix is scanned (exactly)
    scores, indices, fp32_rows = m.topk_with_stats(np.zeros((1, 32), np.float32), 4)
    np.testing.assert_array_equal(scores, np.zeros((1, 4), np.float32))
    np.testing.assert_array_equal(indices, [[0, 1, 2, 3]])
    assert fp32_rows[0] == 3000


@pytest.mark.parametrize("metric", ("dot", "euclidean"))
@pytest.mark.parametrize("scale", [1e-15, 1e-6, 1e6, 1e15])
def test_tiny_and_huge_magnitudes(rng, metric, scale):
    rows = (rng.standard_normal((3000, 48)) * scale).astype(np.float32)
    queries = (rng.standard_normal((3, 48)) * scale).astype(np.float32)
    assert_exact(compact_matrix(rows, metric), queries, rows, 5)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_cosine_tiny_and_huge_rows(rng, scale):
    rows = rng.standard_normal((3000, 48)).astype(np.float32)
    rows[::3] *= scale
    assert_exact(compact_matrix(rows, "cosine"), rng.standard_normal((3, 48)) * scale, rows, 5)


@pytest.mark.parametrize("metric", ("dot", "euclidean"))
@pytest.mark.parametrize("sign", [1, -1])
def test_scores_beyond_float32_raise_like_topk(rng, metric, sign):
    """Also when the overflowing class is far from the top (a hugely negative dot score)."""
    rows = rng.standard_normal((2000, 16)).astype(np.float32)
    rows[1234] = sign * 1e30
    queries = np.full((1, 16), 1e20, np.float32)
    with pytest.raises(ValueError) as want:
        kernels.topk(queries, rows, 3, metric)
    with pytest.raises(ValueError) as got:
        compact_matrix(rows, metric).topk(queries, 3)
    assert str(got.value) == str(want.value)


def test_k_equal_to_the_number_of_classes_is_a_full_ranking(rng):
    rows = rng.standard_normal((40, 8)).astype(np.float32)
    for metric in METRICS:
        assert_exact(compact_matrix(rows, metric), rng.standard_normal((3, 8)), rows, 40)


def test_bad_queries_and_k_are_refused(rng):
    rows = rng.standard_normal((100, 8)).astype(np.float32)
    m = compact_matrix(rows, "cosine")
    with pytest.raises(ValueError, match="`k`.*100"):
        m.topk(rng.standard_normal((1, 8)), 101)
    with pytest.raises(ValueError, match="`k`"):
        m.topk(rng.standard_normal((1, 8)), 0)
    with pytest.raises(TypeError, match="`k`"):
        m.topk(rng.standard_normal((1, 8)), 2.5)
    q = rng.standard_normal((2, 8)).astype(np.float32)
    q[1, 3] = np.inf
    with pytest.raises(ValueError, match="queries.*finite"):
        m.topk(q, 3)
    with pytest.raises(ValueError, match="embedding dim"):
        m.topk(rng.standard_normal((1, 9)), 3)
    with pytest.raises(TypeError, match="floating"):
        m.topk(np.ones((1, 8), np.int32), 3)
    with pytest.raises(ValueError, match="no classes"):
        kernels.CompactClassMatrix(8).topk(q[:1], 1)


def test_single_query_shapes_and_conversions(rng):
    rows = rng.standard_normal((500, 24)).astype(np.float32)
    m = compact_matrix(rows, "dot")
    q64 = rng.standard_normal(24)
    s, i = m.topk(q64, 3)
    assert s.shape == (3,) and i.shape == (3,)
    want_s, want_i = kernels.topk(q64.astype(np.float32), rows, 3, "dot")
    np.testing.assert_array_equal(s, want_s)
    np.testing.assert_array_equal(i, want_i)
    strided = np.asfortranarray(rng.standard_normal((4, 24)).astype(np.float32))
    assert_exact(m, np.ascontiguousarray(strided), rows, 2)
    np.testing.assert_array_equal(m.topk(strided, 2)[1], m.topk(np.ascontiguousarray(strided), 2)[1])
    assert m.topk(np.zeros((0, 24), np.float32), 3)[0].shape == (0, 3)


def test_compact_topk_checks_its_arguments(rng):
    C = native()
    rows = rng.standard_normal((40, 8)).astype(np.float32)
    m = compact_matrix(rows, "dot")
    q = rng.standard_normal((2, 8)).astype(np.float32)
    s, i, f = np.empty((2, 3), np.float32), np.empty((2, 3), np.int64), np.empty(2, np.int64)
    codes, meta, mu = m._store.codes, m._store.meta, m._store.center
    with pytest.raises(ValueError, match="at least 3 groups"):
        C.compact_topk(q, rows, codes[:2], meta[:2], mu, 3, "dot", s, i, f)
    with pytest.raises(ValueError, match="fp32_rows"):
        C.compact_topk(q, rows, codes, meta, mu, 3, "dot", s, i, np.empty(3, np.int64))
    with pytest.raises(ValueError, match="scores"):
        C.compact_topk(q, rows, codes, meta, mu, 3, "dot", np.empty((2, 4), np.float32), i, f)
    with pytest.raises(ValueError, match="meta.*groups"):
        C.compact_topk(q, rows, codes, meta[:1], mu, 3, "dot", s, i, f)
    with pytest.raises(ValueError, match="center"):
        C.compact_topk(q, rows, codes, meta, mu[:4], 3, "dot", s, i, f)


# ---------------------------------------------------------------------------------------------- changes
def assert_same_as_rebuilt(m, mirror):
    """The incrementally kept copy is byte for byte what encoding the current rows from scratch gives."""
    rebuilt = compact_matrix(mirror, m.metric, center=m.center)
    used = (len(mirror) + 15) // 16
    np.testing.assert_array_equal(m.rows, mirror)
    np.testing.assert_array_equal(m._store.codes[:used], rebuilt._store.codes[:used])
    np.testing.assert_array_equal(m._store.meta[:used], rebuilt._store.meta[:used])
    # slots past the end are empty (a removed class leaves nothing behind)
    assert np.all(m._store.codes[used:] == 128) and np.all(m._store.meta[used:] == 0)
    if used:
        tail = ref.unpack_codes(m._store.codes[:used], m._store.meta[:used], len(mirror), m.dim)
        assert np.all(tail["empty_codes"] == 0) and np.all(tail["empty_terms"] == 0)


@pytest.mark.parametrize("metric", METRICS)
def test_random_add_replace_remove_sequences_keep_the_compact_copy_in_step(rng, metric):
    d = 40
    m = kernels.CompactClassMatrix(d, metric, method="compact")
    mirror = np.zeros((0, d), np.float32)
    versions = [m.version]
    for step in range(120):
        op = rng.choice(["add", "add_many", "replace", "remove"], p=[0.35, 0.15, 0.25, 0.25])
        if op == "add" or len(mirror) < 3:
            row = rng.standard_normal((1, d)).astype(np.float32)
            np.testing.assert_array_equal(m.add(row), [len(mirror)])
            mirror = np.concatenate([mirror, row])
        elif op == "add_many":
            rows = rng.standard_normal((int(rng.integers(2, 40)), d)).astype(np.float32)
            m.add(rows)
            mirror = np.concatenate([mirror, rows])
        elif op == "replace":
            idx = rng.choice(len(mirror), size=min(3, len(mirror)), replace=False)
            rows = rng.standard_normal((len(idx), d)).astype(np.float32)
            m.replace(idx, rows)
            mirror[idx] = rows
        else:
            i = int(rng.integers(len(mirror)))
            moved = m.remove(i)
            assert moved == (None if i == len(mirror) - 1 else len(mirror) - 1)
            mirror[i] = mirror[-1]
            mirror = mirror[:-1]
        versions.append(m.version)
        if step % 10 == 0 or step == 119:
            assert_same_as_rebuilt(m, mirror)
            assert_exact(m, rng.standard_normal((3, d)), mirror, min(5, len(mirror)))
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_forget_and_adapt_keep_results_exact(rng):
    """The gallery's uses: forget a class (remove), adapt (replace every row with the adapted weights)."""
    rows = rng.standard_normal((3000, 64)).astype(np.float32)
    m = compact_matrix(rows, "cosine")
    q = rows[[10, 2999]] + 0.01 * rng.standard_normal((2, 64)).astype(np.float32)
    assert m.topk(q, 1)[1].ravel().tolist() == [10, 2999]
    assert m.remove(10) == 2999  # the last class moves into slot 10
    mirror = rows.copy()
    mirror[10] = mirror[2999]
    mirror = mirror[:2999]
    assert m.topk(q, 1)[1].ravel()[1] == 10  # the moved class answers under its new index
    assert_exact(m, q, mirror, 5)
    adapted = mirror + 0.1 * rng.standard_normal(mirror.shape).astype(np.float32)
    m.replace(np.arange(len(adapted)), adapted)
    assert_exact(m, q, adapted, 5)
    assert_same_as_rebuilt(m, adapted)


def test_bad_changes_change_nothing(rng):
    rows = rng.standard_normal((50, 8)).astype(np.float32)
    m = compact_matrix(rows, "dot")
    before = (m.version, m._store.codes.copy(), m._store.meta.copy(), m.rows.copy())
    bad = rng.standard_normal((3, 8)).astype(np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2 contains NaN"):
        m.add(bad)
    with pytest.raises(ValueError, match="row 0 contains NaN"):
        m.replace(4, bad[2])
    with pytest.raises(ValueError, match=r"shape \[n, 8\]"):
        m.add(np.ones((2, 9), np.float32))
    with pytest.raises(IndexError, match=r"\[0, 50\)"):
        m.replace(50, bad[0])
    with pytest.raises(IndexError, match=r"\[0, 50\)"):
        m.remove(-1)
    with pytest.raises(ValueError, match="twice"):
        m.replace([1, 1], bad[:2])
    with pytest.raises(ValueError, match="2 indices for 3 rows"):
        m.replace([1, 2], rows[:3])
    assert m.version == before[0]
    np.testing.assert_array_equal(m._store.codes, before[1])
    np.testing.assert_array_equal(m._store.meta, before[2])
    np.testing.assert_array_equal(m.rows, before[3])


def test_growth_reserve_and_memory_accounting(rng):
    m = kernels.CompactClassMatrix(512, "cosine", method="compact")
    assert m.capacity == 0 and len(m) == 0
    for n in range(1, 40):
        m.add(rng.standard_normal(512))
    assert m.capacity >= 39 and m.capacity % 16 == 0
    assert m.bytes_per_class == 512 * 4 + 512 + 16 == 2576
    assert m.nbytes == m.capacity * 2576
    m.reserve(1000)
    assert m.capacity == 1008
    assert_same_as_rebuilt(m, m.rows.copy())
    fp32 = kernels.CompactClassMatrix.from_rows(m.rows, "cosine", method="fp32")
    assert fp32.bytes_per_class == 2048 and fp32.nbytes == fp32.capacity * 2048
    m.clear()
    assert len(m) == 0 and np.all(m._store.codes == 128) and np.all(m._store.meta == 0)


def test_auto_method_scores_small_matrices_in_float32_and_large_ones_compactly(rng, monkeypatch):
    monkeypatch.delenv("METAEDGE_MATCHING", raising=False)
    small_rows = compact.AUTO_COMPACT_MIN_BYTES // (4 * 64) - 16
    m = kernels.CompactClassMatrix.from_rows(rng.standard_normal((small_rows, 64)), "dot")
    assert m.method == "auto" and m.active_method == "fp32"
    q = rng.standard_normal((2, 64)).astype(np.float32)
    assert np.all(m.topk_with_stats(q, 3)[2] == small_rows)
    m.add(rng.standard_normal((32, 64)))
    assert m.active_method == "compact"
    fp32_rows = assert_exact(m, q, m.rows.copy(), 3)
    assert np.all(fp32_rows < len(m))
    monkeypatch.setenv("METAEDGE_MATCHING", "fp32")
    assert kernels.CompactClassMatrix(8).method == "fp32"
    assert kernels.CompactClassMatrix(8, method="compact").method == "compact"  # the argument wins
    monkeypatch.setenv("METAEDGE_MATCHING", "fastest")
    with pytest.raises(ValueError, match="METAEDGE_MATCHING"):
        kernels.CompactClassMatrix(8)
    policy = compact.matching_policy()
    assert policy["default_method"].startswith("invalid") and policy["override"] == "METAEDGE_MATCHING=fastest"
    monkeypatch.delenv("METAEDGE_MATCHING")
    policy = compact.matching_policy()
    assert policy == {"compact_kernel": native().compact_kernel(), "default_method": "auto",
                      "auto_compact_min_bytes": compact.AUTO_COMPACT_MIN_BYTES, "override": None}
    with pytest.raises(ValueError, match="method"):
        kernels.CompactClassMatrix(8, method="int4")


def test_topk_at_version_pairs_results_with_the_state_they_came_from(rng):
    rows = rng.standard_normal((100, 8)).astype(np.float32)
    m = compact_matrix(rows, "dot")
    v = m.version
    q = rng.standard_normal(8).astype(np.float32)
    got = m.topk_at_version(v, q, 3)
    np.testing.assert_array_equal(got[1], m.topk(q, 3)[1])
    m.replace(0, rows[1])
    assert m.topk_at_version(v, q, 3) is None
    assert m.topk_at_version(m.version, q, 3) is not None


def test_concurrent_changes_and_matching(rng):
    """Matching threads and a changing thread: every result is exact for one of the versions the matrix
    passed through (the lock makes each change atomic for matching)."""
    d = 32
    base = rng.standard_normal((3000, d)).astype(np.float32)
    m = compact_matrix(base, "euclidean")
    extra = rng.standard_normal((200, d)).astype(np.float32)
    q = rng.standard_normal((2, d)).astype(np.float32)
    results, errors = [], []

    def match():
        try:
            for _ in range(60):
                results.append(m.topk(q, 3)[1].copy())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=match) for _ in range(2)]
    for t in threads:
        t.start()
    for row in extra:
        m.add(row)
    for t in threads:
        t.join(timeout=120)
    assert not errors
    valid = [per_query_topk(q, np.concatenate([base, extra[:n]]), 3, "euclidean")[1] for n in range(201)]
    for r in results:
        assert any(np.array_equal(r, v) for v in valid)


def test_constructor_and_from_rows_check_their_arguments(rng):
    with pytest.raises(ValueError, match="dim"):
        kernels.CompactClassMatrix(0)
    with pytest.raises(ValueError, match="metric"):
        kernels.CompactClassMatrix(8, "manhattan")
    with pytest.raises(ValueError, match="capacity"):
        kernels.CompactClassMatrix(8, capacity=-1)
    with pytest.raises(ValueError, match="2-d"):
        kernels.CompactClassMatrix.from_rows(np.ones(8), "dot")
    class FakeCudaArray:
        __cuda_array_interface__ = {}

    with pytest.raises(TypeError, match="host memory"):
        compact_matrix(rng.standard_normal((20, 8)), "dot").topk(FakeCudaArray(), 1)
    m = kernels.CompactClassMatrix.from_rows(np.zeros((0, 8), np.float32), "dot")
    assert len(m) == 0 and "0 classes x 8" in repr(m)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), c=st.integers(1, 70), d=st.integers(1, 20), metric=st.sampled_from(METRICS))
def test_property_small_integer_matrices_with_ties(data, c, d, metric):
    rows = data.draw(hnp.arrays(np.float32, (c, d), elements=st.integers(-3, 3).map(float)))
    queries = data.draw(hnp.arrays(np.float32, (data.draw(st.integers(1, 4)), d),
                                   elements=st.integers(-3, 3).map(float)))
    k = data.draw(st.integers(1, c))
    assert_exact(compact_matrix(rows, metric), queries, rows, k)


VARIANT_CHECK = """
import numpy as np
from metaedge import kernels
from metaedge._native import native
rng = np.random.default_rng(5)
for metric in ("cosine", "dot", "euclidean"):
    for b, c, d in ((1, 3000, 64), (12, 2000, 40), (33, 700, 7)):
        rows = rng.standard_normal((c, d)).astype(np.float32)
        q = rng.standard_normal((b, d)).astype(np.float32)
        m = kernels.CompactClassMatrix.from_rows(rows, metric, method="compact")
        s, i, f = m.topk_with_stats(q, 5)
        for r in range(b):
            ws, wi = kernels.topk(q[r:r + 1], rows, 5, metric)
            assert np.array_equal(ws[0], s[r]) and np.array_equal(wi[0], i[r]), (metric, b, r)
        assert np.median(f) < c / 4, f
print(native().compact_kernel())
"""


@pytest.mark.parametrize("env,kernel", [
    ({"METAEDGE_CPU_SIMD": "baseline"}, "portable"), ({"METAEDGE_CPU_SIMD": "avx2"}, "avx2"),
    ({"METAEDGE_TOPK_GEMM_MIN_BATCH": "1"}, None), ({"OMP_NUM_THREADS": "2"}, None), ({"OMP_NUM_THREADS": "1"}, None),
], ids=lambda e: "-".join(f"{k}={v}" for k, v in e.items()) if isinstance(e, dict) else str(e))
def test_every_simd_variant_threading_and_topk_route(env, kernel):
    proc = subprocess.run([sys.executable, "-c", VARIANT_CHECK], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if kernel == "avx2" and native().compact_kernel() == "portable":
        pytest.skip("this CPU has no AVX2")
    if kernel:
        assert proc.stdout.strip() == kernel


def test_a_gpu_matrix_without_a_usable_gpu_says_why():
    from metaedge import cuda
    if cuda.is_available():
        pytest.skip("a GPU is usable here (tests/gpu/test_gpu_compact.py covers it)")
    with pytest.raises(cuda.CudaUnavailableError, match="'cuda' asked for, but"):
        kernels.CompactClassMatrix(8, device="cuda")
    with pytest.raises(ValueError, match="device"):
        kernels.CompactClassMatrix(8, device="tpu")


@pytest.mark.parametrize("metric", METRICS)
def test_automatic_center_is_the_mean_of_the_classes_at_fixed_sizes_and_recenter_moves_it(rng, metric):
    d = 24
    rows = (rng.standard_normal((5000, d)) + 3).astype(np.float32)  # a large common part, as embeddings have
    rows[2000:] += 2  # later classes drift: the center follows at the next size of AUTO_CENTER_AT
    m = kernels.CompactClassMatrix(d, metric, method="compact")
    first = compact.AUTO_CENTER_AT[0]
    m.add(rows[:first - 10])
    assert np.all(m.center == 0)
    m.add(rows[first - 10:first + 40])  # reaches 256: the mean of the first 256 classes
    np.testing.assert_allclose(m.center, ref.scored_rows(rows[:first], metric).mean(0), rtol=1e-5, atol=1e-6)
    for row in rows[first + 40:1100]:  # one at a time past 1,024
        m.add(row)
    np.testing.assert_allclose(m.center, ref.scored_rows(rows[:1024], metric).mean(0), rtol=1e-5, atol=1e-6)
    m.add(rows[1100:])  # 5,000 classes in one add, past 4,096: the mean of the first 4,096
    np.testing.assert_allclose(m.center, ref.scored_rows(rows[:4096], metric).mean(0), rtol=1e-5, atol=1e-6)
    assert_same_as_rebuilt(m, rows)  # the classes before were re-encoded with it, the new ones encoded once
    assert_exact(m, rng.standard_normal((4, d)) + 3, rows, 5)
    v = m.version
    m.recenter()
    assert m.version == v + 1
    np.testing.assert_allclose(m.center, ref.scored_rows(rows, metric).mean(0), rtol=1e-5, atol=1e-6)
    assert_same_as_rebuilt(m, rows)
    assert_exact(m, rng.standard_normal((4, d)) + 3, rows, 5)
    m.recenter(np.zeros(d))
    assert np.all(m.center == 0)
    assert_exact(m, rng.standard_normal((4, d)) + 3, rows, 5)
    with pytest.raises(ValueError, match="center"):
        m.recenter(np.zeros(d + 1))
    with pytest.raises(ValueError, match="NaN"):
        kernels.CompactClassMatrix(d, metric, center=np.full(d, np.nan))
    with pytest.raises(ValueError, match="no classes"):
        kernels.CompactClassMatrix(d, metric).recenter()


def test_centering_shrinks_the_candidates_of_embeddings_with_a_common_part(rng):
    """Not exactness (that holds for any center) but why the center exists: rows sharing a large common
    component leave little to rule out without it."""
    d = 128
    common = 5 * rng.standard_normal(d)
    rows = (common + rng.standard_normal((20000, d))).astype(np.float32)
    queries = (common + rng.standard_normal((8, d))).astype(np.float32)
    for metric in ("cosine", "euclidean"):
        plain = assert_exact(compact_matrix(rows, metric, center=np.zeros(d)), queries, rows, 5)
        centered = assert_exact(compact_matrix(rows, metric), queries, rows, 5)
        assert np.median(centered) * 4 < np.median(plain), (metric, centered, plain)


def test_metaedge_info_records_the_matching_policy():
    env = {**os.environ, "METAEDGE_MATCHING": "compact", "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-m", "metaedge", "info"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("matching"))
    assert "compact (METAEDGE_MATCHING=compact)" in line and native().compact_kernel() in line
    assert f"{compact.AUTO_COMPACT_MIN_BYTES / 2**20:g} MiB" in line
