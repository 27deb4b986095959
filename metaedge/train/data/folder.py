"""``ImageFolderDataset``: one folder per class (nested folders fine), any common image format."""
from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np

from metaedge.runtime.images import load_images
from metaedge.runtime.spec import PreprocessSpec
from metaedge.train.data.base import DataError, FewShotDataset, cache_images

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _load(path: str) -> np.ndarray:
    # The device's decoder (EXIF orientation applied, 16-bit and palette images converted; alpha is dropped by
    # the pre-processing kernel, as on the device), so training and field images are read the same way.
    return load_images([path])[0]


class ImageFolderDataset(FewShotDataset):
    """Every directory under ``root`` that directly contains images is a class, named by its path relative
    to ``root`` (``birds/sparrow``); the top-level folder is its group (for ``split(by="group")``).

    - ``size`` (int or (H, W)), ``color`` (``"rgb"``/``"gray"``), ``invert``, ``mean``/``std`` (default: ImageNet
      statistics for RGB, 0/1 for gray), ``resize_mode`` (``"squeeze"``, ``"letterbox"`` or ``"center_crop"``:
      how photos of other shapes are fitted), ``antialias``, ``pad``: the pre-processing, recorded in the model
      spec and applied the same way to camera frames on the device.
    - ``on_error``: ``"raise"`` (default; the error names the file) or ``"skip"`` (warn and leave it out).
    - ``min_images``: classes with fewer images are left out with a warning (0 keeps all).
    - ``split``/``split_fractions``/``split_seed``/``split_by``: return only the train/val/test part of a
      seeded class split (disjoint classes).
    """

    def __init__(self, root: str, size: int | Sequence[int] = 84, color: str = "rgb", invert: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, on_error: str = "raise", min_images: int = 1,
                 split: str | None = None, split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
                 split_seed: int = 0, split_by: str = "class", resize_mode: str = "squeeze",
                 antialias: bool = True, pad: float | None = None):
        if not os.path.isdir(root):
            raise DataError(f"image folder {root!r} does not exist or is not a directory")
        if on_error not in ("raise", "skip"):
            raise DataError(f"on_error: expected 'raise' or 'skip', got {on_error!r}")
        if color not in ("rgb", "gray"):
            raise DataError(f"color: expected 'rgb' or 'gray', got {color!r}")
        size_hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        exts = tuple(e.lower() for e in extensions)
        files_by_class: dict[str, list[str]] = {}
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            images = sorted(f for f in filenames if f.lower().endswith(exts) and not f.startswith("."))
            if images and os.path.abspath(dirpath) != os.path.abspath(root):
                rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
                files_by_class[rel] = [os.path.join(dirpath, f) for f in images]
        if not files_by_class:
            raise DataError(f"no class folders with images ({', '.join(exts)}) under {root!r}")
        pixels, labels, names, groups, skipped = [], [], [], [], []
        for rel, files in sorted(files_by_class.items()):
            loaded = []
            for path in files:
                try:
                    loaded.append(_load(path))
                except Exception as exc:
                    if on_error == "raise":
                        raise DataError(f"cannot read image {path!r}: {exc} (pass on_error='skip' to leave "
                                        f"unreadable images out)") from None
                    skipped.append(path)
                    warnings.warn(f"skipping unreadable image {path!r}: {exc}", stacklevel=2)
            if len(loaded) < max(1, min_images):
                if loaded or min_images > 0:
                    warnings.warn(f"class {rel!r} has {len(loaded)} readable image(s) (< min_images="
                                  f"{min_images}); left out", stacklevel=2)
                continue
            label = len(names)
            names.append(rel)
            groups.append(rel.split("/")[0])
            pixels += loaded
            labels += [label] * len(loaded)
        if not names:
            raise DataError(f"no usable classes under {root!r}")
        n = 1 if color == "gray" else 3
        mean = tuple(mean) if mean is not None else (IMAGENET_MEAN if n == 3 else (0.0,))
        std = tuple(std) if std is not None else (IMAGENET_STD if n == 3 else (1.0,))
        try:
            pre = PreprocessSpec(size=size_hw, color=color, invert=bool(invert), mean=tuple(map(float, mean)),
                                 std=tuple(map(float, std)), resize_mode=resize_mode, antialias=bool(antialias),
                                 pad=pad).validate()
        except ValueError as exc:
            raise DataError(str(exc)) from None
        root_abs = os.path.abspath(root)
        super().__init__(cache_images(pixels, pre), labels, names, pre, groups,
                         name=os.path.basename(root_abs), class_keys=[f"folder:{root_abs}/{n}" for n in names])
        self.skipped = skipped
        if split is not None:
            parts = dict(zip(("train", "val", "test"), self.split(split_fractions, split_seed, split_by)))
            if split not in parts:
                raise DataError(f"split: expected 'train', 'val' or 'test', got {split!r}")
            chosen = parts[split]
            FewShotDataset.__init__(self, chosen.images, chosen.labels, chosen.class_names, pre, chosen.groups,
                                    chosen.name, chosen.class_keys)
