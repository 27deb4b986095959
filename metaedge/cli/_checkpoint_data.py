"""The data a checkpoint was trained on, rebuilt from what it recorded - for the commands that need images of
it without being told where they are: `metaedge export --int8` (calibration images and held-out classes) and
`metaedge compress` (fine-tuning episodes)."""
from __future__ import annotations

import numpy as np

from metaedge.cli.main import CliError


def _data_options(meta: dict) -> dict | None:
    data = ((meta.get("training") or {}).get("data") or {})
    return (data.get("cli") or {}).get("data") or data.get("options")


def training_data(meta: dict, split: str = "train"):
    """The checkpoint's training data set (``split="test"``: the held-out classes of a split-able source)."""
    from metaedge.cli.train_cmd import build_dataset
    options = _data_options(meta)
    if not options:
        raise CliError("the checkpoint does not record the data it was trained on (it was not made by `metaedge "
                       "train`); give the images yourself (--calibrate DIR / --data SOURCE)")
    return build_dataset({**options, "split": split} if split != "train" else options, split)


def heldout_data(meta: dict):
    """``(dataset, description)`` of classes the checkpoint did not train on, from its own source: the test split
    of synthetic data / class folders; for Omniglot the alphabets of the other background set(s) it did not
    read. ``(None, why)`` when the source has none."""
    options = _data_options(meta) or {}
    source = str(options.get("data", ""))
    if not source:
        return None, "the checkpoint does not record its training data"
    if source.startswith("omniglot"):
        from metaedge.train.data import DataError, Omniglot
        trained = training_data(meta)
        seen = sorted(set(trained.groups))
        root = source.split(":", 1)[1] if ":" in source else None
        try:
            ds = Omniglot(root, exclude_alphabets=seen, size=options.get("size") or 28,
                          invert=True if options.get("invert") is None else options["invert"],
                          mean=(options.get("mean") or [0.0])[0], std=(options.get("std") or [1.0])[0])
        except DataError as exc:
            return None, f"no Omniglot alphabet outside the {len(seen)} it trained on ({exc})"
        return ds, f"{source}: {ds.num_classes} characters of the alphabets it did not train on"
    try:
        ds = training_data(meta, "test")
    except (CliError, ValueError) as exc:
        return None, str(exc)
    return ds, f"{source}: the test split ({ds.num_classes} classes)"


def spread_images(dataset, limit: int, seed: int = 0) -> list[np.ndarray]:
    """``limit`` raw uint8 images (HWC) drawn without replacement, seeded, from every part of a data set."""
    n = len(dataset)
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:limit])
    return list(dataset.raw_images(idx))


def labelled_images(dataset) -> tuple[list[np.ndarray], np.ndarray]:
    return list(dataset.raw_images()), dataset.labels.numpy()
