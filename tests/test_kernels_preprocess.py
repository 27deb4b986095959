"""preprocess vs the float64 reference in tests/reference/preprocess.py, whose resize is itself checked
against torch.nn.functional.interpolate and (when enlarging) PIL.

Tolerance: float32 output vs float64 reference within 1e-5 relative and 2e-6/std absolute (pixel values are
interpolated in float32 on the 0..255 scale before the affine map)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaedge import kernels
from tests.reference import preprocess as ref


def out_channels(c, color):
    return 1 if color == "gray" else 3 if (color == "rgb" or c == 4) else c


def check(images, size, mean=0.0, std=1.0, color="keep", invert=False):
    got = kernels.preprocess(images, size, mean=mean, std=std, color=color, invert=invert)
    want = ref.preprocess(images, size, mean=mean, std=std, color=color, invert=invert)
    assert got.dtype == np.float32 and got.shape == want.shape and got.flags.c_contiguous
    atol = 2e-6 / float(np.min(std))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)
    return got


@pytest.mark.parametrize("h,w,H,W", [
    (9, 9, 9, 9),        # identity size
    (7, 5, 13, 11),      # upscale, odd factors
    (48, 64, 24, 32),    # exact 2x downscale
    (480, 64, 28, 28),   # strong, anisotropic downscale
    (30, 40, 224, 224),  # strong upscale
    (1, 1, 4, 6),        # 1x1 input
    (13, 17, 1, 1),      # 1x1 output
    (1, 20, 3, 5),       # one row
    (20, 1, 5, 3),       # one column
])
@pytest.mark.parametrize("c", [1, 3, 4])
def test_resize_and_channels_match_reference(rng, h, w, H, W, c):
    images = rng.integers(0, 256, (2, h, w, c), dtype=np.uint8)
    check(images, (H, W))


@pytest.mark.parametrize("c", [1, 3, 4])
@pytest.mark.parametrize("color", ["keep", "gray", "rgb"])
@pytest.mark.parametrize("invert", [False, True])
def test_every_colour_mode_and_inversion(rng, c, color, invert):
    images = rng.integers(0, 256, (3, 11, 14, c), dtype=np.uint8)
    oc = out_channels(c, color)
    mean = rng.uniform(-0.5, 1.0, oc)
    std = rng.uniform(0.1, 2.0, oc)
    got = check(images, (8, 9), mean=mean, std=std, color=color, invert=invert)
    assert got.shape == (3, oc, 8, 9)


def test_identity_size_returns_the_pixels_exactly_scaled(rng):
    images = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    got = kernels.preprocess(images, (5, 7))
    np.testing.assert_allclose(got, images.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6, atol=0)


def test_gray_to_rgb_replicates_and_rgba_drops_alpha(rng):
    gray = rng.integers(0, 256, (1, 6, 6, 1), dtype=np.uint8)
    rgb = kernels.preprocess(gray, (4, 4), color="rgb")
    np.testing.assert_array_equal(rgb[:, 0], rgb[:, 1])
    np.testing.assert_array_equal(rgb[:, 0], rgb[:, 2])
    rgba = rng.integers(0, 256, (1, 6, 6, 4), dtype=np.uint8)
    other_alpha = rgba.copy()
    other_alpha[..., 3] = 255 - other_alpha[..., 3]
    for color in ("keep", "gray", "rgb"):
        np.testing.assert_array_equal(kernels.preprocess(rgba, (5, 3), color=color),
                                      kernels.preprocess(other_alpha, (5, 3), color=color))


def test_luma_weights(rng):
    pixel = np.array([[[[200, 100, 50]]]], np.uint8)
    got = kernels.preprocess(pixel, (1, 1), color="gray")
    assert got[0, 0, 0, 0] == pytest.approx((0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, rel=1e-6)
    inverted = kernels.preprocess(pixel, (1, 1), color="gray", invert=True)
    assert inverted[0, 0, 0, 0] == pytest.approx(1 - got[0, 0, 0, 0], abs=1e-6)


def test_mean_std_scalar_broadcasts_and_per_channel_applies(rng):
    images = rng.integers(0, 256, (2, 10, 12, 3), dtype=np.uint8)
    check(images, (6, 6), mean=0.5, std=0.25)
    check(images, (6, 6), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def test_single_images_hw_and_hwc(rng):
    hw = rng.integers(0, 256, (9, 12), dtype=np.uint8)
    got = check(hw, (4, 5))
    assert got.shape == (1, 4, 5)
    hwc = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    got = check(hwc, (4, 5), color="gray")
    assert got.shape == (1, 4, 5)
    np.testing.assert_array_equal(got, kernels.preprocess(hwc[None], (4, 5), color="gray")[0])


def test_non_contiguous_input_is_converted(rng):
    big = rng.integers(0, 256, (4, 20, 30, 4), dtype=np.uint8)
    view = big[::2, 1::2, ::-1, :3]
    assert not view.flags.c_contiguous
    got = check(view, (7, 9), color="rgb")
    np.testing.assert_array_equal(got, kernels.preprocess(np.ascontiguousarray(view), (7, 9), color="rgb"))


def test_empty_batch():
    got = kernels.preprocess(np.zeros((0, 5, 5, 3), np.uint8), (4, 4), color="gray")
    assert got.shape == (0, 1, 4, 4) and got.dtype == np.float32


def test_many_frames_match_one_at_a_time(rng):
    # Large enough for the multi-threaded path.
    frames = rng.integers(0, 256, (6, 120, 160, 3), dtype=np.uint8)
    batch = kernels.preprocess(frames, (224, 224), mean=0.5, std=0.5)
    for i in (0, 5):
        np.testing.assert_array_equal(batch[i], kernels.preprocess(frames[i], (224, 224), mean=0.5, std=0.5))
    check(frames[:2], (224, 224), mean=0.5, std=0.5)


# ---------------------------------------------------------------- the reference's own resize


@pytest.mark.parametrize("h,w,H,W", [(7, 5, 13, 11), (48, 64, 24, 32), (480, 640, 28, 28), (1, 1, 3, 3),
                                     (13, 17, 1, 1), (9, 9, 9, 9)])
def test_reference_resize_matches_torch_interpolate(rng, h, w, H, W):
    torch = pytest.importorskip("torch")
    image = rng.uniform(0, 255, (h, w, 2))
    want = torch.nn.functional.interpolate(torch.tensor(image).permute(2, 0, 1)[None], size=(H, W),
                                           mode="bilinear", align_corners=False, antialias=False)
    np.testing.assert_allclose(ref.resize_bilinear(image, H, W), want[0].permute(1, 2, 0).numpy(), rtol=1e-12,
                               atol=1e-9)


@pytest.mark.parametrize("h,w,H,W", [(7, 5, 13, 11), (20, 30, 41, 77)])
def test_reference_resize_matches_pil_when_enlarging(rng, h, w, H, W):
    Image = pytest.importorskip("PIL.Image")
    image = rng.uniform(0, 255, (h, w)).astype(np.float32)
    want = np.asarray(Image.fromarray(image, mode="F").resize((W, H), Image.BILINEAR), dtype=np.float64)
    np.testing.assert_allclose(ref.resize_bilinear(image[:, :, None].astype(np.float64), H, W)[:, :, 0], want,
                               atol=1e-3)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("images,kwargs,exc,words", [
    (np.zeros((2, 4, 4, 3), np.float32), {}, TypeError, ["`frames`", "uint8", "float32"]),
    ([[1, 2], [3, 4]], {}, TypeError, ["`frames`", "list"]),
    (np.zeros((1, 2, 4, 4, 3), np.uint8), {}, ValueError, ["`frames`", "[b, h, w, c]", "[1, 2, 4, 4, 3]"]),
    (np.zeros(5, np.uint8), {}, ValueError, ["`frames`", "[5]"]),
    (np.zeros((2, 4, 4, 2), np.uint8), {}, ValueError, ["`frames`", "2 channels", "yuyv"]),
    (np.zeros((2, 0, 4, 3), np.uint8), {}, ValueError, ["`frames`", "empty frame"]),
    (np.zeros((2, 4, 4, 3), np.uint8), dict(size=(0, 4)), ValueError, ["`size`", "(0, 4)"]),
    (np.zeros((2, 4, 4, 3), np.uint8), dict(size=(4,)), ValueError, ["`size`"]),
    (np.zeros((2, 4, 4, 3), np.uint8), dict(size="big"), ValueError, ["`size`"]),
    (np.zeros((2, 4, 4, 3), np.uint8), dict(mean=[0.1, 0.2]), ValueError, ["`mean`", "3", "2"]),
    (np.zeros((2, 4, 4, 3), np.uint8), dict(std=[1, 1, 1, 1]), ValueError, ["`std`", "3", "4"]),
    (np.zeros((2, 4, 4, 3), np.uint8), dict(std=0.0), ValueError, ["`std`"]),
    (np.zeros((2, 4, 4, 3), np.uint8), dict(std=[1.0, -1.0, 1.0]), ValueError, ["`std`"]),
    (np.zeros((2, 4, 4, 3), np.uint8), dict(mean=float("nan")), ValueError, ["`mean`"]),
    (np.zeros((2, 4, 4, 3), np.uint8), dict(color="bgr"), ValueError, ["`color`", "bgr"]),
    (np.zeros((2, 4, 4, 3), np.uint8), dict(color="gray", mean=[0.1, 0.2, 0.3]), ValueError, ["`mean`", "1"]),
])
def test_rejects_bad_input(images, kwargs, exc, words):
    kwargs = dict(kwargs)
    size = kwargs.pop("size", (3, 3))
    with pytest.raises(exc) as info:
        kernels.preprocess(images, size, **kwargs)
    for w in words:
        assert w in str(info.value), str(info.value)


# ---------------------------------------------------------------- property


@settings(max_examples=40, deadline=None)
@given(b=st.integers(0, 3), h=st.integers(1, 24), w=st.integers(1, 24), c=st.sampled_from([1, 3, 4]),
       H=st.integers(1, 24), W=st.integers(1, 24), color=st.sampled_from(["keep", "gray", "rgb"]),
       invert=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_property_matches_reference(b, h, w, c, H, W, color, invert, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (b, h, w, c), dtype=np.uint8)
    oc = out_channels(c, color)
    mean = rng.uniform(-1, 1, oc)
    std = rng.uniform(0.05, 3, oc)
    got = kernels.preprocess(images, (H, W), mean=mean, std=std, color=color, invert=invert)
    assert got.shape == (b, oc, H, W)
    if b:
        want = ref.preprocess(images, (H, W), mean=mean, std=std, color=color, invert=invert)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6 / std.min())
        # Bilinear interpolation never leaves the range of the input pixels.
        lo = ((255.0 - images.max()) if invert else images.min()) / 255.0
        hi = ((255.0 - images.min()) if invert else images.max()) / 255.0
        unscaled = got * std[None, :, None, None] + mean[None, :, None, None]
        assert unscaled.min() >= lo - 1e-5 and unscaled.max() <= hi + 1e-5


# kernels.Preprocessor: the bound per-frame form must return exactly what preprocess returns, on its fast path
# (contiguous uint8 batches) and on the converting fallback, and reject bad settings up front.
@pytest.mark.parametrize("shape,color,mean,std,invert", [
    ((1, 105, 105, 1), "gray", 0.0, 1.0, True),
    ((3, 40, 30, 3), "rgb", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),
    ((2, 17, 23, 4), "gray", 0.5, 0.25, False),
    ((1, 9, 9, 1), "rgb", (0.1, 0.2, 0.3), 2.0, True),
    ((2, 12, 12, 3), "keep", [0.5], [0.5], False),
])
def test_preprocessor_equals_preprocess(rng, shape, color, mean, std, invert):
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    bound = kernels.Preprocessor((14, 10), mean=mean, std=std, color=color, invert=invert)
    want = kernels.preprocess(images, (14, 10), mean=mean, std=std, color=color, invert=invert)
    for _ in range(2):  # the second call uses the per-channel plan made by the first
        np.testing.assert_array_equal(bound(images), want)
    np.testing.assert_array_equal(bound(images[0]), want[0])  # single HWC image: converting path
    np.testing.assert_array_equal(bound(images[:, ::-1]), kernels.preprocess(  # non-contiguous: converted
        images[:, ::-1], (14, 10), mean=mean, std=std, color=color, invert=invert))
    np.testing.assert_array_equal(bound.frame_batch(images), want)
    np.testing.assert_array_equal(bound.frame_batch(images[1 if len(images) > 1 else 0]),
                                  want[1 if len(images) > 1 else 0][None])  # one frame: a batch of one
    if shape[3] == 1:
        np.testing.assert_array_equal(bound.frame_batch(images[0, :, :, 0]), want[:1])  # [h, w]


def test_preprocessor_serves_gray_and_colour_frames_alike(rng):
    """One bound preprocessor, frames of 1, 3 and 4 channels in any order: per-channel settings expand per call."""
    bound = kernels.Preprocessor((6, 5), mean=(0.1, 0.2, 0.3), std=0.5, color="keep")
    for channels in (3, 4, 3, 4):
        frame = rng.integers(0, 256, (11, 13, channels), dtype=np.uint8)
        want = kernels.preprocess(frame, (6, 5), mean=(0.1, 0.2, 0.3), std=0.5, color="keep")
        np.testing.assert_array_equal(bound.frame_batch(frame), want[None])
    gray = rng.integers(0, 256, (11, 13, 1), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"`mean`.*got 3"):  # three means for one output channel
        bound.frame_batch(gray)
    same = kernels.Preprocessor((6, 5), mean=0.25, std=(2.0,), color="keep")
    np.testing.assert_array_equal(same.frame_batch(gray), kernels.preprocess(gray, (6, 5), 0.25, 2.0)[None])


def test_preprocessor_frame_batch_rejects_what_it_cannot_read(rng):
    bound = kernels.Preprocessor((8, 8), color="gray")
    with pytest.raises(TypeError, match=r"`frames`.*uint8.*float32"):
        bound.frame_batch(np.zeros((8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"`frames`.*2 channels.*yuyv"):
        bound.frame_batch(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match=r"`frames`.*\[1, 1, 8, 8, 1\]"):
        bound.frame_batch(np.zeros((1, 1, 8, 8, 1), np.uint8))
    with pytest.raises(TypeError, match=r"`frames`.*str"):
        bound.frame_batch("frame.png")
    with pytest.raises(ValueError, match=r"`frames`.*\[2, 2, 100000\]"):
        bound.frame_batch(np.zeros((2, 2, 100000), np.uint8))  # checked before the output is sized by it
    with pytest.raises(TypeError, match=r"`frames`.*uint8.*>u2"):
        kernels.Preprocessor((8, 8), color="keep").frame_batch(np.zeros((8, 8, 3), np.dtype(">u2")))
    rgb = kernels.Preprocessor((4, 4), mean=0.5, std=(1.0, 2.0))  # two stds for three output channels
    for call in (rgb, rgb.frame_batch):
        with pytest.raises(ValueError, match=r"`std`: expected 3 values"):  # names std, not mean
            call(np.zeros((1, 8, 8, 3), np.uint8))


def test_preprocessor_frame_batch_converts_views_it_cannot_read_in_place(rng):
    """A channel-reversed view is copied once (natively) rather than refused: the result equals the copy's."""
    bound = kernels.Preprocessor((8, 8), color="rgb")
    frame = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(bound.frame_batch(frame[:, ::-1]), bound.frame_batch(frame[:, ::-1].copy()))


def test_preprocessor_rejects_bad_settings_and_input(rng):
    with pytest.raises(ValueError, match="color"):
        kernels.Preprocessor((8, 8), color="cmyk")
    with pytest.raises(ValueError, match="size"):
        kernels.Preprocessor((8,))
    bound = kernels.Preprocessor((8, 8), std=(1.0, 2.0), color="gray")
    with pytest.raises(ValueError, match="std"):
        bound(rng.integers(0, 256, (1, 8, 8, 1), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"`std`.*> 0.*0\.0"):  # checked once, when it is made
        kernels.Preprocessor((8, 8), std=0.0)
    with pytest.raises(ValueError, match=r"`mean`.*finite"):
        kernels.Preprocessor((8, 8), mean=(0.5, float("nan"), 0.5))
    with pytest.raises(TypeError, match=r"`mean`.*numbers"):
        kernels.Preprocessor((8, 8), mean="zero")
    with pytest.raises(TypeError, match="uint8"):
        kernels.Preprocessor((8, 8))(np.zeros((1, 8, 8, 1), np.float32))


# Every SIMD variant of the row loops (the variant is chosen once per process), on every layout and pixel
# format, with and without the box prefilter (16- and 32-bit sums), every resize mode, boxes at the borders, and
# a batch large enough for threads.
VARIANT_CHECK = r"""
import numpy as np
from metaedge import _C
from tests.test_kernels_preprocess import check
from tests.test_kernels_frames import check_frames, random_frame
rng = np.random.default_rng(11)
for c, color in [(1, "keep"), (1, "rgb"), (3, "gray"), (3, "keep"), (4, "gray"), (4, "keep")]:
    for shape, size in [((2, 37, 53, c), (17, 29)), ((1, 105, 105, c), (28, 28)), ((1, 200, 300, c), (9, 13)),
                        ((3, 11, 7, c), (30, 20))]:
        check(rng.integers(0, 256, shape, dtype=np.uint8), size, mean=0.25, std=0.5, color=color, invert=c == 1)
check(rng.integers(0, 256, (40, 64, 48, 3), dtype=np.uint8), (96, 96), color="keep")  # threaded
for fmt in ("gray", "rgb", "bgr", "rgba", "bgra", "nv12", "yuyv"):
    for resize in ("squeeze", "letterbox", "center_crop"):
        frame = random_frame(rng, fmt, 58, 94)
        check_frames(frame, fmt, (13, 17), resize=resize, antialias=True, color="rgb")
        check_frames(frame, fmt, (13, 17), resize=resize, antialias=False, color="gray",
                     rois=[(0, 0, 94, 58), (1, 3, 37, 21), (80, 40, 14, 18)])
    check_frames(random_frame(rng, fmt, 700, 620), fmt, (2, 2), antialias=True)  # 32-bit box sums
    check_frames(random_frame(rng, fmt, 20, 1202), fmt, (4, 37), antialias=True,  # wide rows, odd region starts
                 rois=[(3, 1, 1101, 18), (0, 0, 1202, 20)])
    check_frames(random_frame(rng, fmt, 400, 1200), fmt, (4, 8), antialias=True)  # 32-bit sums, whole cells
print(_C.simd_level())
"""


@pytest.mark.parametrize("simd", ["baseline", "avx2", "avx512"])
def test_every_simd_variant_of_the_row_loops(simd):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, METAEDGE_CPU_SIMD=simd, OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", VARIANT_CHECK], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
