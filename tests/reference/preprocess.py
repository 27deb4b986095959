"""Float64 reference for preprocess, written from the docstring of metaedge.kernels.preprocess without looking
at the kernel. It converts the colours first and resizes afterwards (the kernel may do it the other way
round: every step is linear in the pixels, so the order must not matter)."""
import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])


def source_taps(in_size, out_size):
    """Half-pixel centres: output o samples input coordinate (o + 0.5) * in/out - 0.5, clamped at 0."""
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, src - lo


def resize_bilinear(image, height, width):
    """image[h, w, c] float64 -> [height, width, c]; no antialiasing."""
    ylo, yhi, fy = source_taps(image.shape[0], height)
    xlo, xhi, fx = source_taps(image.shape[1], width)
    rows = image[ylo] * (1 - fy)[:, None, None] + image[yhi] * fy[:, None, None]
    return rows[:, xlo] * (1 - fx)[None, :, None] + rows[:, xhi] * fx[None, :, None]


def convert_colour(image, color):
    channels = image.shape[-1]
    rgb = image if channels == 1 else image[..., :3]  # RGBA: alpha dropped
    if color == "gray":
        return rgb if channels == 1 else (rgb * LUMA).sum(axis=-1, keepdims=True)
    if color == "rgb":
        return np.repeat(rgb, 3, axis=-1) if channels == 1 else rgb
    return rgb  # "keep"


def preprocess(images, size, mean=0.0, std=1.0, color="keep", invert=False):
    """uint8 [b, h, w, c] / [h, w, c] / [h, w] -> float64 [b, C, H, W] / [C, H, W]."""
    x = np.asarray(images, dtype=np.float64)
    single = x.ndim < 4
    if x.ndim == 2:
        x = x[:, :, None]
    if single:
        x = x[None]
    height, width = size
    out = []
    for image in x:
        image = convert_colour(image, color)
        image = resize_bilinear(image, height, width)
        if invert:
            image = 255.0 - image
        image = image / 255.0
        channels = image.shape[-1]
        m = np.broadcast_to(np.asarray(mean, dtype=np.float64).ravel(), (channels,))
        s = np.broadcast_to(np.asarray(std, dtype=np.float64).ravel(), (channels,))
        out.append(((image - m) / s).transpose(2, 0, 1))
    out = np.stack(out) if out else np.zeros((0, 0, height, width))
    return out[0] if single else out
