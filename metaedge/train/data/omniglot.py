"""Omniglot (Lake et al., 2015) read from the original zip files or the torchvision directory layout.

``root`` may be a directory holding ``<set>.zip`` files (as ``../shared/data/omniglot``), a directory holding
``<set>/<Alphabet>/<character>/*.png`` (torchvision: ``<root>/omniglot-py/<set>/...`` also works), or one zip
file. Sets: ``images_background``, ``images_evaluation``, ``images_background_small1``, ... . Images are
105x105 strokes-black-on-white; the default pre-processing inverts them (strokes = 1) and resizes to 28x28.
"""
from __future__ import annotations

import io
import os
import zipfile
from typing import Iterable, Sequence

import numpy as np
import torch

from metaedge.runtime.spec import PreprocessSpec
from metaedge.train.data.base import _ROTATION_SUFFIX, DataError, FewShotDataset, cache_images

ENV_VAR = "METAEDGE_OMNIGLOT"
_IMAGE_EXT = (".png",)


def _decode(data: bytes, where: str) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except Exception as exc:
        raise DataError(f"cannot decode {where}: {exc}") from None


def _from_zip(path: str, set_name: str | None) -> list[tuple[str, str, str, np.ndarray]]:
    """(set, alphabet, character, image) for every png in a zip (entries ``<set>/<alphabet>/<char>/x.png``)."""
    out = []
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot open Omniglot zip {path!r}: {exc}") from None
    with zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            parts = info.filename.strip("/").split("/")
            if info.is_dir() or not parts[-1].lower().endswith(_IMAGE_EXT) or len(parts) < 3:
                continue
            zset = parts[0] if len(parts) >= 4 else (set_name or os.path.splitext(os.path.basename(path))[0])
            alphabet, character = parts[-3], parts[-2]
            out.append((zset, alphabet, character, _decode(zf.read(info), f"{path}:{info.filename}")))
    if not out:
        raise DataError(f"{path!r} holds no Omniglot images (<set>/<alphabet>/<character>/*.png)")
    return out


def _from_dir(path: str, set_name: str) -> list[tuple[str, str, str, np.ndarray]]:
    out = []
    for alphabet in sorted(os.listdir(path)):
        adir = os.path.join(path, alphabet)
        if not os.path.isdir(adir):
            continue
        for character in sorted(os.listdir(adir)):
            cdir = os.path.join(adir, character)
            if not os.path.isdir(cdir):
                continue
            for fname in sorted(os.listdir(cdir)):
                if fname.lower().endswith(_IMAGE_EXT):
                    fpath = os.path.join(cdir, fname)
                    with open(fpath, "rb") as f:
                        out.append((set_name, alphabet, character, _decode(f.read(), fpath)))
    if not out:
        raise DataError(f"{path!r} holds no Omniglot images (<alphabet>/<character>/*.png)")
    return out


def find_set(root: str, set_name: str) -> str:
    """Where ``set_name`` lives under ``root``: a zip or a directory, torchvision layout included."""
    for base in (root, os.path.join(root, "omniglot-py")):
        for candidate in (os.path.join(base, set_name + ".zip"), os.path.join(base, set_name)):
            if os.path.exists(candidate):
                return candidate
    raise DataError(f"Omniglot set {set_name!r} not found under {root!r} (looked for {set_name}.zip and "
                    f"{set_name}/, also inside omniglot-py/)")


def available_sets(root: str) -> list[str]:
    names = set()
    for base in (root, os.path.join(root, "omniglot-py")):
        if os.path.isdir(base):
            for entry in os.listdir(base):
                if entry.startswith("images_"):
                    names.add(entry.removesuffix(".zip"))
    return sorted(names)


class Omniglot(FewShotDataset):
    """Omniglot characters as classes (``<alphabet>/<character>``), with alphabets as groups.

    - ``root``: see the module docstring; default ``$METAEDGE_OMNIGLOT``.
    - ``sets``: set names to read (default: every ``images_*`` set found); a character that appears in
      several sets (Greek/Latin in small1 and small2) is kept once, from the first set.
    - ``alphabets`` / ``exclude_alphabets``: keep / drop alphabets by name.
    - ``rotations``: degrees among 0/90/180/270; each non-zero rotation adds every character again as a new
      class (Snell et al., 2017), named ``<alphabet>/<character>/rot<deg>``.
    - ``mirror``: also add the left-right mirror image of every (rotated) character as a new class
      (``.../mirror``): a mirrored glyph is a different character, so like rotations this multiplies the
      number of base classes.
    - ``size``, ``invert`` (default True: strokes = 1), ``mean``/``std``, ``antialias`` (average 3x3 blocks
      before the 105 -> 28 resize): the pre-processing (see spec).
    """

    def __init__(self, root: str | None = None, sets: Sequence[str] | str | None = None,
                 alphabets: Iterable[str] | None = None, exclude_alphabets: Iterable[str] | None = None,
                 rotations: Sequence[int] = (0,), size: int = 28, invert: bool = True,
                 mean: float = 0.0, std: float = 1.0, mirror: bool = False, antialias: bool = True):
        root = root or os.environ.get(ENV_VAR)
        if not root:
            raise DataError(f"Omniglot: no root given and ${ENV_VAR} is not set")
        if not os.path.exists(root):
            raise DataError(f"Omniglot root {root!r} does not exist")
        rotations = tuple(int(r) for r in rotations)
        if not rotations or any(r not in (0, 90, 180, 270) for r in rotations) or len(set(rotations)) != len(rotations):
            raise DataError(f"rotations: expected distinct values among 0, 90, 180, 270, got {list(rotations)}")
        if os.path.isfile(root):
            records = _from_zip(root, None)
        else:
            sets = [sets] if isinstance(sets, str) else list(sets or available_sets(root))
            if not sets:
                raise DataError(f"no Omniglot sets (images_*.zip or images_*/) found under {root!r}")
            records = []
            for name in sets:
                where = find_set(root, name)
                records += _from_zip(where, name) if where.endswith(".zip") else _from_dir(where, name)
        keep = set(alphabets) if alphabets is not None else None
        drop = set(exclude_alphabets or ())
        found = {r[1] for r in records}
        for name in (keep or set()) | drop:
            if name not in found:
                raise DataError(f"alphabet {name!r} is not in the data (found: {sorted(found)})")
        owner: dict[tuple[str, str], str] = {}
        images, labels, class_names, groups = [], [], [], []
        class_id: dict[tuple[str, str], int] = {}
        for zset, alphabet, character, img in records:
            if (keep is not None and alphabet not in keep) or alphabet in drop:
                continue
            key = (alphabet, character)
            if owner.setdefault(key, zset) != zset:
                continue  # duplicate character from a later set
            if key not in class_id:
                class_id[key] = len(class_names)
                class_names.append(f"{alphabet}/{character}")
                groups.append(alphabet)
            images.append(img)
            labels.append(class_id[key])
        if not images:
            raise DataError("Omniglot: no images left after the alphabet filters")
        pre = PreprocessSpec(size=(size, size), color="gray", invert=bool(invert), mean=(float(mean),),
                             std=(float(std),), antialias=bool(antialias)).validate()
        base = cache_images(images, pre)
        labels_t = torch.tensor(labels, dtype=torch.int64)
        all_images, all_labels, all_names, all_groups = [], [], [], []
        for r, deg in enumerate(rotations):
            # square images: rotating the resized cache equals resizing the rotated original
            all_images.append(torch.rot90(base, k=deg // 90, dims=(2, 3)) if deg else base)
            all_labels.append(labels_t + r * len(class_names))
            all_names += [n if deg == 0 else f"{n}/rot{deg}" for n in class_names]
            all_groups += groups
        if mirror:
            n = len(all_names)
            all_images += [torch.flip(img, dims=(3,)) for img in all_images]
            all_labels += [lab + n for lab in all_labels]
            all_names += [f"{name}/mirror" for name in all_names]
            all_groups += list(all_groups)
        # a character's identity, whichever set, rotation or mirror image it comes from
        keys = ["omniglot/" + _ROTATION_SUFFIX.sub("", n) for n in all_names]
        super().__init__(torch.cat(all_images).contiguous(), torch.cat(all_labels), all_names, pre, all_groups,
                         name="omniglot", class_keys=keys)
        self.alphabets = sorted(set(groups))
