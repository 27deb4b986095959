"""topk (and the sgemm under it) vs the float64 references in tests/reference.

Comparison is by scores, not indices: returned scores must match the reference's k best within
rtol 1e-4 plus atol 1e-5 x the query's score scale (1 for cosine, ||q|| max||p|| for dot, ||q||^2 + max||p||^2
for euclidean: float32 accumulation over d terms, and the expanded euclidean form of the batched path, lose
that much), and the reference scores *at the returned indices* must equal the returned scores to the same
tolerance. Indices are checked exactly only where the answer is exact: ties between identical prototypes,
and integer-valued inputs whose scores float32 computes without rounding.

Supported magnitudes (tested): cosine, any finite rows with norms from ~1e-30 to float32 max; dot and
euclidean, entries of magnitude ~1e-15 to ~1e15 (scores must fit float32; overflow raises ValueError).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from metaedge import kernels
from metaedge._native import native
from tests.reference import topk as ref

METRICS = ("cosine", "dot", "euclidean")
RTOL, ATOL_PER_SCALE = 1e-4, 1e-5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def score_scale(queries, protos, metric):
    """Per-query magnitude of the scores, for the absolute part of the tolerance."""
    q = np.asarray(queries, np.float64)
    p = np.asarray(protos, np.float64)
    qn = np.linalg.norm(q, axis=1)
    pn = np.linalg.norm(p, axis=1).max() if len(p) else 0.0
    if metric == "cosine":
        return np.ones(len(q))
    if metric == "dot":
        return np.maximum(qn * pn, np.finfo(np.float64).tiny)
    return np.maximum(qn ** 2 + pn ** 2, np.finfo(np.float64).tiny)


def assert_topk_correct(queries, protos, k, metric, scores, indices):
    queries = np.asarray(queries, np.float64)
    protos = np.asarray(protos, np.float64)
    b, c = len(queries), len(protos)
    assert scores.dtype == np.float32 and indices.dtype == np.int64
    assert scores.shape == (b, k) and indices.shape == (b, k)
    want_scores, _, full = ref.topk(queries, protos, k, metric)
    atol = (ATOL_PER_SCALE * score_scale(queries, protos, metric))[:, None]
    tol = RTOL * np.abs(want_scores) + atol
    assert np.all(np.abs(scores - want_scores) <= tol), np.abs(scores - want_scores).max()
    assert np.all((indices >= 0) & (indices < c))
    for row in indices:
        assert len(set(row.tolist())) == k, "an index appears twice"
    at_returned = np.take_along_axis(full, indices, axis=1)
    assert np.all(np.abs(at_returned - scores) <= RTOL * np.abs(at_returned) + atol)
    assert np.all(np.diff(scores, axis=1) <= 0), "scores not descending"


def matcher_topk(queries, protos, k=1, metric="cosine"):
    """kernels.topk through a PrototypeMatcher (the packed class matrix for small batches)."""
    return kernels.PrototypeMatcher(protos, metric).topk(queries, k)


# Tests that take `topk` run against both ways of scoring a class matrix.
BOTH_WAYS = pytest.mark.parametrize("topk", [kernels.topk, matcher_topk], ids=["topk", "matcher"])


def random_case(rng, b, c, d):
    return rng.standard_normal((b, d)).astype(np.float32), rng.standard_normal((c, d)).astype(np.float32)


# Small batches take the streaming path (b < 4, or b < 10 when d >= 256: (6, 400, 300) runs it with two passes
# of query groups), larger ones the gemm path (130 > one query block of 128).
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("b,c,d,k", [
    (1, 1000, 64, 5), (1, 1, 1, 1), (2, 300, 3, 7), (3, 777, 33, 10), (4, 1000, 64, 5), (5, 64, 1, 64),
    (7, 500, 3, 1), (6, 400, 300, 5), (32, 2000, 512, 5), (130, 700, 17, 9),
])
@BOTH_WAYS
def test_topk_matches_reference(topk, rng, metric, b, c, d, k):
    q, p = random_case(rng, b, c, d)
    scores, indices = topk(q, p, k, metric)
    assert_topk_correct(q, p, k, metric, scores, indices)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("b,d", [(1, 512), (32, 64)])
@BOTH_WAYS
def test_topk_large_number_of_classes(topk, rng, metric, b, d):
    q, p = random_case(rng, b, 20000, d)
    scores, indices = topk(q, p, 5, metric)
    assert_topk_correct(q, p, 5, metric, scores, indices)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("b", [1, 6])
@BOTH_WAYS
def test_topk_k_equals_number_of_classes_returns_a_full_ranking(topk, rng, metric, b):
    q, p = random_case(rng, b, 300, 16)
    scores, indices = topk(q, p, 300, metric)
    assert_topk_correct(q, p, 300, metric, scores, indices)
    assert np.all(np.sort(indices, axis=1) == np.arange(300))


@BOTH_WAYS
def test_topk_one_class(topk, rng):
    q, p = random_case(rng, 3, 1, 8)
    for metric in METRICS:
        scores, indices = topk(q, p, 1, metric)
        assert indices.tolist() == [[0], [0], [0]]
        assert_topk_correct(q, p, 1, metric, scores, indices)


def test_topk_empty_batch_and_single_query_shapes(rng):
    _, p = random_case(rng, 0, 10, 4)
    scores, indices = kernels.topk(np.zeros((0, 4), np.float32), p, 3)
    assert scores.shape == (0, 3) and indices.shape == (0, 3)
    scores, indices = kernels.topk(p[2], p, 3, "euclidean")
    assert scores.shape == (3,) and indices.shape == (3,)
    assert indices[0] == 2 and scores[0] == 0.0


@pytest.mark.parametrize("b", [1, 8])
@BOTH_WAYS
def test_topk_zero_dimensional_embeddings_score_zero(topk, b):
    for metric in METRICS:
        scores, indices = topk(np.zeros((b, 0), np.float32), np.zeros((5, 0), np.float32), 3, metric)
        assert np.all(scores == 0) and np.all(indices == [0, 1, 2])


# Ties: identical prototypes must come out in increasing index order, across blocks, threads and both paths.
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("b", [1, 2, 32])
@pytest.mark.parametrize("c,d,dupes", [(1000, 64, [10, 500, 700, 999]), (20000, 24, [3, 4999, 9000, 15001, 19999])])
@BOTH_WAYS
def test_topk_ties_go_to_the_lower_index(topk, rng, metric, b, c, d, dupes):
    p = rng.standard_normal((c, d)).astype(np.float32)
    p[dupes] = 3 * p[dupes[0]]  # long rows, so they beat every random row for the dot metric too
    q = (p[dupes[0]] + 0.01 * rng.standard_normal((b, d))).astype(np.float32)
    scores, indices = topk(q, p, len(dupes) + 2, metric)
    assert np.all(indices[:, :len(dupes)] == dupes)
    assert np.all(scores[:, :len(dupes)] == scores[:, :1]), "identical prototypes got different scores"
    assert_topk_correct(q, p, len(dupes) + 2, metric, scores, indices)


# Batch-1 scoring, block by block: a duplicated row must score the same bit for bit at a block's start, end or
# in the last partial block, for any d (vector pairs, single vectors, scalar tail).
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("d", [1, 5, 16, 17, 31, 48, 64, 100, 513])
@BOTH_WAYS
def test_topk_single_query_duplicates_score_identically_wherever_they_sit(topk, rng, metric, d):
    if metric == "cosine" and d == 1:
        pytest.skip("in 1-d every positive row has cosine 1: ties everywhere, nothing to tell apart")
    p = rng.standard_normal((300, d)).astype(np.float32)
    dupes = [0, 17, 255, 290, 299]  # group starts/ends, and rows past the last full group of each block
    p[dupes] = 3 * p[dupes[0]]
    q = (p[0] + 0.01 * rng.standard_normal(d)).astype(np.float32)
    scores, indices = topk(q, p, len(dupes), metric)
    assert indices.tolist() == dupes
    assert np.all(scores == scores[0]), "identical prototypes got different scores"


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("b", [1, 32])
@BOTH_WAYS
def test_topk_all_prototypes_identical(topk, rng, metric, b):
    p = np.tile(rng.standard_normal((1, 16)).astype(np.float32), (5000, 1))
    q = rng.standard_normal((b, 16)).astype(np.float32)
    scores, indices = topk(q, p, 7, metric)
    assert np.all(indices == np.arange(7))
    assert np.all(scores == scores[:, :1])


@BOTH_WAYS
def test_topk_zero_rows_score_zero_under_cosine(topk, rng):
    p = rng.standard_normal((6, 5)).astype(np.float32)
    p[2] = 0
    scores, indices = topk(np.zeros((1, 5), np.float32), p, 6, "cosine")
    assert np.all(scores == 0) and indices.tolist() == [[0, 1, 2, 3, 4, 5]]
    scores, _ = topk(p[:1], p, 6, "cosine")
    assert 0.0 in scores[0]


def test_topk_converts_noncontiguous_float64_and_float16(rng):
    big_q = rng.standard_normal((10, 30))
    big_p = rng.standard_normal((200, 30))
    q, p = big_q[::2, ::3], big_p[::3, ::3]  # float64 strided views
    for metric in METRICS:
        scores, indices = kernels.topk(q, p, 4, metric)
        assert_topk_correct(q.astype(np.float32), p.astype(np.float32), 4, metric, scores, indices)
    q16, p16 = q.astype(np.float16), p.astype(np.float16)
    scores, indices = kernels.topk(q16, p16, 4, "cosine")
    assert_topk_correct(q16.astype(np.float32), p16.astype(np.float32), 4, "cosine", scores, indices)


def test_topk_float16_reaching_the_cpu_kernel_is_a_type_error():
    q = np.ones((1, 4), np.float16)
    with pytest.raises(TypeError, match=r"`queries`.*float16"):
        native().topk(q, np.ones((3, 4), np.float32), 1, "dot", np.empty((1, 1), np.float32),
                      np.empty((1, 1), np.int64))
    with pytest.raises(TypeError, match=r"`protos`.*float16"):
        native().topk(np.ones((1, 4), np.float32), np.ones((3, 4), np.float16), 1, "dot",
                      np.empty((1, 1), np.float32), np.empty((1, 1), np.int64))


@pytest.mark.parametrize("b", [1, 32])
@pytest.mark.parametrize("scale", [1e-30, 1e30])
@BOTH_WAYS
def test_topk_cosine_handles_tiny_and_huge_rows(topk, rng, b, scale):
    q, p = random_case(rng, b, 500, 64)
    q, p = (q * np.float32(scale)), (p * np.float32(scale))
    assert np.isfinite(p).all() and (np.abs(p) > 0).all()
    scores, indices = topk(q, p, 5, "cosine")
    assert_topk_correct(q, p, 5, "cosine", scores, indices)


@pytest.mark.parametrize("metric", ["dot", "euclidean"])
@pytest.mark.parametrize("b", [1, 32])
@pytest.mark.parametrize("scale", [1e-15, 1e15])
@BOTH_WAYS
def test_topk_dot_and_euclidean_supported_magnitudes(topk, rng, metric, b, scale):
    q, p = random_case(rng, b, 500, 64)
    q, p = (q * np.float32(scale)), (p * np.float32(scale))
    scores, indices = topk(q, p, 5, metric)
    assert_topk_correct(q, p, 5, metric, scores, indices)


@pytest.mark.parametrize("metric", ["dot", "euclidean"])
@pytest.mark.parametrize("b", [1, 32])
@BOTH_WAYS
def test_topk_overflowing_scores_raise_instead_of_returning_garbage(topk, rng, metric, b):
    q, p = random_case(rng, b, 300, 64)
    p[123] *= np.float32(1e20)  # finite, but its squared norm / dot products exceed float32
    q *= np.float32(1e20) if metric == "dot" else 1
    with pytest.raises(ValueError, match=r"`protos` row \d+.*float32.*cosine"):
        topk(q, p, 3, metric)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("b", [1, 32])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("row", [0, 777, 1999])
@BOTH_WAYS
def test_topk_rejects_nan_and_inf_in_protos_naming_the_row(topk, rng, metric, b, bad, row):
    q, p = random_case(rng, b, 2000, 40)
    q[:, 5] = 0  # 0 * Inf is NaN: must still be caught
    p[row, 5] = bad
    with pytest.raises(ValueError, match=rf"`protos`.*NaN or Inf in row {row}\b"):
        topk(q, p, 5, metric)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@BOTH_WAYS
def test_topk_rejects_nan_and_inf_in_queries(topk, rng, bad):
    q, p = random_case(rng, 4, 20, 8)
    q[2, 3] = bad
    with pytest.raises(ValueError, match=r"`queries`.*NaN or Inf.*index 19"):
        topk(q, p, 2)


@pytest.mark.parametrize("call,exc,words", [
    (lambda q, p: kernels.topk(q, p, 0), ValueError, ["`k`", "1 <= k", "got 0"]),
    (lambda q, p: kernels.topk(q, p, 11), ValueError, ["`k`", "(10)", "got 11"]),
    (lambda q, p: kernels.topk(q, p, -2), ValueError, ["`k`", "got -2"]),
    (lambda q, p: kernels.topk(q, p, 2.5), TypeError, ["`k`", "integer", "float"]),
    (lambda q, p: kernels.topk(q, p, 2, "manhattan"), ValueError, ["`metric`", "manhattan"]),
    (lambda q, p: kernels.topk(q[None], p, 2), ValueError, ["`queries`", "2-d", "[1, 3, 8]"]),
    (lambda q, p: kernels.topk(q, p[0], 2), ValueError, ["`protos`", "2-d", "[8]"]),
    (lambda q, p: kernels.topk(q, p[:, :5], 2), ValueError, ["`protos`", "axis 1", "embedding dim", "[10, 5]"]),
    (lambda q, p: kernels.topk(q, p[:0], 1), ValueError, ["`protos`", "at least one class"]),
    (lambda q, p: kernels.topk(q.astype(np.int32), p, 2), TypeError, ["`queries`", "int32"]),
    (lambda q, p: kernels.topk(q, p.astype(bool), 2), TypeError, ["`protos`", "bool"]),
    (lambda q, p: kernels.topk("q", p, 2), TypeError, ["`queries`", "str"]),
    (lambda q, p: kernels.topk(np.float32(1.0), p, 2), TypeError, ["`queries`"]),
])
def test_topk_rejects_bad_arguments(rng, call, exc, words):
    q, p = random_case(rng, 3, 10, 8)
    with pytest.raises(exc) as info:
        call(q, p)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# PrototypeMatcher: the packed layout, and what it checks once at construction.
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("c,d", [(1, 1), (15, 3), (16, 8), (17, 64), (100, 0)])
def test_pack_prototypes_layout_is_groups_of_16_classes_one_per_lane(rng, metric, c, d):
    p = rng.standard_normal((c, d)).astype(np.float32)
    if c > 3:
        p[2] = 0  # a zero row stays zero, also under cosine
    groups = (c + 15) // 16
    packed = np.full((groups, d, 16), np.nan, np.float32)
    native().pack_prototypes(p, metric, packed)
    rows = p.astype(np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        rows = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    want = np.zeros((groups * 16, d))
    want[:c] = rows
    np.testing.assert_allclose(packed, want.reshape(groups, 16, d).transpose(0, 2, 1), rtol=1e-6, atol=0)


def test_pack_prototypes_rejects_mismatched_layouts_and_bad_protos(rng):
    p = rng.standard_normal((40, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"`packed`.*axis 0.*groups of 16.*\[2, 8, 16\]"):
        native().pack_prototypes(p, "dot", np.empty((2, 8, 16), np.float32))
    with pytest.raises(ValueError, match=r"`packed`.*axis 1.*embedding dim"):
        native().pack_prototypes(p, "dot", np.empty((3, 7, 16), np.float32))
    with pytest.raises(ValueError, match=r"`packed`.*axis 2"):
        native().pack_prototypes(p, "dot", np.empty((3, 8, 8), np.float32))
    with pytest.raises(TypeError, match=r"`packed`.*float32"):
        native().pack_prototypes(p, "dot", np.empty((3, 8, 16), np.float16))
    with pytest.raises(TypeError, match=r"`protos`.*float32.*float64|`protos`.*float64"):
        native().BoundTopk(p.astype(np.float64), "dot")
    with pytest.raises(ValueError, match=r"`protos`.*2-d"):
        native().BoundTopk(p[0], "dot")
    with pytest.raises(ValueError, match=r"`protos`.*at least one class"):
        native().BoundTopk(p[:0], "dot")
    with pytest.raises(ValueError, match=r"metric"):
        native().BoundTopk(p, "manhattan")


def test_matcher_checks_protos_and_names_the_problem(rng):
    with pytest.raises(ValueError, match=r"`metric`.*manhattan"):
        kernels.PrototypeMatcher(np.ones((3, 4), np.float32), "manhattan")
    with pytest.raises(ValueError, match=r"`protos`.*2-d.*\[4\]"):
        kernels.PrototypeMatcher(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"`protos`.*at least one class"):
        kernels.PrototypeMatcher(np.ones((0, 4), np.float32))
    with pytest.raises(TypeError, match=r"`protos`.*floating-point"):
        kernels.PrototypeMatcher(np.ones((3, 4), np.int32))
    p = rng.standard_normal((50, 4)).astype(np.float32)
    p[31, 2] = np.inf
    for metric in METRICS:  # found by the first call's scoring, like topk's
        with pytest.raises(ValueError, match=r"`protos`.*NaN or Inf in row 31\b"):
            kernels.PrototypeMatcher(p, metric).topk(p[:1] * 0 + 1, 2)


def test_matcher_queries_and_k_are_checked_like_topk(rng):
    q, p = random_case(rng, 3, 10, 8)
    matcher = kernels.PrototypeMatcher(p, "euclidean")
    with pytest.raises(ValueError, match=r"`k`.*\(10\).*got 11"):
        matcher.topk(q, 11)
    with pytest.raises(ValueError, match=r"`k`.*got 0"):
        matcher.topk(q, 0)
    with pytest.raises(TypeError, match=r"`k`.*integer"):
        matcher.topk(q, 1.5)
    with pytest.raises(ValueError, match=r"`queries`.*axis 1|`protos`.*axis 1"):
        matcher.topk(q[:, :5], 1)
    q[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"`queries`.*NaN or Inf"):
        matcher.topk(q, 1)
    scores, indices = matcher.topk(p[4].astype(np.float64), 3)  # 1-d float64: converted, squeezed
    assert scores.shape == (3,) and indices[0] == 4 and scores[0] == 0
    scores, indices = matcher.topk(np.zeros((0, 8), np.float32), 2)
    assert scores.shape == (0, 2) and indices.shape == (0, 2)
    # the unconverting per-frame call: the native checker words what it does not take
    np.testing.assert_array_equal(matcher.topk_float32(p[3:5], 2)[1], matcher.topk(p[3:5], 2)[1])
    with pytest.raises(TypeError, match=r"`queries`.*float32.*float64|`queries`.*float64"):
        matcher.topk_float32(p[3:5].astype(np.float64), 1)
    with pytest.raises(ValueError, match=r"`queries`.*C-contiguous"):
        matcher.topk_float32(np.ones((8, 2), np.float32).T, 1)
    with pytest.raises(ValueError, match=r"`queries`.*2-d"):
        matcher.topk_float32(p[3], 1)
    with pytest.raises(ValueError, match=r"`k`.*got 0"):
        matcher.topk_float32(p[3:5], 0)
    with pytest.raises(TypeError, match=r"`queries`.*native byte order"):
        matcher.topk_float32(p[3:5].astype(">f4"), 1)
    big_endian = p[3:5].astype(">f4")  # the converting calls convert it
    np.testing.assert_array_equal(matcher.topk(big_endian, 2)[1], matcher.topk(p[3:5], 2)[1])
    np.testing.assert_array_equal(kernels.topk(big_endian, p.astype(">f4"), 2)[1], kernels.topk(p[3:5], p, 2)[1])


def test_matcher_copies_protos_unless_told_not_to(rng):
    q, p = random_case(rng, 1, 40, 8)
    want = kernels.topk(q, p, 3, "dot")
    copied = kernels.PrototypeMatcher(p, "dot")
    bound = kernels.PrototypeMatcher(p, "dot", copy=False)
    assert not np.shares_memory(copied.protos, p) and np.shares_memory(bound.protos, p)
    p[:] = 0  # after construction: the copy does not see it
    scores, indices = copied.topk(q, 3)
    np.testing.assert_array_equal(indices, want[1])
    np.testing.assert_allclose(scores, want[0], rtol=1e-5)
    assert not copied.protos.flags.writeable
    class Sub(np.ndarray):
        pass
    base = rng.standard_normal((40, 8)).astype(np.float32)
    sub = kernels.PrototypeMatcher(base.view(Sub), "dot")  # a view of the caller's memory: copied too
    assert not np.shares_memory(sub.protos, base)
    assert (copied.num_classes, copied.dim, copied.metric) == (40, 8, "dot")
    assert "40 classes x 8" in repr(copied)


def test_matcher_packs_only_cache_sized_matrices_and_is_right_either_way(rng):
    limit = native().BoundTopk.max_packed_bytes
    small = rng.standard_normal((int(limit) // (4 * 512), 512)).astype(np.float32)  # exactly at the limit
    big = rng.standard_normal((small.shape[0] + 1, 512)).astype(np.float32)
    q = rng.standard_normal((2, 512)).astype(np.float32)
    for p, packed in ((small, True), (big, False)):
        for metric in METRICS:
            matcher = kernels.PrototypeMatcher(p, metric, copy=False)
            assert matcher.packed is packed
            scores, indices = matcher.topk(q, 5)
            assert_topk_correct(q, p, 5, metric, scores, indices)

# Within the documented range: values below 1e-6 in magnitude become 0 (float32 dot products of two such values
# underflow, which the reference in float64 would not).
finite = st.floats(-100, 100, width=32, allow_subnormal=False).map(lambda x: x if abs(x) >= 1e-6 else 0.0)


@BOTH_WAYS
@settings(max_examples=40, deadline=None)
@given(data=st.data(), b=st.integers(0, 40), c=st.integers(1, 60), d=st.integers(1, 40),
       metric=st.sampled_from(METRICS))
def test_topk_property_matches_reference(topk, data, b, c, d, metric):
    q = data.draw(hnp.arrays(np.float32, (b, d), elements=finite))
    p = data.draw(hnp.arrays(np.float32, (c, d), elements=finite))
    k = data.draw(st.integers(1, c))
    scores, indices = topk(q, p, k, metric)
    assert_topk_correct(q, p, k, metric, scores, indices)


@BOTH_WAYS
@settings(max_examples=40, deadline=None)
@given(data=st.data(), b=st.integers(1, 40), c=st.integers(1, 80), d=st.integers(1, 12),
       metric=st.sampled_from(["dot", "euclidean"]))
def test_topk_property_exact_on_integer_inputs_including_ties(topk, data, b, c, d, metric):
    """Small integers make every float32 score exact, and many of them tie: scores and indices must equal
    the reference's stable ordering exactly."""
    small = st.integers(-3, 3).map(float)
    q = data.draw(hnp.arrays(np.float32, (b, d), elements=small))
    p = data.draw(hnp.arrays(np.float32, (c, d), elements=small))
    k = data.draw(st.integers(1, c))
    scores, indices = topk(q, p, k, metric)
    want_scores, want_indices, _ = ref.topk(q, p, k, metric)
    np.testing.assert_array_equal(scores, want_scores)
    np.testing.assert_array_equal(indices, want_indices)


# Every SIMD variant and both scoring paths, in fresh processes (both are chosen once per process).
VARIANT_CHECK = r"""
import numpy as np
from metaedge import _C, kernels
from tests.reference import topk as ref
from tests.test_kernels_topk import assert_topk_correct
rng = np.random.default_rng(7)
for metric in ("cosine", "dot", "euclidean"):
    for b, c, d, k in [(1, 900, 64, 5), (3, 300, 7, 300), (9, 2000, 130, 4), (40, 500, 3, 1), (1, 41, 3, 41),
                       (2, 6000, 33, 6)]:
        q = rng.standard_normal((b, d)).astype(np.float32)
        p = rng.standard_normal((c, d)).astype(np.float32)
        dupes = [5, c // 3, c // 2, c - 1]  # the last row is in the last, partial block
        p[dupes] = 3 * p[c // 3]
        q[0] = p[c // 3]
        for s, i in (kernels.topk(q, p, k, metric), kernels.PrototypeMatcher(p, metric).topk(q, k)):
            assert_topk_correct(q, p, k, metric, s, i)
            if k >= 4:
                assert i[0, :4].tolist() == dupes, i[0]
    qi = rng.integers(-3, 4, (20, 5)).astype(np.float32)
    pi = rng.integers(-3, 4, (60, 5)).astype(np.float32)
    if metric != "cosine":
        ws, wi, _ = ref.topk(qi, pi, 20, metric)
        for s, i in (kernels.topk(qi, pi, 20, metric), kernels.PrototypeMatcher(pi, metric).topk(qi[:3], 20)):
            assert (s == ws[:len(s)]).all() and (i == wi[:len(s)]).all()
a = rng.standard_normal((37, 70)).astype(np.float32)
bm = rng.standard_normal((70, 45)).astype(np.float32)
out = np.zeros((37, 45), np.float32)
_C._sgemm_for_tests(False, False, a, bm, 1.0, 0.0, out)
np.testing.assert_allclose(out, a.astype(np.float64) @ bm, rtol=1e-4, atol=1e-4)
print(_C.simd_level())
"""


@pytest.mark.parametrize("env", [
    {"METAEDGE_CPU_SIMD": "baseline"}, {"METAEDGE_CPU_SIMD": "avx2"},
    {"METAEDGE_TOPK_GEMM_MIN_BATCH": "1"}, {"METAEDGE_TOPK_GEMM_MIN_BATCH": "1000"}, {"OMP_NUM_THREADS": "2"},
], ids=lambda e: "-".join(f"{k}={v}" for k, v in e.items()))
def test_topk_every_simd_variant_and_scoring_path(env):
    proc = subprocess.run([sys.executable, "-c", VARIANT_CHECK], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if env.get("METAEDGE_CPU_SIMD") == "baseline":
        assert "kernels use baseline" in proc.stdout or "kernels use neon" in proc.stdout


# sgemm through the thin test hook: every transpose combination, ragged sizes, padded leading dimensions.
def _sgemm(trans_a, trans_b, a, b, alpha, beta, c):
    native()._sgemm_for_tests(trans_a, trans_b, a, b, alpha, beta, c)
    return c


def _padded(rng, rows, cols, pad):
    """A [rows, cols] float32 view into a wider array: row stride cols + pad."""
    return rng.standard_normal((rows, cols + pad)).astype(np.float32)[:, :cols]


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 37, 64), (37, 1, 64), (5, 25, 64), (13, 33, 7), (32, 32, 300),
                                   (100, 20, 512), (3, 1000, 40), (70, 70, 0), (1, 3000, 100), (3000, 1, 100), (40, 50, 1100)])
def test_sgemm_matches_numpy(rng, trans_a, trans_b, m, n, k):
    a = _padded(rng, *((k, m) if trans_a else (m, k)), pad=3)
    b = _padded(rng, *((n, k) if trans_b else (k, n)), pad=1)
    c = _padded(rng, m, n, pad=2)
    c0 = c.astype(np.float64)
    op_a = (a.T if trans_a else a).astype(np.float64)
    op_b = (b.T if trans_b else b).astype(np.float64)
    _sgemm(trans_a, trans_b, a, b, 0.5, -2.0, c)
    want = 0.5 * op_a @ op_b - 2.0 * c0
    bound = 0.5 * np.abs(op_a) @ np.abs(op_b) + 2.0 * np.abs(c0)
    assert np.all(np.abs(c - want) <= 1e-5 * bound + 1e-30)


def test_sgemm_beta_zero_ignores_nan_in_c_and_large_sizes_are_right(rng):
    a = rng.standard_normal((1000, 512)).astype(np.float32)
    b = rng.standard_normal((700, 512)).astype(np.float32)
    c = np.full((1000, 700), np.nan, np.float32)
    _sgemm(False, True, a, b, 1.0, 0.0, c)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b.T.astype(np.float64), rtol=1e-4, atol=2e-4)


def test_sgemm_test_hook_rejects_mismatched_shapes(rng):
    with pytest.raises(ValueError, match="disagree"):
        _sgemm(False, False, np.ones((2, 3), np.float32), np.ones((4, 5), np.float32), 1.0, 0.0,
               np.ones((2, 5), np.float32))
