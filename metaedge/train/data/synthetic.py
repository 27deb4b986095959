"""``SyntheticGlyphs``: a built-in, seeded, procedural data set of stroke-drawn characters.

Each class is a random set of 2-4 strokes (quadratic Bezier curves); each sample redraws them with jitter:
control points moved a little, a random affine (rotation, scale, shear, shift), a random stroke width and
pixel noise. Images are uint8, strokes bright on black (no inversion needed). It needs no files, renders
thousands of images per second (PIL lines), and is the offline default for tests and the demo.
"""
from __future__ import annotations

import numpy as np
import torch

from metaedge.runtime.spec import PreprocessSpec
from metaedge.train.data.base import DataError, FewShotDataset, cache_images

SPLITS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}


def _class_strokes(rng: np.random.Generator) -> np.ndarray:
    """[strokes, 3, 2] Bezier control points inside the unit square."""
    n = int(rng.integers(2, 5))
    start = rng.uniform(0.15, 0.85, size=(n, 1, 2))
    rest = start + rng.uniform(-0.45, 0.45, size=(n, 2, 2))
    return np.clip(np.concatenate([start, rest], axis=1), 0.1, 0.9)


def _render(strokes: np.ndarray, rng: np.random.Generator, samples: int, size: int) -> np.ndarray:
    """Jittered redraws of one glyph: uint8 [samples, size, size] (drawn 4x larger, box-downsampled)."""
    from PIL import Image, ImageDraw
    t = np.linspace(0.0, 1.0, 12)[:, None]
    ctrl = strokes[None] + rng.normal(0.0, 0.02, size=(samples, *strokes.shape))            # [s, n, 3, 2]
    pts = ((1 - t) ** 2)[None, None] * ctrl[:, :, None, 0] + (2 * (1 - t) * t)[None, None] * ctrl[:, :, None, 1] \
        + (t ** 2)[None, None] * ctrl[:, :, None, 2]                                          # [s, n, 12, 2]
    angle = rng.uniform(-0.25, 0.25, samples)
    scale = rng.uniform(0.85, 1.1, (samples, 2))
    shear = rng.uniform(-0.15, 0.15, samples)
    shift = rng.uniform(-0.06, 0.06, (samples, 2))
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)               # [s, 2, 2]
    shr = np.zeros((samples, 2, 2))
    shr[:, 0, 0] = shr[:, 1, 1] = 1.0
    shr[:, 0, 1] = shear
    mat = rot @ shr * scale[:, None, :]
    pts = np.einsum("sij,snpj->snpi", mat, pts - 0.5) + 0.5 + shift[:, None, None, :]
    big = 4 * size
    width = rng.uniform(0.06, 0.11, samples) * big
    out = np.empty((samples, big, big), dtype=np.uint8)
    for s in range(samples):
        canvas = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(canvas)
        for stroke in pts[s] * big:
            draw.line([tuple(p) for p in stroke], fill=255, width=max(1, int(round(width[s]))), joint="curve")
        out[s] = np.asarray(canvas)
    ink = out.reshape(samples, size, 4, size, 4).mean(axis=(2, 4)) / 255.0
    ink = ink + rng.normal(0.0, 0.04, ink.shape)
    return (np.clip(ink, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class SyntheticGlyphs(FewShotDataset):
    """``num_classes`` procedural glyph classes x ``samples_per_class`` images, deterministic in ``seed``.

    ``split``: ``"train"`` (first 60% of the classes), ``"val"`` (next 20%), ``"test"`` (last 20%) or None
    (all); a class is the same glyph whichever split asks for it, so splits never share classes.
    ``size``: output side; ``render_size`` (default = ``size``) draws larger and resizes with the device's
    bilinear maths. Default: 200 classes x 20 images at 28x28 (about a second to build).
    """

    def __init__(self, split: str | None = "train", num_classes: int = 200, samples_per_class: int = 20,
                 size: int = 28, seed: int = 0, render_size: int | None = None):
        if split is not None and split not in SPLITS:
            raise DataError(f"split: expected one of {sorted(SPLITS)} or None, got {split!r}")
        if num_classes < 1 or samples_per_class < 1 or size < 4:
            raise DataError("num_classes and samples_per_class must be >= 1 and size >= 4")
        lo, hi = SPLITS[split] if split else (0.0, 1.0)
        classes = range(int(round(lo * num_classes)), int(round(hi * num_classes)))
        if len(classes) == 0:
            raise DataError(f"split {split!r} of {num_classes} classes is empty")
        render = int(render_size or size)
        images, labels = [], []
        for j, c in enumerate(classes):
            # one generator per class: the glyph of class c never depends on which split asked for it
            rng = np.random.default_rng([seed, c])
            images.append(_render(_class_strokes(rng), rng, samples_per_class, render))
            labels.append(np.full(samples_per_class, j))
        pixels = np.concatenate(images)
        pre = PreprocessSpec(size=(size, size), color="gray", invert=False, mean=(0.0,), std=(1.0,))
        if render == size:
            cached = torch.from_numpy(pixels[:, None].copy())
        else:
            cached = cache_images(list(pixels), pre)
        names = [f"glyph{c:04d}" for c in classes]
        super().__init__(cached, np.concatenate(labels), names, pre, groups=["glyphs"] * len(classes),
                         name=f"synthetic-glyphs/{split or 'all'}",
                         class_keys=[f"synthetic:seed{seed}/{n}" for n in names])
        self.seed = seed
