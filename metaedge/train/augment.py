"""Batched, seeded data augmentation on ``[b, C, H, W]`` images in [0, 1] (after inversion, before mean/std).

One random affine per image (random-resized-crop-like scale/shift, rotation, shear, optional flips) applied
with a single ``grid_sample``, then colour jitter for RGB. All randomness comes from the ``generator``
passed in, so an episode's augmentation is reproducible and resumable.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    degrees: float = 0.0                 # rotation uniformly in [-degrees, degrees]
    translate: float = 0.0               # shift up to this fraction of the size
    scale: tuple[float, float] = (1.0, 1.0)   # zoom range (>1 = zoom in, like a random resized crop)
    shear: float = 0.0                   # shear angle range in degrees
    hflip: bool = False                  # only where mirror images are the same class (not for characters)
    vflip: bool = False
    brightness: float = 0.0              # RGB/gray: factor in [1 - b, 1 + b]
    contrast: float = 0.0
    saturation: float = 0.0              # RGB only

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scale"] = list(self.scale)
        return d

    @property
    def geometric(self) -> bool:
        return bool(self.degrees or self.translate or self.scale != (1.0, 1.0) or self.shear or self.hflip
                    or self.vflip)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b = x.shape[0]
        if b == 0:
            return x

        def uniform(lo, hi, n=b):
            return torch.rand(n, generator=generator) * (hi - lo) + lo

        if self.geometric:
            angle = uniform(-self.degrees, self.degrees) * (math.pi / 180)
            shear = uniform(-self.shear, self.shear) * (math.pi / 180)
            zoom = torch.exp(uniform(math.log(self.scale[0]), math.log(self.scale[1])))
            tx, ty = uniform(-self.translate, self.translate) * 2, uniform(-self.translate, self.translate) * 2
            sx = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if self.hflip else torch.ones(b)
            sy = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if self.vflip else torch.ones(b)
            cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
            # output -> input sampling matrix (normalised coordinates): rotation @ shear / zoom, flips, shift
            theta = torch.zeros(b, 2, 3)
            theta[:, 0, 0] = cos * sx / zoom
            theta[:, 0, 1] = (cos * tan - sin) * sy / zoom
            theta[:, 1, 0] = sin * sx / zoom
            theta[:, 1, 1] = (sin * tan + cos) * sy / zoom
            theta[:, 0, 2], theta[:, 1, 2] = tx, ty
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid.to(x.device), mode="bilinear", padding_mode="border", align_corners=False)
        if self.brightness or self.contrast or (self.saturation and x.shape[1] == 3):
            view = (b, 1, 1, 1)
            if self.brightness:
                x = x * uniform(1 - self.brightness, 1 + self.brightness).view(view).to(x)
            if self.contrast:
                mean = x.mean(dim=(1, 2, 3), keepdim=True)
                x = (x - mean) * uniform(1 - self.contrast, 1 + self.contrast).view(view).to(x) + mean
            if self.saturation and x.shape[1] == 3:
                gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
                x = (x - gray) * uniform(1 - self.saturation, 1 + self.saturation).view(view).to(x) + gray
            x = x.clamp(0.0, 1.0)
        return x


PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    # characters: small geometric jitter, no flips (a mirrored glyph is another glyph)
    "light": {"degrees": 10.0, "translate": 0.08, "scale": (0.9, 1.1), "shear": 8.0},
    # natural images: random-resized-crop-like zoom, flips, colour jitter
    "standard": {"degrees": 10.0, "translate": 0.1, "scale": (1.0, 1.4), "shear": 5.0, "hflip": True,
                 "brightness": 0.3, "contrast": 0.3, "saturation": 0.3},
}


def make_augment(spec) -> Augment | None:
    """``None``/``"none"`` -> no augmentation; a preset name; a dict of ``Augment`` fields; an ``Augment``."""
    if spec is None or isinstance(spec, Augment):
        return spec if spec is None or spec.geometric or spec.brightness or spec.contrast or spec.saturation \
            else None
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"augment: expected one of {sorted(PRESETS)} or a dict, got {spec!r}")
        return make_augment(Augment(**{k: tuple(v) if k == "scale" else v for k, v in PRESETS[spec].items()}))
    if isinstance(spec, dict):
        try:
            return make_augment(Augment(**{k: tuple(v) if k == "scale" else v for k, v in spec.items()}))
        except TypeError as exc:
            raise ValueError(f"augment: {exc}") from None
    raise TypeError(f"augment: expected a preset name, dict or Augment, got {type(spec).__name__}")
