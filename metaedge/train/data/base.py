"""The in-memory few-shot dataset every source (synthetic, Omniglot, image folders) turns into.

Images are decoded once, resized to the model's input size and cached as a ``uint8 [N, C, H, W]`` tensor.
The resize (the spec's resize mode, box prefilter and bilinear taps) and colour conversion are done by
``metaedge.kernels.preprocess`` itself, so a device that runs it on raw images sees what training saw; the only
difference is the rounding of the cache to uint8 (at most 0.5/255 per pixel).
Inversion, ``/ 255`` and ``(x - mean) / std`` happen per batch in ``to_input`` (exact on uint8).
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from metaedge.runtime.spec import PreprocessSpec

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as metaedge.kernels.preprocess
_ROTATION_SUFFIX = re.compile(r"(/rot(90|180|270))?(/mirror)?$")


class DataError(ValueError):
    """A data set cannot be read or used as asked; the message names the file, class or argument."""


def resize_and_color(images: Sequence[np.ndarray] | np.ndarray, size: tuple[int, int], color: str, *,
                     resize_mode: str = "squeeze", antialias: bool = False, pad: float = 0.0) -> torch.Tensor:
    """uint8 images (HW, HWC with C in 1/3/4; sizes may differ) -> uint8 ``[N, C, H, W]`` at ``size``.

    The device's own kernel (``metaedge.kernels.preprocess``) does the work: the same resize mode, box
    prefilter, bilinear taps and colour conversion (alpha dropped, gray = 0.299 R + 0.587 G + 0.114 B, gray ->
    RGB by replication) - so a model sees in training what the device will show it, up to the rounding of this
    cache to uint8. ``pad`` fills letterbox bars (a pixel value, before any inversion).
    """
    from metaedge import kernels
    out_c = 1 if color == "gray" else 3
    n = len(images)
    result = torch.empty((n, out_c, *size), dtype=torch.uint8)
    by_shape: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        img = np.asarray(img)
        if img.dtype != np.uint8:
            raise DataError(f"image {i}: expected uint8 pixels, got {img.dtype}")
        if img.ndim == 2:
            img = img[:, :, None]
        if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
            raise DataError(f"image {i}: expected HxW or HxWxC with C in 1/3/4, got shape {img.shape}")
        by_shape.setdefault(img.shape, []).append(i)
    for shape, idx in by_shape.items():
        for start in range(0, len(idx), 512):  # bounded float memory for big folders
            chunk = idx[start:start + 512]
            batch = np.stack([np.asarray(images[i]).reshape(shape) for i in chunk])
            # mean 0, std 1/255: the kernel's output is the pixel value itself, 0..255
            x = kernels.preprocess(batch, size, mean=0.0, std=1.0 / 255.0, color=color, resize=resize_mode,
                                   antialias=antialias, pad=pad)
            result[chunk] = torch.from_numpy(np.clip(np.rint(x), 0, 255).astype(np.uint8))
    return result


def cache_images(images, spec: PreprocessSpec) -> torch.Tensor:
    """``resize_and_color`` with the geometry and colour of ``spec`` (its inversion and mean/std are applied
    per batch by ``FewShotDataset.to_input``)."""
    return resize_and_color(images, spec.size, spec.color, resize_mode=spec.resize_mode, antialias=spec.antialias,
                            pad=spec.pad)


class FewShotDataset:
    """Cached images with class labels.

    ``images``: uint8 ``[N, C, H, W]``; ``labels``: int64 ``[N]`` in ``[0, num_classes)``; ``class_names``;
    ``groups``: one group name per class (e.g. the Omniglot alphabet) for group-aware splits;
    ``preprocess``: the ``PreprocessSpec`` whose maths produced (and ``to_input`` finishes) the inputs;
    ``class_keys``: one identity per class that does not depend on how the data was loaded or split
    (``omniglot/Greek/character01``, ``synthetic:seed0/glyph0012``, ``folder:/abs/root/cat``; rotated or mirrored
    copies share their original's key): what a checkpoint records as "seen in training", so that an evaluation
    can refuse classes a model was trained on.
    """
    unlabelled = False

    def __init__(self, images: torch.Tensor, labels, class_names: Sequence[str], preprocess: PreprocessSpec,
                 groups: Sequence[str] | None = None, name: str = "dataset", class_keys: Sequence[str] | None = None):
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"images: expected a uint8 [N, C, H, W] tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise DataError(f"labels: expected shape [{images.shape[0]}], got {tuple(labels.shape)}")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(class_names)):
            raise DataError(f"labels: expected values in [0, {len(class_names)}), got range "
                            f"[{int(labels.min())}, {int(labels.max())}]")
        if images.shape[1] != preprocess.channels or tuple(images.shape[2:]) != tuple(preprocess.size):
            raise DataError(f"images {tuple(images.shape[1:])} do not match the pre-processing "
                            f"({preprocess.channels}, {preprocess.size[0]}, {preprocess.size[1]})")
        self.images = images
        self.labels = labels
        self.class_names = list(class_names)
        self.groups = list(groups) if groups is not None else ["" for _ in class_names]
        if len(self.groups) != len(self.class_names):
            raise DataError("groups: expected one group per class")
        self.preprocess = preprocess.validate()
        self.name = name
        self.class_keys = list(class_keys) if class_keys is not None else \
            [f"{name}/{_ROTATION_SUFFIX.sub('', c)}" for c in self.class_names]
        if len(self.class_keys) != len(self.class_names):
            raise DataError("class_keys: expected one key per class")
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=len(class_names))
        self._class_indices = list(torch.split(order, counts.tolist()))

    # ---------------------------------------------------------------------------------------- basics
    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def counts(self) -> torch.Tensor:
        return torch.tensor([len(ix) for ix in self._class_indices], dtype=torch.int64)

    def class_indices(self, c: int) -> torch.Tensor:
        return self._class_indices[c]

    def seen_keys(self) -> list[str]:
        """What training on this data set shows a model: its distinct class keys (see the class docstring)."""
        return sorted(set(self.class_keys))

    def __repr__(self) -> str:
        p = self.preprocess
        return (f"{type(self).__name__}({self.name!r}: {self.num_classes} classes, {len(self)} images, "
                f"{p.color} {p.size[0]}x{p.size[1]}{', inverted' if p.invert else ''})")

    def to_input(self, images_u8: torch.Tensor, augment=None, generator: torch.Generator | None = None):
        """uint8 ``[b, C, H, W]`` -> float32 network input: invert, ``/255``, optional augmentation (on
        [0, 1] images), then ``(x - mean) / std``."""
        x = images_u8.float()
        if self.preprocess.invert:
            x = 255.0 - x
        x = x / 255.0
        if augment is not None:
            x = augment(x, generator=generator)
        mean = torch.tensor(self.preprocess.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.preprocess.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (x - mean) / std

    def batch(self, indices, augment=None, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.to_input(self.images[torch.as_tensor(indices, dtype=torch.int64)], augment, generator)

    def __getitem__(self, i: int):
        return self.batch([i])[0], int(self.labels[i])

    def raw_images(self, indices=None) -> np.ndarray:
        """Cached images as uint8 HWC numpy (what ``kernels.preprocess`` takes), e.g. to enroll them."""
        x = self.images if indices is None else self.images[torch.as_tensor(indices, dtype=torch.int64)]
        return x.permute(0, 2, 3, 1).contiguous().numpy()

    # ------------------------------------------------------------------------------------ splitting
    def subset(self, classes: Sequence[int], name: str | None = None) -> "FewShotDataset":
        """The images of ``classes`` (relabelled 0..len-1 in the given order)."""
        classes = [int(c) for c in classes]
        if len(set(classes)) != len(classes) or any(not 0 <= c < self.num_classes for c in classes):
            raise DataError(f"subset: expected distinct class ids in [0, {self.num_classes})")
        idx = [self._class_indices[c] for c in classes]
        new_labels = torch.cat([torch.full((len(ix),), j, dtype=torch.int64) for j, ix in enumerate(idx)]) \
            if idx else torch.empty(0, dtype=torch.int64)
        all_idx = torch.cat(idx) if idx else torch.empty(0, dtype=torch.int64)
        return FewShotDataset(self.images[all_idx], new_labels, [self.class_names[c] for c in classes],
                              self.preprocess, [self.groups[c] for c in classes], name or self.name,
                              [self.class_keys[c] for c in classes])

    def select_groups(self, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
                      name: str | None = None) -> "FewShotDataset":
        known = set(self.groups)
        for g in list(include or []) + list(exclude or []):
            if g not in known:
                raise DataError(f"group {g!r} is not in {self.name} (known: {sorted(known)})")
        keep = [c for c, g in enumerate(self.groups)
                if (include is None or g in include) and (exclude is None or g not in exclude)]
        return self.subset(keep, name)

    def split(self, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0, by: str = "class",
              names: Sequence[str] = ("train", "val", "test")) -> tuple["FewShotDataset", ...]:
        """Disjoint class splits. ``by="class"`` shuffles classes (rotated copies of a character move with it);
        ``by="group"`` keeps every group (e.g. an alphabet) inside one split, so no writing system leaks between
        train and test."""
        fr = np.asarray(fractions, dtype=np.float64)
        if fr.ndim != 1 or len(fr) < 1 or (fr < 0).any() or fr.sum() <= 0:
            raise DataError(f"split fractions: expected non-negative numbers, got {list(fractions)}")
        fr = fr / fr.sum()
        rng = np.random.default_rng(seed)
        if by == "class":
            # rotated/mirrored copies of a character ("<name>/rot90/mirror", Omniglot) stay with the original
            by_base: dict[str, list[int]] = {}
            for c, name in enumerate(self.class_names):
                by_base.setdefault(_ROTATION_SUFFIX.sub("", name), []).append(c)
            units = list(by_base.values())
        elif by == "group":
            order = sorted(set(self.groups))
            units = [[c for c, g in enumerate(self.groups) if g == name] for name in order]
        else:
            raise DataError(f"split by: expected 'class' or 'group', got {by!r}")
        perm = rng.permutation(len(units))
        bounds = np.round(np.cumsum(fr) * len(units)).astype(int)
        parts, start = [], 0
        for i, end in enumerate(bounds):
            classes = sorted(c for u in perm[start:end] for c in units[u])
            parts.append(self.subset(classes, f"{self.name}/{names[i] if i < len(names) else i}"))
            start = end
        return tuple(parts)

    def with_preprocess(self, **changes) -> "FewShotDataset":
        """Same cached pixels, different invert/mean/std (size and colour are baked into the cache)."""
        if "size" in changes or "color" in changes:
            raise DataError("size/color are baked into the cache: rebuild the data set to change them")
        return FewShotDataset(self.images, self.labels, self.class_names, replace(self.preprocess, **changes),
                              self.groups, self.name, self.class_keys)

    @staticmethod
    def concat(datasets: Sequence["FewShotDataset"], name: str = "concat") -> "FewShotDataset":
        if not datasets:
            raise DataError("concat: no data sets")
        pre = datasets[0].preprocess
        for d in datasets[1:]:
            if d.preprocess != pre:
                raise DataError(f"concat: pre-processing differs ({d.preprocess} vs {pre})")
        images, labels, names, groups, keys, offset = [], [], [], [], [], 0
        for d in datasets:
            images.append(d.images)
            labels.append(d.labels + offset)
            names += d.class_names
            groups += d.groups
            keys += d.class_keys
            offset += d.num_classes
        return FewShotDataset(torch.cat(images), torch.cat(labels), names, pre, groups, name, keys)


def keys_overlap(keys: Sequence[str], seen: Sequence[str]) -> list[str]:
    """The ``keys`` that a ``seen`` key covers: equal, or one a ``/``-path prefix of the other (a folder seen
    without labels covers every class folder inside it; a class folder covers the images listed from it)."""
    seen_set = set(seen)

    def prefixes(key: str):
        parts = key.split("/")
        return ("/".join(parts[:i]) for i in range(1, len(parts) + 1))

    seen_prefixes = {p for s in seen_set for p in prefixes(s)}
    return sorted({k for k in keys if k in seen_prefixes or any(p in seen_set for p in prefixes(k))})
