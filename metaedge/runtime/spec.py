"""What a device must know about a model: its input and every pre-processing step of its training data.

``ModelSpec`` is written by training (into ``model.json``), copied by export into the bundle's
``manifest.json`` and read on the device, so raw images enrolled in the field are treated exactly as the
training images were. Plain dataclasses with dict round trips: no torch, no pickle.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import asdict, dataclass, field
from typing import Any

from metaedge import kernels

RESIZE_FILTERS = ("bilinear",)  # what metaedge.kernels.preprocess implements (half-pixel centres)
RESIZE_MODES = kernels.RESIZE_MODES  # how an image is fitted to the input: squeeze, letterbox, center_crop


class SpecError(ValueError):
    """A model or pre-processing description is malformed; the message names the field."""


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise SpecError(message)


@dataclass(frozen=True)
class PreprocessSpec:
    """uint8 image or camera frame -> float32 CHW network input (see ``metaedge.kernels.preprocess``).

    ``color``: channels the network takes, ``"gray"`` (1) or ``"rgb"`` (3). ``invert``: ``255 - x`` first
    (Omniglot: strokes become 1). ``mean``/``std``: per channel, applied after ``/ 255``.
    ``resize_mode``: how an image of another shape is fitted to ``size`` - ``"squeeze"`` (stretched),
    ``"letterbox"`` (kept whole, padded with ``pad``, a pixel value 0..255 before inversion; default: black, or
    white when ``invert`` - the paper of dark-on-light data) or ``"center_crop"`` (the centred crop of the
    right shape, as torchvision's ``Resize`` + ``CenterCrop``). ``antialias``: average blocks of pixels first
    when shrinking by more than 2x (PIL's ``reduce``). Training applies this spec to its data and the device to
    its frames, so both see the same pixels; bundles written before these fields existed read as
    ``squeeze`` without ``antialias`` (what they were trained with).
    """
    size: tuple[int, int]
    color: str = "rgb"
    invert: bool = False
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: str = "bilinear"
    resize_mode: str = "squeeze"
    antialias: bool = True
    pad: float | None = None

    def __post_init__(self):
        if self.pad is None:
            object.__setattr__(self, "pad", 255.0 if self.invert else 0.0)
        elif isinstance(self.pad, (int, float)) and not isinstance(self.pad, bool):
            object.__setattr__(self, "pad", float(self.pad))

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    def validate(self) -> "PreprocessSpec":
        _require(len(self.size) == 2 and all(isinstance(s, int) and s >= 1 for s in self.size),
                 f"preprocess.size: expected [height, width] of positive ints, got {list(self.size)}")
        _require(self.color in ("gray", "rgb"), f"preprocess.color: expected 'gray' or 'rgb', got {self.color!r}")
        _require(self.resize in RESIZE_FILTERS,
                 f"preprocess.resize: expected one of {RESIZE_FILTERS}, got {self.resize!r}")
        _require(self.resize_mode in RESIZE_MODES,
                 f"preprocess.resize_mode: expected one of {RESIZE_MODES}, got {self.resize_mode!r}")
        _require(isinstance(self.antialias, bool), f"preprocess.antialias: expected true or false, got "
                                                   f"{self.antialias!r}")
        _require(isinstance(self.pad, float) and 0.0 <= self.pad <= 255.0,
                 f"preprocess.pad: expected a pixel value in [0, 255], got {self.pad!r}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            _require(len(values) in (1, self.channels),
                     f"preprocess.{name}: expected 1 or {self.channels} values, got {len(values)}")
        _require(all(s > 0 for s in self.std), f"preprocess.std: expected values > 0, got {list(self.std)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"], d["mean"], d["std"] = list(self.size), list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        try:
            spec = cls(size=tuple(int(s) for s in d["size"]), color=str(d.get("color", "rgb")),
                       invert=bool(d.get("invert", False)), mean=tuple(float(v) for v in d.get("mean", (0.0,))),
                       std=tuple(float(v) for v in d.get("std", (1.0,))), resize=str(d.get("resize", "bilinear")),
                       # absent from bundles made before resize policies: what they were trained with
                       resize_mode=str(d.get("resize_mode", "squeeze")), antialias=d.get("antialias", False),
                       pad=None if d.get("pad") is None else float(d["pad"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"preprocess: malformed description {d!r}: {exc}") from None
        return spec.validate()

    def replace(self, **changes) -> "PreprocessSpec":
        """A copy with some fields changed (e.g. ``resize_mode`` for frames of another shape), validated."""
        return dataclasses.replace(self, **changes).validate()

    @functools.cached_property
    def preprocessor(self) -> "kernels.Preprocessor":
        """This pre-processing as a ``metaedge.kernels.Preprocessor`` (settings bound once)."""
        return self.preprocessor_for()

    def preprocessor_for(self, pixel_format: str = "auto", yuv_matrix: str = "bt601") -> "kernels.Preprocessor":
        """A ``metaedge.kernels.Preprocessor`` of this pre-processing for frames of ``pixel_format``."""
        return kernels.Preprocessor(self.size, mean=self.mean, std=self.std, color=self.color, invert=self.invert,
                                    pixel_format=pixel_format, resize=self.resize_mode, antialias=self.antialias,
                                    pad=self.pad, yuv_matrix=yuv_matrix)

    def apply(self, images_u8, rois=None):
        """Run the pre-processing on uint8 images ([b,h,w,c], [h,w,c] or [h,w]; numpy or CUDA)."""
        return self.preprocessor(images_u8, rois=rois)


@dataclass(frozen=True)
class ModelSpec:
    """An embedding network as the device sees it: ``[b, C, H, W]`` float32 in, ``[b, embedding_dim]`` out."""
    backbone: str
    embedding_dim: int
    preprocess: PreprocessSpec
    metric: str = "cosine"          # how embeddings are compared (topk metric)
    input_name: str = "images"
    output_name: str = "embeddings"
    extra: dict[str, Any] = field(default_factory=dict)  # backbone options (e.g. width), informative only

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.preprocess.channels, *self.preprocess.size)

    def validate(self) -> "ModelSpec":
        _require(isinstance(self.backbone, str) and self.backbone != "", "backbone: expected a name")
        _require(isinstance(self.embedding_dim, int) and self.embedding_dim >= 1,
                 f"embedding_dim: expected a positive int, got {self.embedding_dim!r}")
        _require(self.metric in kernels.METRICS, f"metric: expected one of {kernels.METRICS}, got {self.metric!r}")
        self.preprocess.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "embedding_dim": self.embedding_dim, "metric": self.metric,
                "input_name": self.input_name, "output_name": self.output_name,
                "input_shape": list(self.input_shape), "preprocess": self.preprocess.to_dict(),
                "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        try:
            spec = cls(backbone=str(d["backbone"]), embedding_dim=int(d["embedding_dim"]),
                       preprocess=PreprocessSpec.from_dict(d["preprocess"]), metric=str(d.get("metric", "cosine")),
                       input_name=str(d.get("input_name", "images")),
                       output_name=str(d.get("output_name", "embeddings")), extra=dict(d.get("extra", {})))
        except KeyError as exc:
            raise SpecError(f"model spec: missing field {exc.args[0]!r}") from None
        return spec.validate()


