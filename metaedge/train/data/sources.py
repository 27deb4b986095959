"""Data sets from a ``DataConfig`` (what ``metaedge train | pretrain | eval`` and stored runs describe).

Source strings: ``synthetic``, ``omniglot[:ROOT]``, a directory of class folders (labelled); ``folder:DIR``,
``list:FILE``, ``video:FILE`` (unlabelled). A labelled source can always be used without its labels.

Class splits: synthetic data and class folders default to their seeded ``train`` split for training (``test``
for evaluation), Omniglot to every class of the chosen sets (a ``--split`` selects part of them, e.g. 10% of
the characters for a label-scarce run). The options are stored with a run, so an evaluation can rebuild the
same split and check that it does not test on classes the model was trained on (``keys_overlap``).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from metaedge.train.config import DataConfig
from metaedge.train.data.base import DataError, FewShotDataset
from metaedge.train.data.unlabelled import UnlabelledImages, default_preprocess

LABELLED_KINDS = ("synthetic", "omniglot", "classes")
UNLABELLED_KINDS = ("folder", "list", "video")


def source_kind(source: str) -> tuple[str, str | None]:
    """``(kind, path)`` of a source string; an error names the accepted forms."""
    if source == "synthetic":
        return "synthetic", None
    if source == "omniglot" or source.startswith("omniglot:"):
        return "omniglot", (source.split(":", 1)[1] or None) if ":" in source else None
    for kind in UNLABELLED_KINDS:
        if source.startswith(kind + ":"):
            path = source.split(":", 1)[1]
            if not path:
                raise DataError(f"--data {source!r}: give a path after '{kind}:'")
            return kind, path
    if os.path.isdir(source):
        return "classes", source
    raise DataError(f"--data {source!r}: not 'synthetic', 'omniglot[:ROOT]', an existing directory of class folders, "
                    f"'folder:DIR', 'list:FILE' or 'video:FILE'")


def _config(cfg: DataConfig | dict) -> DataConfig:
    return cfg if isinstance(cfg, DataConfig) else DataConfig.from_dict(dict(cfg))


def build_labelled(cfg: DataConfig | dict, default_split: str = "train") -> FewShotDataset:
    """The labelled data set a config names (its class split applied)."""
    cfg = _config(cfg)
    kind, path = source_kind(cfg.data)
    split = cfg.split or (default_split if kind != "omniglot" else "all")
    if kind in UNLABELLED_KINDS:
        raise DataError(f"--data {cfg.data!r} has no labels: learn from it with `metaedge pretrain` or "
                        f"`metaedge train --unlabelled`")
    if kind == "synthetic":
        from metaedge.train.data.synthetic import SyntheticGlyphs
        if cfg.invert or cfg.mean or cfg.std or cfg.color not in (None, "gray"):
            raise DataError("synthetic data is gray with strokes = 1; --color/--invert/--mean/--std do not apply")
        return SyntheticGlyphs(None if split == "all" else split, num_classes=cfg.synthetic_classes,
                               samples_per_class=cfg.synthetic_samples, size=cfg.size or 28, seed=cfg.data_seed)
    if kind == "omniglot":
        from metaedge.train.data.omniglot import Omniglot
        if cfg.color not in (None, "gray"):
            raise DataError("Omniglot is gray: --color rgb does not apply")
        data = Omniglot(path, sets=cfg.sets, alphabets=cfg.alphabets, exclude_alphabets=cfg.exclude_alphabets,
                        rotations=cfg.rotations or (0,), mirror=bool(cfg.mirror), size=cfg.size or 28,
                        invert=True if cfg.invert is None else cfg.invert, mean=(cfg.mean or [0.0])[0],
                        std=(cfg.std or [1.0])[0])
        if split == "all":
            return data
        parts = dict(zip(("train", "val", "test"), data.split(cfg.split_fractions, seed=cfg.data_seed,
                                                             by=cfg.split_by)))
        return parts[split]
    from metaedge.train.data.folder import ImageFolderDataset
    return ImageFolderDataset(path, size=cfg.size or 84, color=cfg.color or "rgb", invert=bool(cfg.invert),
                              mean=cfg.mean, std=cfg.std, on_error=cfg.on_error,
                              split=None if split == "all" else split, split_fractions=cfg.split_fractions,
                              split_seed=cfg.data_seed, split_by=cfg.split_by)


def build_unlabelled(cfg: DataConfig | dict, source: str | None = None) -> UnlabelledImages:
    """Images without labels from ``source`` (default ``cfg.data``). Labelled sources lose their labels:
    Omniglot keeps every class of its sets, synthetic data and class folders their ``train`` split unless
    ``--split`` says otherwise (their test classes stay unseen)."""
    cfg = _config(cfg)
    source = source or cfg.data
    kind, path = source_kind(source)
    if kind in LABELLED_KINDS:
        labelled = build_labelled(dataclasses.replace(cfg, data=source,
                                                      split="all" if kind == "omniglot" else cfg.split), "train")
        return UnlabelledImages.from_dataset(labelled)
    pre = default_preprocess(cfg.size or 84, cfg.color or "rgb", bool(cfg.invert), cfg.mean, cfg.std)
    if kind == "folder":
        return UnlabelledImages.from_folder(path, pre, on_error=cfg.on_error)
    if kind == "list":
        return UnlabelledImages.from_list(path, pre, on_error=cfg.on_error)
    return UnlabelledImages.from_video(path, pre, step=cfg.frame_step, max_frames=cfg.max_frames)


@dataclass
class TrainingData:
    """What a run learns from: ``train`` (labelled, or ``UnlabelledImages`` for pretraining), ``val`` (labelled
    held-out classes or None), ``unlabelled`` (extra images of a semi-supervised run, or None), and a ``note``
    for the user (e.g. why there is no validation)."""
    train: FewShotDataset
    val: FewShotDataset | None = None
    unlabelled: UnlabelledImages | None = None
    note: str | None = None


def build_training_data(cfg: DataConfig | dict, command: str = "train") -> TrainingData:
    """The data of a ``train`` (labelled) or ``pretrain`` (labels removed) run, with the validation policy:
    ``--no-val``; ``--val-split F`` (a held-out part of the training classes); ``--val-data`` (another labelled
    source); default: the ``val`` split of synthetic data / class folders trained on their ``train`` split,
    none otherwise."""
    cfg = _config(cfg)
    given = [cfg.val_split is not None, cfg.val_data is not None, bool(cfg.no_val)]
    if sum(given) > 1:
        raise DataError("give at most one of --val-split, --val-data, --no-val")
    if cfg.val_split is not None and not 0 < cfg.val_split < 1:
        raise DataError(f"--val-split: expected a fraction in (0, 1), got {cfg.val_split}")
    kind, _ = source_kind(cfg.data)
    val = None
    if command == "pretrain":
        if cfg.val_split is not None:
            raise DataError("--val-split needs labels; validate a pretraining run on labelled classes with "
                            "--val-data")
        if cfg.unlabelled:
            raise DataError("--unlabelled belongs to `metaedge train`; pretraining data is unlabelled already")
        train = build_unlabelled(cfg)
    else:
        train = build_labelled(cfg, "train")
        if cfg.val_split is not None:
            train, val = train.split((1 - cfg.val_split, cfg.val_split), seed=cfg.data_seed, by=cfg.split_by,
                                     names=("train", "val"))
    if cfg.val_data is not None:
        val = build_labelled(dataclasses.replace(cfg, data=cfg.val_data, sets=cfg.val_sets,
                                                 alphabets=cfg.val_alphabets, exclude_alphabets=None, split=None),
                             "val")
    note = None
    if val is None and not any(given):
        if kind in ("synthetic", "classes") and (cfg.split or "train") == "train":
            val = build_labelled(dataclasses.replace(cfg, split="val"), "val")
        else:
            note = f"no validation data for {cfg.data!r} (use " + ("--val-split or " if command == "train" else "") \
                + "--val-data); the last model will be kept"
    unlabelled = build_unlabelled(cfg, cfg.unlabelled) if cfg.unlabelled else None
    if unlabelled is not None and unlabelled.preprocess != train.preprocess:
        raise DataError(f"--unlabelled {cfg.unlabelled!r}: its pre-processing {unlabelled.preprocess} differs from "
                        f"the labelled data's {train.preprocess}; give --size/--color/... that suit both")
    return TrainingData(train, val, unlabelled, note)
