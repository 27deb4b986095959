"""Float64 reference for preprocess, written from the docstring of metaedge.kernels.preprocess without looking
at the kernel. It decodes every pixel to RGB (or gray) first and resamples afterwards, one axis at a time, with
explicit box averages (the kernel samples raw channels and converts at the end: every step is linear in the
pixels, so the order must not matter)."""
import math

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])


# ---------------------------------------------------------------- pixels -> RGB / gray


def yuv_to_rgb(y, u, v, matrix="bt601"):
    """BT.601/709 Y'CbCr -> R'G'B' on the 0..255 scale, not clipped. Limited range: Y 16..235, C 16..240."""
    kr, kb = (0.2126, 0.0722) if matrix.startswith("bt709") else (0.299, 0.114)
    kg = 1 - kr - kb
    if matrix.endswith("-full"):
        yy, cb, cr = y, u - 128.0, v - 128.0
    else:
        yy, cb, cr = (y - 16.0) * 255 / 219, (u - 128.0) * 255 / 224, (v - 128.0) * 255 / 224
    r = yy + 2 * (1 - kr) * cr
    b = yy + 2 * (1 - kb) * cb
    g = (yy - kr * r - kb * b) / kg
    return np.stack([r, g, b], axis=-1)


def rgb_to_yuv(rgb, matrix="bt601"):
    """The inverse of yuv_to_rgb (for making test frames), rounded and clipped to uint8 planes Y, U, V."""
    kr, kb = (0.2126, 0.0722) if matrix.startswith("bt709") else (0.299, 0.114)
    rgb = np.asarray(rgb, np.float64)
    y = rgb @ np.array([kr, 1 - kr - kb, kb])
    cb = (rgb[..., 2] - y) / (2 * (1 - kb))
    cr = (rgb[..., 0] - y) / (2 * (1 - kr))
    if not matrix.endswith("-full"):
        y, cb, cr = y * 219 / 255 + 16, cb * 224 / 255, cr * 224 / 255
    to8 = lambda a: np.clip(np.round(a), 0, 255).astype(np.uint8)  # noqa: E731
    return to8(y), to8(cb + 128), to8(cr + 128)


def encode(rgb, pixel_format, matrix="bt601"):
    """uint8 RGB [h, w, 3] -> a frame of `pixel_format` (h and w even for nv12/yuyv): test frames in every
    layout. Chroma is the mean of its 2x2 (nv12) or 2x1 (yuyv) site."""
    rgb = np.asarray(rgb, np.uint8)
    if pixel_format == "rgb":
        return rgb.copy()
    if pixel_format == "bgr":
        return np.ascontiguousarray(rgb[..., ::-1])
    if pixel_format in ("rgba", "bgra"):
        base = rgb if pixel_format == "rgba" else rgb[..., ::-1]
        alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
        return np.ascontiguousarray(np.concatenate([base, alpha], axis=-1))
    if pixel_format == "gray":
        return np.clip(np.round(rgb @ LUMA), 0, 255).astype(np.uint8)
    h, w = rgb.shape[:2]
    y, u, v = rgb_to_yuv(rgb, matrix)
    if pixel_format == "nv12":
        us = u.reshape(h // 2, 2, w // 2, 2).astype(np.float64).mean(axis=(1, 3))
        vs = v.reshape(h // 2, 2, w // 2, 2).astype(np.float64).mean(axis=(1, 3))
        uv = np.stack([us, vs], axis=-1).reshape(h // 2, w)
        return np.concatenate([y, np.clip(np.round(uv), 0, 255).astype(np.uint8)], axis=0)
    if pixel_format == "yuyv":
        us = u.reshape(h, w // 2, 2).astype(np.float64).mean(axis=2)
        vs = v.reshape(h, w // 2, 2).astype(np.float64).mean(axis=2)
        out = np.empty((h, w, 2), np.uint8)
        out[..., 0] = y
        out[:, 0::2, 1] = np.clip(np.round(us), 0, 255)
        out[:, 1::2, 1] = np.clip(np.round(vs), 0, 255)
        return out
    raise ValueError(pixel_format)


def decode(frame, pixel_format, matrix="bt601"):
    """One frame -> float64 [h, w, 3] RGB, or [h, w, 1] for gray frames."""
    f = np.asarray(frame, np.float64)
    if pixel_format == "gray":
        return f.reshape(f.shape[0], f.shape[1], 1)
    if pixel_format in ("rgb", "rgba"):
        return f[..., :3]
    if pixel_format in ("bgr", "bgra"):
        return f[..., 2::-1]
    if pixel_format == "nv12":
        h = f.shape[0] * 2 // 3
        y = f[:h]
        uv = f[h:].reshape(h // 2, f.shape[1] // 2, 2)
        u = np.repeat(np.repeat(uv[..., 0], 2, axis=0), 2, axis=1)
        v = np.repeat(np.repeat(uv[..., 1], 2, axis=0), 2, axis=1)
        return yuv_to_rgb(y, u, v, matrix)
    if pixel_format == "yuyv":
        y = f[..., 0]
        u = np.repeat(f[:, 0::2, 1], 2, axis=1)
        v = np.repeat(f[:, 1::2, 1], 2, axis=1)
        return yuv_to_rgb(y, u, v, matrix)
    raise ValueError(pixel_format)


def network_colour(image, color):
    """[h, w, 1|3] -> the network's channels: 'gray' (luma), 'rgb' (gray replicated) or 'keep'."""
    if color == "gray":
        return image if image.shape[-1] == 1 else (image * LUMA).sum(axis=-1, keepdims=True)
    if color == "rgb":
        return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    return image


# ---------------------------------------------------------------- geometry and resampling


def round_half_up(x):
    return int(math.floor(x + 0.5))


def placement(x, y, w, h, H, W, resize):
    """-> (source rectangle (x, y, w, h), content rectangle in the output (x, y, w, h))."""
    if resize == "letterbox":
        s = min(H / h, W / w)
        ch, cw = min(max(round_half_up(h * s), 1), H), min(max(round_half_up(w * s), 1), W)
        return (x, y, w, h), ((W - cw) // 2, (H - ch) // 2, cw, ch)
    if resize == "center_crop":
        s = max(H / h, W / w)
        ch, cw = min(max(round_half_up(H / s), 1), h), min(max(round_half_up(W / s), 1), w)
        return (x + (w - cw) // 2, y + (h - ch) // 2, cw, ch), (0, 0, W, H)
    return (x, y, w, h), (0, 0, W, H)


def resample_axis(image, axis, out, antialias):
    """Resample `image` along `axis` to `out` samples: box averages of f = floor(in/out) pixels when antialias
    and in > 2 out (f <= 256), then bilinear with half-pixel centres on the box coordinates."""
    image = np.moveaxis(image, axis, 0)
    n = image.shape[0]
    f = min(n // out, 256) if antialias and n > 2 * out else 1
    boxes = np.stack([image[j * f:min(j * f + f, n)].mean(axis=0) for j in range(-(-n // f))])
    nb = boxes.shape[0]
    result = []
    for o in range(out):
        src = max((o + 0.5) * n / (out * f) - 0.5, 0.0)
        lo = min(int(math.floor(src)), nb - 1)
        hi = min(lo + 1, nb - 1)
        frac = 0.0 if hi == lo else src - lo
        result.append(boxes[lo] * (1 - frac) + boxes[hi] * frac)
    return np.moveaxis(np.stack(result), 0, axis)


def resize_bilinear(image, height, width):
    """image[h, w, c] float64 -> [height, width, c]; no antialiasing."""
    return resample_axis(resample_axis(image, 0, height, False), 1, width, False)


def source_taps(in_size, out_size):
    """Half-pixel centres: output o samples input coordinate (o + 0.5) * in/out - 0.5, clamped at 0."""
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, src - lo


# ---------------------------------------------------------------- the whole step


def _frames_of(images, pixel_format):
    x = np.asarray(images)
    if pixel_format == "auto":
        pixel_format = "gray" if x.ndim == 2 else {1: "gray", 3: "rgb", 4: "rgba"}[x.shape[-1]]
    single_ndim = 2 if pixel_format == "nv12" or (pixel_format == "gray" and x.ndim == 2) else 3
    single = x.ndim == single_ndim
    return (x[None] if single else x), pixel_format, single


def frame_size(frame, pixel_format):
    h, w = frame.shape[:2]
    return (h * 2 // 3, w) if pixel_format == "nv12" else (h, w)


def preprocess(images, size, mean=0.0, std=1.0, color="keep", invert=False, *, pixel_format="auto",
               resize="squeeze", antialias=False, pad=0.0, yuv_matrix="bt601", rois=None):
    """uint8 frames (one or a batch, layout by pixel_format) -> float64 [n, C, H, W] ([C, H, W] for one frame
    without rois)."""
    frames, pixel_format, single = _frames_of(images, pixel_format)
    H, W = size
    jobs = []
    if rois is None:
        for frame in frames:
            h, w = frame_size(frame, pixel_format)
            jobs.append((frame, (0, 0, w, h)))
    else:
        boxes = np.asarray(rois, np.int64).reshape(-1, 4)
        jobs = [(frames[0], tuple(int(v) for v in box)) for box in boxes]
    out = []
    for frame, (x, y, w, h) in jobs:
        image = network_colour(decode(frame, pixel_format, yuv_matrix), color)
        channels = image.shape[-1]
        (sx, sy, sw, sh), (cx, cy, cw, ch) = placement(x, y, w, h, H, W, resize)
        region = image[sy:sy + sh, sx:sx + sw]
        content = resample_axis(resample_axis(region, 0, ch, antialias), 1, cw, antialias)
        canvas = np.full((H, W, channels), float(pad))
        canvas[cy:cy + ch, cx:cx + cw] = content
        if invert:
            canvas = 255.0 - canvas
        canvas = canvas / 255.0
        m = np.broadcast_to(np.asarray(mean, dtype=np.float64).ravel(), (channels,))
        s = np.broadcast_to(np.asarray(std, dtype=np.float64).ravel(), (channels,))
        out.append(((canvas - m) / s).transpose(2, 0, 1))
    out = np.stack(out) if out else np.zeros((0, 0, H, W))
    return out[0] if single and rois is None else out
