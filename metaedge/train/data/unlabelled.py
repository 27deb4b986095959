"""``UnlabelledImages``: images without labels, for self-supervised pretraining and unsupervised episodes.

Every image is its own class (an "instance"): an unsupervised episode draws N distinct images as its N
classes and takes its shots and queries from augmentations of each (UMTRA, Khodadadeh et al. 2019; PsCo,
Jang et al. 2023), and contrastive methods treat the other images of a batch as negatives. Exact duplicates
(identical cached pixels, e.g. a static scene in a video) are kept once, so two classes of an episode are
never the same picture.

Sources: an image folder (every image under it, sub-folders ignored), a text file listing image paths, a
video file (every ``step``-th frame, OpenCV), or a labelled data set whose labels are dropped
(``from_dataset``). ``origins`` says where each image came from, and each image's class key is that of its
source (the labelled class, the folder, the video), so an evaluation can refuse classes the pretraining saw,
labels or not.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from typing import Iterable, Sequence

import numpy as np
import torch

from metaedge.runtime.spec import PreprocessSpec
from metaedge.train.data.base import DataError, FewShotDataset, resize_and_color
from metaedge.train.data.folder import IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, _load

_CHUNK = 256   # images decoded and resized per step: bounded memory for long videos and big folders


def default_preprocess(size: int | Sequence[int] = 84, color: str = "rgb", invert: bool = False,
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> PreprocessSpec:
    """Pre-processing of image files: as ``ImageFolderDataset`` (ImageNet statistics for RGB, 0/1 for gray)."""
    if color not in ("rgb", "gray"):
        raise DataError(f"color: expected 'rgb' or 'gray', got {color!r}")
    n = 1 if color == "gray" else 3
    size_hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    mean = tuple(mean) if mean is not None else (IMAGENET_MEAN if n == 3 else (0.0,))
    std = tuple(std) if std is not None else (IMAGENET_STD if n == 3 else (1.0,))
    return PreprocessSpec(size=size_hw, color=color, invert=bool(invert), mean=tuple(map(float, mean)),
                          std=tuple(map(float, std))).validate()


class UnlabelledImages(FewShotDataset):
    """Cached images, one class per image (labels ``0..N-1``), duplicates removed.

    Build with ``from_folder``, ``from_list``, ``from_video`` or ``from_dataset``. ``origins[i]``: the file,
    ``video#frame`` or source class of image ``i``; ``keys[i]``: the class key of its source (see
    ``FewShotDataset``); ``source``: a JSON description (kind, path, options) stored with checkpoints.
    """
    unlabelled = True

    def __init__(self, images: torch.Tensor, preprocess: PreprocessSpec, origins: Sequence[str], name: str,
                 source: dict | None = None, keys: Sequence[str] | None = None):
        keys = list(keys) if keys is not None else [f"{name}/{o}" for o in origins]
        if not images.shape[0] == len(origins) == len(keys):
            raise DataError(f"origins/keys: expected {images.shape[0]} entries, got {len(origins)}/{len(keys)}")
        keep, seen = [], set()
        for i in range(images.shape[0]):
            digest = hashlib.blake2b(images[i].numpy().tobytes(), digest_size=16).digest()
            if digest not in seen:
                seen.add(digest)
                keep.append(i)
        self.duplicates = images.shape[0] - len(keep)
        if self.duplicates:
            warnings.warn(f"{name}: {self.duplicates} exact duplicate image(s) left out (a duplicate would be "
                          f"the same picture under two classes of an episode)", stacklevel=3)
            images = images[torch.tensor(keep, dtype=torch.int64)]
            origins = [origins[i] for i in keep]
            keys = [keys[i] for i in keep]
        if images.shape[0] < 2:
            raise DataError(f"{name}: {images.shape[0]} distinct image(s); unsupervised training needs at least 2")
        self.origins = list(origins)
        super().__init__(images, torch.arange(images.shape[0]), [f"image{i}" for i in range(images.shape[0])],
                         preprocess, groups=None, name=name, class_keys=keys)
        self.source = dict(source or {})

    # -------------------------------------------------------------------------------------- sources
    @classmethod
    def from_dataset(cls, data: FewShotDataset, name: str | None = None) -> "UnlabelledImages":
        """The images of a labelled data set with the labels dropped (rotated copies stay distinct images)."""
        if isinstance(data, UnlabelledImages):
            return data
        labels = data.labels.tolist()
        origins = [f"{data.class_names[c]}#{i}" for i, c in enumerate(labels)]
        return cls(data.images, data.preprocess, origins, name or f"{data.name} (labels removed)",
                   source={"kind": "dataset", "name": data.name}, keys=[data.class_keys[c] for c in labels])

    @classmethod
    def from_files(cls, paths: Sequence[str], preprocess: PreprocessSpec, name: str, source: dict,
                   on_error: str = "raise") -> "UnlabelledImages":
        """Decode image files (any PIL format) into the cache; ``on_error="skip"`` leaves unreadable ones out.
        An image's key is its folder (``folder:/abs/dir``)."""
        if on_error not in ("raise", "skip"):
            raise DataError(f"on_error: expected 'raise' or 'skip', got {on_error!r}")
        if not paths:
            raise DataError(f"{name}: no image files")

        def decoded() -> Iterable[tuple[str, np.ndarray]]:
            for path in paths:
                try:
                    yield path, _load(path)
                except Exception as exc:
                    if on_error == "raise":
                        raise DataError(f"cannot read image {path!r}: {exc} (on_error='skip' / --on-error skip "
                                        f"leaves unreadable images out)") from None
                    warnings.warn(f"skipping unreadable image {path!r}: {exc}", stacklevel=4)
        images, origins = _cache(decoded(), preprocess, total=len(paths), what=name)
        keys = ["folder:" + os.path.dirname(os.path.abspath(o)) for o in origins]
        return cls(images, preprocess, origins, name, source, keys)

    @classmethod
    def from_folder(cls, root: str, preprocess: PreprocessSpec | None = None, on_error: str = "raise",
                    extensions: Sequence[str] = IMAGE_EXTENSIONS) -> "UnlabelledImages":
        """Every image file under ``root`` (recursively; folder names are ignored, they are not labels)."""
        if not os.path.isdir(root):
            raise DataError(f"image folder {root!r} does not exist or is not a directory")
        exts = tuple(e.lower() for e in extensions)
        paths = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            paths += [os.path.join(dirpath, f) for f in sorted(filenames)
                      if f.lower().endswith(exts) and not f.startswith(".")]
        if not paths:
            raise DataError(f"no images ({', '.join(exts)}) under {root!r}")
        root = os.path.abspath(root)
        data = cls.from_files(paths, preprocess or default_preprocess(), os.path.basename(root) or root,
                              {"kind": "folder", "path": root}, on_error)
        data.class_keys = [f"folder:{root}"] * len(data)   # the whole folder was seen, whatever its layout
        return data

    @classmethod
    def from_list(cls, list_file: str, preprocess: PreprocessSpec | None = None,
                  on_error: str = "raise") -> "UnlabelledImages":
        """Images named in a text file, one path per line (relative paths start at the file's folder; blank
        lines and lines starting with ``#`` are skipped)."""
        if not os.path.isfile(list_file):
            raise DataError(f"image list {list_file!r} does not exist or is not a regular file")
        if os.path.getsize(list_file) > 64 * 2 ** 20:
            raise DataError(f"image list {list_file!r} is larger than 64 MiB; split it")
        base = os.path.dirname(os.path.abspath(list_file))
        with open(list_file, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
        paths = [line if os.path.isabs(line) else os.path.join(base, line)
                 for line in lines if line and not line.startswith("#")]
        list_file = os.path.abspath(list_file)
        return cls.from_files(paths, preprocess or default_preprocess(), os.path.basename(list_file),
                              {"kind": "list", "path": list_file}, on_error)

    @classmethod
    def from_video(cls, path: str, preprocess: PreprocessSpec | None = None, step: int = 1,
                   max_frames: int | None = None, start: int = 0) -> "UnlabelledImages":
        """Frames of a video file (every ``step``-th from ``start``, at most ``max_frames``), decoded with
        OpenCV; consecutive frames are nearly the same picture, so a ``step`` of a few frames is usually
        better than every frame."""
        from metaedge.train.data.video import read_video_frames
        path = os.path.abspath(path)

        def decoded():
            for n, frame in enumerate(read_video_frames(path, step=step, max_frames=max_frames, start=start)):
                yield f"{path}#frame{start + n * step}", frame
        pre = preprocess or default_preprocess()
        images, origins = _cache(decoded(), pre, total=max_frames, what=os.path.basename(path))
        return cls(images, pre, origins, os.path.basename(path),
                   {"kind": "video", "path": path, "step": step, "max_frames": max_frames, "start": start},
                   keys=[f"video:{path}"] * len(origins))


def _cache(items: Iterable[tuple[str, np.ndarray]], pre: PreprocessSpec, total: int | None = None,
           what: str = "images") -> tuple[torch.Tensor, list[str]]:
    """Decoded ``(origin, HxW[xC] uint8)`` pairs -> the uint8 cache at the model's size, chunk by chunk (with a
    progress bar on a terminal: big folders and long videos take a while to decode)."""
    try:
        from tqdm.auto import tqdm
        items = tqdm(items, total=total, desc=f"reading {what}", unit="img", disable=None, leave=False)
    except ImportError:
        pass
    chunks, origins, pending, pending_origins = [], [], [], []
    for origin, img in items:
        pending.append(img)
        pending_origins.append(origin)
        if len(pending) == _CHUNK:
            chunks.append(resize_and_color(pending, pre.size, pre.color))
            origins += pending_origins
            pending, pending_origins = [], []
    if pending:
        chunks.append(resize_and_color(pending, pre.size, pre.color))
        origins += pending_origins
    if not chunks:
        raise DataError("no images were decoded")
    return torch.cat(chunks), origins
