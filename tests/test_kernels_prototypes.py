"""l2_normalize, class_prototypes, update_prototypes vs the float64 references in tests/reference.
Tolerances: float32 results vs float64 references within rtol 1e-5, atol 1e-6 (relative to the row scale)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from metaedge import kernels
from tests.reference import prototypes as ref


@pytest.mark.parametrize("n,d", [(0, 8), (1, 1), (1, 64), (37, 512), (1000, 3)])
def test_l2_normalize_matches_reference(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    np.testing.assert_allclose(kernels.l2_normalize(x), ref.l2_normalize(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("magnitude", [1e-30, 1e-20, 1e20, 1e30])
def test_l2_normalize_huge_and_tiny_rows_keep_unit_norm(rng, magnitude):
    x = (rng.standard_normal((5, 64)) * magnitude).astype(np.float32)
    eps = 1e-37  # below the row norms, so every row must come out with unit norm
    out = kernels.l2_normalize(x, eps=eps)
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out, ref.l2_normalize(x, eps=eps), rtol=1e-5, atol=1e-6)


def test_l2_normalize_rows_below_eps_are_divided_by_eps():
    x = np.full((1, 4), 1e-14, np.float32)
    np.testing.assert_allclose(kernels.l2_normalize(x, eps=1e-12), ref.l2_normalize(x, eps=1e-12), rtol=1e-5)


def test_l2_normalize_zero_row_stays_zero():
    out = kernels.l2_normalize(np.zeros((2, 4), np.float32))
    assert np.all(out == 0)


def test_l2_normalize_converts_noncontiguous_and_float64(rng):
    x = rng.standard_normal((16, 10))
    view = x[::2, ::3]
    np.testing.assert_allclose(kernels.l2_normalize(view), ref.l2_normalize(view), rtol=1e-5, atol=1e-6)
    half = x.astype(np.float16)
    np.testing.assert_allclose(kernels.l2_normalize(half), ref.l2_normalize(half.astype(np.float64)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad,exc,words", [
    (np.ones(4, np.float32), ValueError, ["`x`", "2-d", "[4]"]),
    (np.ones((2, 2), np.int64), TypeError, ["`x`", "floating", "int64"]),
    (np.array([[1.0, np.inf]], np.float32), ValueError, ["`x`", "NaN or Inf", "index 1"]),
    ("text", TypeError, ["`x`", "str"]),
])
def test_l2_normalize_rejects_bad_input(bad, exc, words):
    with pytest.raises(exc) as info:
        kernels.l2_normalize(bad)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("n,d,c", [(0, 4, 3), (1, 8, 1), (50, 64, 7), (200, 512, 40)])
def test_class_prototypes_matches_reference(rng, n, d, c):
    emb = rng.standard_normal((n, d)).astype(np.float32)
    labels = rng.integers(0, c, n)
    protos, counts = kernels.class_prototypes(emb, labels, c)
    want_p, want_c = ref.class_prototypes(emb, labels, c)
    assert protos.dtype == np.float32 and counts.dtype == np.int64
    np.testing.assert_array_equal(counts, want_c)
    np.testing.assert_allclose(protos, want_p, rtol=1e-5, atol=1e-6)


def test_class_prototypes_empty_class_is_zero_row_not_nan(rng):
    emb = rng.standard_normal((4, 3)).astype(np.float32)
    protos, counts = kernels.class_prototypes(emb, [0, 0, 2, 2], 3)
    assert counts.tolist() == [2, 0, 2]
    assert np.all(protos[1] == 0) and np.isfinite(protos).all()


@pytest.mark.parametrize("labels,words", [([0, 3], ["`labels`", "[0, 3)", "index 1", "value 3"]),
                                          ([-1, 0], ["`labels`", "index 0", "value -1"])])
def test_class_prototypes_rejects_labels_out_of_range(labels, words):
    with pytest.raises(ValueError) as info:
        kernels.class_prototypes(np.ones((2, 2), np.float32), labels, 3)
    for w in words:
        assert w in str(info.value)


def test_class_prototypes_rejects_mismatched_and_float_labels():
    with pytest.raises(ValueError, match="`labels`.*one label per row"):
        kernels.class_prototypes(np.ones((3, 2), np.float32), [0, 1], 2)
    with pytest.raises(TypeError, match="`labels`.*integer"):
        kernels.class_prototypes(np.ones((2, 2), np.float32), np.array([0.0, 1.0]), 2)


def test_update_prototypes_is_an_exact_running_mean(rng):
    d, c = 32, 5
    first = rng.standard_normal((20, d)).astype(np.float32)
    y1 = rng.integers(0, c, 20)
    protos, counts = kernels.class_prototypes(first, y1, c)
    second = rng.standard_normal((13, d)).astype(np.float32)
    y2 = rng.integers(0, c, 13)
    want_p, want_c = ref.update_prototypes(protos, counts, second, y2)
    kernels.update_prototypes(protos, counts, second, y2)
    np.testing.assert_array_equal(counts, want_c)
    np.testing.assert_allclose(protos, want_p, rtol=1e-5, atol=1e-6)
    # The same as computing the means of everything at once.
    all_p, all_c = ref.class_prototypes(np.vstack([first, second]), np.concatenate([y1, y2]), c)
    np.testing.assert_allclose(protos, all_p, rtol=1e-5, atol=1e-6)


def test_update_prototypes_refuses_to_copy_in_place_arguments(rng):
    protos = np.zeros((2, 3), np.float64)
    with pytest.raises(TypeError, match="`protos` is updated in place"):
        kernels.update_prototypes(protos, np.zeros(2, np.int64), np.ones((1, 3), np.float32), [0])
    with pytest.raises(ValueError, match="`counts`.*>= 0"):
        kernels.update_prototypes(np.zeros((2, 3), np.float32), np.array([-1, 0]), np.ones((1, 3), np.float32), [0])


def test_update_prototypes_rejects_nan_and_leaves_state_unchanged():
    protos = np.ones((2, 3), np.float32)
    counts = np.array([1, 1])
    with pytest.raises(ValueError, match="`emb`.*NaN"):
        kernels.update_prototypes(protos, counts, np.array([[1, np.nan, 0]], np.float32), [0])
    assert np.all(protos == 1) and counts.tolist() == [1, 1]


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 20), st.integers(1, 16)),
                  elements=st.floats(-1e4, 1e4, width=32)),
       st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_class_prototypes_property(emb, c, seed):
    labels = np.random.default_rng(seed).integers(0, c, emb.shape[0])
    protos, counts = kernels.class_prototypes(emb, labels, c)
    want_p, want_c = ref.class_prototypes(emb, labels, c)
    np.testing.assert_array_equal(counts, want_c)
    np.testing.assert_allclose(protos, want_p, rtol=1e-5, atol=1e-3)
