"""preprocess on camera frames: every pixel format, regions of interest, resize modes and the box prefilter,
against the float64 reference in tests/reference/preprocess.py (which decodes every pixel to RGB first and
resamples afterwards with explicit box averages), and against OpenCV, PIL and torchvision where they define the
same operation.

Tolerance: float32 output vs float64 reference within 1e-5 relative and 1e-5/std absolute (the YUV matrices
scale pixel values by up to 2.0 before /255, so this is looser than the RGB-only file's 2e-6/std).
"""
import numpy as np
import pytest

from metaedge import kernels
from tests.reference import preprocess as ref

FORMATS = ("gray", "rgb", "bgr", "rgba", "bgra", "nv12", "yuyv")


def random_frame(rng, fmt, h, w):
    """A random uint8 frame of `fmt` showing h x w pixels (h, w even for nv12/yuyv)."""
    if fmt == "gray":
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    if fmt == "nv12":
        return rng.integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
    if fmt == "yuyv":
        return rng.integers(0, 256, (h, w, 2), dtype=np.uint8)
    return rng.integers(0, 256, (h, w, 4 if fmt in ("rgba", "bgra") else 3), dtype=np.uint8)


def check_frames(frame, fmt, size, mean=0.25, std=0.5, color="keep", **kwargs):
    got = kernels.preprocess(frame, size, mean=mean, std=std, color=color, pixel_format=fmt, **kwargs)
    want = ref.preprocess(frame, size, mean=mean, std=std, color=color, pixel_format=fmt, **kwargs)
    assert got.dtype == np.float32 and got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 / float(np.min(std)))
    return got


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("resize", ["squeeze", "letterbox", "center_crop"])
@pytest.mark.parametrize("antialias", [False, True])
def test_every_format_and_resize_mode_matches_reference(rng, fmt, resize, antialias):
    h, w = (46, 74) if fmt in ("nv12", "yuyv") else (45, 73)
    frame = random_frame(rng, fmt, h, w)
    for size in [(12, 12), (9, 20), (50, 30), (3, 4)]:  # shrink > 2x, anisotropic, enlarge, strong shrink
        for color in ("keep", "gray", "rgb"):
            check_frames(frame, fmt, size, color=color, resize=resize, antialias=antialias, pad=37, invert=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_frames_one_row_and_one_column(rng, fmt):
    even = fmt in ("nv12", "yuyv")
    shapes = [(2, 2), (2, 8), (8, 2)] if fmt == "nv12" else [(1, 2), (1, 16), (7, 2)] if even else \
        [(1, 1), (1, 17), (13, 1)]
    for h, w in shapes:
        frame = random_frame(rng, fmt, h, w)
        for size in [(1, 1), (5, 3), (1, 7)]:
            check_frames(frame, fmt, size, antialias=True, resize="letterbox")
            check_frames(frame, fmt, size, antialias=False, resize="center_crop")


@pytest.mark.parametrize("fmt", FORMATS)
def test_rois_at_the_borders_and_inside(rng, fmt):
    frame = random_frame(rng, fmt, 40, 62)
    rois = [(0, 0, 62, 40), (0, 0, 1, 1), (61, 39, 1, 1), (61, 0, 1, 40), (0, 39, 62, 1), (3, 5, 17, 9),
            (30, 11, 31, 29), (1, 1, 2, 2)]
    for resize in ("squeeze", "letterbox", "center_crop"):
        got = check_frames(frame, fmt, (8, 6), rois=rois, resize=resize, antialias=True)
        assert got.shape[0] == len(rois)


@pytest.mark.parametrize("fmt", ["gray", "rgb", "bgra"])
def test_roi_equals_the_cropped_frame_read_in_place(rng, fmt):
    frame = random_frame(rng, fmt, 120, 160)
    x, y, w, h = 23, 31, 77, 50
    crop = frame[y:y + h, x:x + w]
    assert not crop.flags.c_contiguous  # a view with padded rows: read without a copy
    for antialias in (False, True):
        by_roi = kernels.preprocess(frame, (20, 24), pixel_format=fmt, rois=[(x, y, w, h)], antialias=antialias)
        by_view = kernels.preprocess(crop, (20, 24), pixel_format=fmt, antialias=antialias)
        np.testing.assert_array_equal(by_roi[0], by_view)
        np.testing.assert_array_equal(by_view, kernels.preprocess(crop.copy(), (20, 24), pixel_format=fmt,
                                                                  antialias=antialias))


def test_padded_rows_and_strided_batches_are_read_in_place(rng):
    buffer = rng.integers(0, 256, (5, 48, 80 * 3 + 64), dtype=np.uint8)  # camera rows padded by 64 bytes
    frames = buffer[:, :, :240].reshape(5, 48, 80, 3)[::2]  # and every other frame
    assert not frames.flags.c_contiguous
    got = kernels.preprocess(frames, (16, 16), antialias=True)
    np.testing.assert_array_equal(got, kernels.preprocess(np.ascontiguousarray(frames), (16, 16), antialias=True))
    nv12 = rng.integers(0, 256, (72, 128), dtype=np.uint8)[:, :96]  # pitch 128, width 96
    np.testing.assert_array_equal(kernels.preprocess(nv12, (8, 8), pixel_format="nv12"),
                                  kernels.preprocess(nv12.copy(), (8, 8), pixel_format="nv12"))


def test_bgr_is_rgb_in_the_other_order_and_alpha_is_ignored(rng):
    rgb = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    for antialias in (False, True):
        want = kernels.preprocess(rgb, (9, 9), pixel_format="rgb", antialias=antialias)
        np.testing.assert_array_equal(kernels.preprocess(bgr, (9, 9), pixel_format="bgr", antialias=antialias), want)
        for fmt, base in (("rgba", rgb), ("bgra", bgr)):
            four = np.concatenate([base, rng.integers(0, 256, (33, 47, 1), dtype=np.uint8)], axis=-1)
            np.testing.assert_array_equal(kernels.preprocess(four, (9, 9), pixel_format=fmt, antialias=antialias),
                                          want)
    # Read as RGB by mistake, a BGR frame is a different image (why the format must be named).
    assert not np.allclose(kernels.preprocess(bgr, (9, 9), pixel_format="rgb"), want, atol=0.05)


@pytest.mark.parametrize("fmt,code", [("nv12", "COLOR_YUV2RGB_NV12"), ("yuyv", "COLOR_YUV2RGB_YUYV")])
def test_yuv_frames_match_opencv_conversion(rng, fmt, code):
    cv2 = pytest.importorskip("cv2")
    # A smooth in-gamut image (camera-like), encoded with the reference's BT.601 limited-range encoder.
    yy, xx = np.mgrid[0:64, 0:96]
    rgb = np.stack([120 + 80 * np.sin(xx / 9.0), 110 + 70 * np.cos(yy / 7.0), 100 + 60 * np.sin((xx + yy) / 13.0)],
                   axis=-1).astype(np.uint8)
    frame = ref.encode(rgb, fmt)
    opencv_rgb = cv2.cvtColor(frame, getattr(cv2, code))
    for antialias in (False, True):
        ours = kernels.preprocess(frame, (20, 30), pixel_format=fmt, antialias=antialias)
        theirs = kernels.preprocess(opencv_rgb, (20, 30), pixel_format="rgb", antialias=antialias)
        # OpenCV rounds to uint8 and uses 16-bit fixed-point constants (1.164 vs 255/219): about 1 level.
        np.testing.assert_allclose(ours, theirs, atol=1.6 / 255)
        # ... and the frame shows the image it was made from, up to chroma subsampling and 8-bit YUV.
        np.testing.assert_allclose(ours, kernels.preprocess(rgb, (20, 30), antialias=antialias), atol=10 / 255)


def test_the_box_prefilter_is_pil_reduce_and_opencv_area_at_integer_factors(rng):
    Image = pytest.importorskip("PIL.Image")
    cv2 = pytest.importorskip("cv2")
    frame = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    ours = kernels.preprocess(frame, (24, 32), antialias=True).transpose(1, 2, 0) * 255
    pil = np.asarray(Image.fromarray(frame).reduce(4), np.float64)
    area = cv2.resize(frame, (32, 24), interpolation=cv2.INTER_AREA).astype(np.float64)
    exact = frame.reshape(24, 4, 32, 4, 3).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_allclose(ours, exact, atol=1e-3)
    np.testing.assert_allclose(ours, pil, atol=0.51)   # they round to uint8
    np.testing.assert_allclose(ours, area, atol=0.51)


def test_antialiasing_removes_the_aliasing_of_fine_detail():
    stripes = np.zeros((64, 512), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: a mean of 127.5 at any scale
    sharp = kernels.preprocess(stripes, (8, 60), antialias=False) * 255
    smooth = kernels.preprocess(stripes, (8, 60), antialias=True) * 255
    assert np.ptp(sharp) > 200  # plain bilinear at 8.5x shrink lands on single stripes: pure aliasing
    np.testing.assert_allclose(smooth, 127.5, atol=1e-3)


def test_letterbox_and_center_crop_geometry(rng):
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    lb = kernels.preprocess(frame, (224, 224), resize="letterbox", pad=114, antialias=True) * 255
    # 640x480 fitted into 224x224: content 224 x 168 rows at rows 28..195, grey bars above and below.
    np.testing.assert_array_equal(lb[:, :28], 114)
    np.testing.assert_array_equal(lb[:, 196:], 114)
    assert np.abs(lb[:, 28:196] - 114).max() > 50
    squeezed_content = kernels.preprocess(frame, (168, 224), antialias=True)
    np.testing.assert_allclose(lb[:, 28:196] / 255, squeezed_content, atol=1e-6)
    # center_crop: the centred 480 x 480 square, squeezed.
    cc = kernels.preprocess(frame, (224, 224), resize="center_crop", antialias=True)
    np.testing.assert_array_equal(cc, kernels.preprocess(frame, (224, 224), rois=[(80, 0, 480, 480)],
                                                         antialias=True)[0])


def test_center_crop_is_torchvision_resize_then_center_crop():
    torch = pytest.importorskip("torch")
    tvf = pytest.importorskip("torchvision.transforms.functional")
    frame = np.random.default_rng(5).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    x = torch.from_numpy(frame).permute(2, 0, 1).float()[None]
    want = tvf.center_crop(tvf.resize(x, 240, antialias=False), [240, 240])[0] / 255
    got = kernels.preprocess(frame, (240, 240), resize="center_crop", antialias=False)
    np.testing.assert_allclose(got, want.numpy(), atol=2e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_wide_frames_match_reference(rng, fmt):
    """Rows of over a thousand pixels: boxes of 4, 16 and 66 pixels, a last box cut short, and regions starting
    at odd columns (a chroma pair split at the region's start)."""
    frame = random_frame(rng, fmt, 30, 1202)
    for size in [(4, 150), (4, 37), (3, 9)]:
        check_frames(frame, fmt, size, antialias=True, color="rgb")
    check_frames(frame, fmt, (5, 61), antialias=True, rois=[(3, 1, 1101, 20), (0, 0, 1202, 30), (517, 4, 685, 25)])
    # 150 x 100-pixel boxes: 32-bit sums (nv12/yuyv: made per chroma cell, the region starting on a cell)
    check_frames(random_frame(rng, fmt, 400, 1200), fmt, (4, 8), antialias=True, rois=[(0, 0, 1200, 400),
                                                                                       (2, 0, 1198, 400)])


def test_wide_box_sums_for_huge_shrink(rng):
    frame = rng.integers(0, 256, (900, 700), dtype=np.uint8)  # 450 x 350 boxes: capped at 256, 32-bit sums
    check_frames(frame, "gray", (2, 2), antialias=True)
    check_frames(frame, "gray", (1, 3), antialias=True, resize="letterbox")


@pytest.mark.parametrize("frame,kwargs,exc,words", [
    (np.zeros((48, 64, 3), np.uint8), dict(pixel_format="bgr565"), ValueError, ["`pixel_format`", "bgr565"]),
    (np.zeros((48, 64, 3), np.uint8), dict(resize="stretch"), ValueError, ["`resize`", "stretch"]),
    (np.zeros((48, 64, 3), np.uint8), dict(yuv_matrix="bt2020"), ValueError, ["`yuv_matrix`", "bt2020"]),
    (np.zeros((48, 64, 3), np.uint8), dict(pad=300), ValueError, ["`pad`", "300"]),
    (np.zeros((48, 64, 4), np.uint8), dict(pixel_format="bgr"), ValueError, ["'bgr'", "[h, w, 3]", "bgra"]),
    (np.zeros((48, 64, 3), np.uint8), dict(pixel_format="rgba"), ValueError, ["'rgba'", "'rgb' or 'bgr'"]),
    (np.zeros((73, 64), np.uint8), dict(pixel_format="nv12"), ValueError, ["'nv12'", "[h*3/2, w]", "multiple of 3"]),
    (np.zeros((72, 63), np.uint8), dict(pixel_format="nv12"), ValueError, ["'nv12'", "odd width"]),
    (np.zeros((48, 63, 2), np.uint8), dict(pixel_format="yuyv"), ValueError, ["'yuyv'", "odd width"]),
    (np.zeros((48, 64, 3), np.uint8), dict(pixel_format="yuyv"), ValueError, ["'yuyv'", "[h, w, 2]"]),
    (np.zeros((48, 64, 3), np.uint8), dict(rois=[(-1, 0, 10, 10)]), ValueError, ["`rois`", "box 0", "x=-1"]),
    (np.zeros((48, 64, 3), np.uint8), dict(rois=[(0, 0, 5, 5), (60, 0, 5, 5)]), ValueError,
     ["`rois`", "box 1", "x=60", "64x48"]),
    (np.zeros((48, 64, 3), np.uint8), dict(rois=[(0, 40, 5, 9)]), ValueError, ["`rois`", "y + h <= height"]),
    (np.zeros((48, 64, 3), np.uint8), dict(rois=[(0, 0, 0, 5)]), ValueError, ["`rois`", "w=0"]),
    (np.zeros((48, 64, 3), np.uint8), dict(rois=[(0.5, 0, 5, 5)]), TypeError, ["`roi`", "integer", "round"]),
    (np.zeros((48, 64, 3), np.uint8), dict(rois=[(0, 0, 5)]), ValueError, ["`roi`", "(x, y, w, h)"]),
    (np.zeros((2, 48, 64, 3), np.uint8), dict(rois=[(0, 0, 5, 5)]), ValueError, ["`rois`", "one frame", "2"]),
])
def test_rejects_bad_frames_and_boxes(frame, kwargs, exc, words):
    with pytest.raises(exc) as info:
        kernels.preprocess(frame, (8, 8), **kwargs)
    for w in words:
        assert w in str(info.value), str(info.value)


def test_preprocessor_binds_a_format_and_a_call_may_name_another(rng):
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    bound = kernels.Preprocessor((10, 10), pixel_format="bgr", resize="letterbox", antialias=True, pad=20)
    want = kernels.preprocess(rgb, (10, 10), resize="letterbox", antialias=True, pad=20)
    np.testing.assert_array_equal(bound(bgr), want)
    np.testing.assert_array_equal(bound.frame_batch(bgr), want[None])
    np.testing.assert_array_equal(bound(rgb, pixel_format="rgb"), want)
    boxes = kernels.as_rois([(0, 0, 20, 30), (20, 0, 20, 30)])
    two = bound.frame_batch(bgr, boxes)
    assert two.shape == (2, 3, 10, 10)
    np.testing.assert_array_equal(two, bound(bgr, rois=[(0, 0, 20, 30), (20, 0, 20, 30)]))
    assert "bgr" in repr(bound) and "letterbox" in repr(bound)


def test_as_rois_accepts_what_detectors_return():
    np.testing.assert_array_equal(kernels.as_rois((1, 2, 3, 4)), [[1, 2, 3, 4]])
    np.testing.assert_array_equal(kernels.as_rois([[1, 2, 3, 4], (5, 6, 7, 8)]), [[1, 2, 3, 4], [5, 6, 7, 8]])
    np.testing.assert_array_equal(kernels.as_rois(np.array([[1.0, 2.0, 3.0, 4.0]])), [[1, 2, 3, 4]])
    assert kernels.as_rois(None) is None
    assert kernels.as_rois(np.zeros((0, 4), np.int32)).shape == (0, 4)
