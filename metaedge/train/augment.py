"""Batched, seeded data augmentation on ``[b, C, H, W]`` images in [0, 1] (after inversion, before mean/std).

One random affine per image (zoom with an aspect ratio - a random-resized crop when ``crop`` is set -, shift,
rotation, shear, optional flips) plus an optional elastic displacement, applied with a single ``grid_sample``;
then stroke thickness (glyphs), colour jitter, grayscale and blur (photos) and random erasing. All randomness
comes from the ``generator`` passed in, so an episode's augmentation is reproducible and resumable.

Presets per domain (``PRESETS``): ``light`` / ``standard`` for labelled episodes (small changes that keep a class
a class), and the strong ones self-supervised learning needs, where the augmentations are the only source of
"same class": ``glyphs`` (handwriting-like: affine, elastic strokes, thickness, erasing; no flips, a mirrored
character is another character) and ``natural`` (SimCLR-style: random-resized crop, flips, colour, grayscale,
blur). ``auto`` picks ``glyphs`` for one-channel inputs and ``natural`` for RGB.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

_PAIRS = ("scale", "aspect")   # fields stored as (low, high) tuples


@dataclass(frozen=True)
class Augment:
    degrees: float = 0.0                 # rotation uniformly in [-degrees, degrees]
    translate: float = 0.0               # shift up to this fraction of the size
    scale: tuple[float, float] = (1.0, 1.0)   # zoom range, log-uniform (>1 = zoom in, like a random resized crop)
    shear: float = 0.0                   # shear angle range in degrees
    hflip: bool = False                  # only where mirror images are the same class (not for characters)
    vflip: bool = False
    brightness: float = 0.0              # RGB/gray: factor in [1 - b, 1 + b]
    contrast: float = 0.0
    saturation: float = 0.0              # RGB only
    aspect: tuple[float, float] = (1.0, 1.0)  # width/height ratio of the zoom, log-uniform
    crop: bool = False                   # shift the zoomed window anywhere inside the image (random resized crop)
    elastic: float = 0.0                 # smooth random displacement, up to this fraction of the size
    thickness: float = 0.0               # stroke width change: blend towards a 3x3 dilation/erosion by up to this
    erase: float = 0.0                   # probability of erasing one random rectangle (2-20% of the area)
    grayscale: float = 0.0               # RGB: probability of turning the image gray
    blur: float = 0.0                    # probability of a Gaussian blur (sigma 0.1-2 px at 224 px, scaled)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in _PAIRS:
            d[key] = list(d[key])
        return d

    @property
    def geometric(self) -> bool:
        return bool(self.degrees or self.translate or self.scale != (1.0, 1.0) or self.shear or self.hflip
                    or self.vflip or self.aspect != (1.0, 1.0) or self.elastic)

    @property
    def active(self) -> bool:
        return bool(self.geometric or self.brightness or self.contrast or self.saturation or self.thickness
                    or self.erase or self.grayscale or self.blur)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b = x.shape[0]
        if b == 0:
            return x

        def uniform(lo, hi, n=b):
            return torch.rand(n, generator=generator) * (hi - lo) + lo

        def chance(p):
            return torch.rand(b, generator=generator) < p

        def view(t):
            return t.view(b, 1, 1, 1).to(x)

        if self.geometric:
            x = self._geometric(x, uniform, generator)
        if self.thickness:
            strength = uniform(-self.thickness, self.thickness)
            target = torch.where(view(strength > 0).bool(), _filter3x3(x, torch.maximum),
                                 _filter3x3(x, torch.minimum))
            x = x + view(strength.abs()) * (target - x)
        if self.brightness or self.contrast or (self.saturation and x.shape[1] == 3):
            if self.brightness:
                x = x * view(uniform(1 - self.brightness, 1 + self.brightness))
            if self.contrast:
                mean = x.mean(dim=(1, 2, 3), keepdim=True)
                x = (x - mean) * view(uniform(1 - self.contrast, 1 + self.contrast)) + mean
            if self.saturation and x.shape[1] == 3:
                gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
                x = (x - gray) * view(uniform(1 - self.saturation, 1 + self.saturation)) + gray
            x = x.clamp(0.0, 1.0)
        if self.grayscale and x.shape[1] == 3:
            gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
            x = torch.where(view(chance(self.grayscale)).bool(), gray, x)
        if self.blur:
            x = self._blur(x, chance(self.blur), uniform(0.1, 2.0) * (x.shape[-1] / 224.0))
        if self.erase:
            x = self._erase(x, chance(self.erase), uniform, generator)
        return x

    def _geometric(self, x, uniform, generator):
        b, _, h, w = x.shape
        angle = uniform(-self.degrees, self.degrees) * (math.pi / 180)
        shear = uniform(-self.shear, self.shear) * (math.pi / 180)
        zoom = torch.exp(uniform(math.log(self.scale[0]), math.log(self.scale[1])))
        ratio = torch.exp(uniform(math.log(self.aspect[0]), math.log(self.aspect[1]))).sqrt()
        zx, zy = zoom * ratio, zoom / ratio
        tx, ty = uniform(-self.translate, self.translate) * 2, uniform(-self.translate, self.translate) * 2
        if self.crop:  # the zoomed window anywhere inside the image (normalised coordinates span [-1, 1])
            tx = tx + uniform(-1.0, 1.0) * (1 - 1 / zx).clamp_min(0)
            ty = ty + uniform(-1.0, 1.0) * (1 - 1 / zy).clamp_min(0)
        sx = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if self.hflip else torch.ones(b)
        sy = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if self.vflip else torch.ones(b)
        cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
        # output -> input sampling matrix (normalised coordinates): rotation @ shear @ flips / zoom, plus shift
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = cos * sx / zx
        theta[:, 0, 1] = (cos * tan - sin) * sy / zy
        theta[:, 1, 0] = sin * sx / zx
        theta[:, 1, 1] = (sin * tan + cos) * sy / zy
        theta[:, 0, 2], theta[:, 1, 2] = tx, ty
        grid = F.affine_grid(theta.to(x.dtype), [b, 1, h, w], align_corners=False)
        if self.elastic:
            # a 4x4 field of random displacements, smoothly upsampled: strokes bend like another hand drew them
            coarse = (torch.rand(b, 2, 4, 4, generator=generator) * 2 - 1) * (2 * self.elastic)
            field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
            grid = grid + field.permute(0, 2, 3, 1).to(grid)
        return F.grid_sample(x, grid.to(x.device), mode="bilinear", padding_mode="border", align_corners=False)

    @staticmethod
    def _blur(x, apply, sigma):
        b, c, h, w = x.shape
        sigma = torch.where(apply, sigma, torch.full_like(sigma, 1e-3)).clamp_min(1e-3)
        radius = max(1, int(math.ceil(3 * float(sigma.max()))))
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
        kernel = (kernel / kernel.sum(1, keepdim=True)).to(x)                            # [b, k]
        kernel = kernel.repeat_interleave(c, 0)                                         # [b*c, k]
        flat = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="replicate")
        flat = F.conv2d(flat, kernel[:, None, :, None], groups=b * c)
        flat = F.conv2d(flat, kernel[:, None, None, :], groups=b * c)
        return flat.reshape(b, c, h, w)

    @staticmethod
    def _erase(x, apply, uniform, generator):
        b, c, h, w = x.shape
        area = uniform(0.02, 0.2)
        ratio = torch.exp(uniform(math.log(0.3), math.log(3.3)))
        eh = (area * h * w * ratio).sqrt().clamp(1, h)
        ew = (area * h * w / ratio).sqrt().clamp(1, w)
        top = uniform(0, 1) * (h - eh)
        left = uniform(0, 1) * (w - ew)
        rows = torch.arange(h, dtype=torch.float32)[None, :, None]
        cols = torch.arange(w, dtype=torch.float32)[None, None, :]
        mask = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None])
                & (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]) & apply[:, None, None])
        # filled with the mean of the image's border: the background (0 for glyphs), not a visible patch
        border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], dim=2)
        fill = border.mean(dim=2)[:, :, None, None]
        return torch.where(mask[:, None].to(x.device), fill, x)


def _filter3x3(x: torch.Tensor, op) -> torch.Tensor:
    """3x3 dilation (``torch.maximum``) or erosion (``torch.minimum``) as two separable passes of shifted
    views (several times faster than ``max_pool2d`` with stride 1 on a CPU); borders replicate."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    rows = op(op(p[..., :, :-2], p[..., :, 1:-1]), p[..., :, 2:])
    return op(op(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    # labelled characters: small geometric jitter, no flips (a mirrored glyph is another glyph)
    "light": {"degrees": 10.0, "translate": 0.08, "scale": (0.9, 1.1), "shear": 8.0},
    # labelled photos: random-resized-crop-like zoom, flips, colour jitter
    "standard": {"degrees": 10.0, "translate": 0.1, "scale": (1.0, 1.4), "shear": 5.0, "hflip": True,
                 "brightness": 0.3, "contrast": 0.3, "saturation": 0.3},
    # self-supervised, glyph-like images (strokes = 1 on 0): what another writer changes - shape, slant,
    # stroke width, a missing piece - but never a mirror image
    "glyphs": {"degrees": 15.0, "translate": 0.08, "scale": (0.8, 1.2), "aspect": (0.8, 1.25), "shear": 12.0,
               "elastic": 0.04, "thickness": 0.8, "erase": 0.3},
    # self-supervised, natural images (SimCLR's recipe): random-resized crop of 16-100% of the area, flips,
    # strong colour jitter, grayscale, blur
    "natural": {"scale": (1.0, 2.5), "aspect": (0.75, 1.33), "crop": True, "hflip": True, "brightness": 0.4,
                "contrast": 0.4, "saturation": 0.4, "grayscale": 0.2, "blur": 0.5},
}
AUTO = "auto"


def preset_for(channels: int) -> str:
    """The self-supervised preset of a domain: ``glyphs`` for one-channel inputs, ``natural`` for RGB."""
    return "glyphs" if int(channels) == 1 else "natural"


def make_augment(spec, channels: int | None = None) -> Augment | None:
    """``None``/``"none"`` -> no augmentation; a preset name (``"auto"``: by ``channels``, see ``preset_for``);
    a dict of ``Augment`` fields; an ``Augment``."""
    if spec is None or isinstance(spec, Augment):
        return spec if spec is None or spec.active else None
    if isinstance(spec, str):
        if spec == AUTO:
            if channels is None:
                raise ValueError("augment='auto' needs the number of input channels to pick a preset")
            spec = preset_for(channels)
        if spec not in PRESETS:
            raise ValueError(f"augment: expected one of {sorted(PRESETS) + [AUTO]} or a dict, got {spec!r}")
        return make_augment(_from_dict(PRESETS[spec]))
    if isinstance(spec, dict):
        return make_augment(_from_dict(spec))
    raise TypeError(f"augment: expected a preset name, dict or Augment, got {type(spec).__name__}")


def _from_dict(d: dict[str, Any]) -> Augment:
    known = {f.name for f in fields(Augment)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"augment: unknown field(s) {unknown}; known: {sorted(known)}")
    return Augment(**{k: tuple(v) if k in _PAIRS else v for k, v in d.items()})
