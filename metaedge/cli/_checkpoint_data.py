"""The data a checkpoint was trained on, rebuilt from the ``DataConfig`` it recorded - for the commands that need
images of it without being told where they are: `metaedge export --int8` (calibration images and held-out
classes) and `metaedge compress` (fine-tuning episodes). The held-out classes are found as `metaedge eval`
finds them (``eval_data_config``): one rule for "classes this checkpoint did not train on"."""
from __future__ import annotations

import numpy as np

from metaedge.cli.main import CliError


def recorded_data_options(meta: dict) -> dict | None:
    """The ``DataConfig`` dict a checkpoint's run was built from (None: not made by `metaedge train/pretrain`)."""
    return ((meta.get("training") or {}).get("data") or {}).get("options")


def _no_record(flags: str) -> CliError:
    return CliError("the checkpoint does not record the data it was trained on (it was not made by `metaedge "
                    f"train`); give the images yourself ({flags})")


def training_data(meta: dict):
    """The checkpoint's training images (labelled, or a pretraining run's unlabelled ones)."""
    from metaedge.train.config import DataConfig
    from metaedge.train.data.base import DataError
    from metaedge.train.data.sources import build_training_data
    options = recorded_data_options(meta)
    if not options:
        raise _no_record("--calibrate DIR")
    command = (meta.get("training") or {}).get("command") or "train"
    try:
        return build_training_data(DataConfig.from_dict({**options, "unlabelled": None}), command).train
    except (DataError, ValueError) as exc:
        raise CliError(f"the checkpoint's recorded training data: {exc} (give --calibrate DIR)") from None


def heldout_data(meta: dict, preprocess):
    """``(dataset, description)`` of classes the checkpoint did not train on, from its own source: what `metaedge
    eval` would evaluate on (the test split of its class split); for a run on every class of some Omniglot sets,
    the alphabets of the other set(s) found beside them. ``(None, why)`` when the source has none."""
    from metaedge.cli.evaluate_cmd import eval_data_config, with_checkpoint_preprocess
    from metaedge.train.config import DataConfig
    from metaedge.train.data.base import DataError
    from metaedge.train.data.sources import build_labelled, source_kind
    options = recorded_data_options(meta)
    if not options:
        return None, "the checkpoint does not record its training data"
    source = str(options.get("data", ""))
    try:
        cfg = eval_data_config({}, options, preprocess)
    except CliError:
        if source_kind(source)[0] != "omniglot":
            return None, f"{source}: every image was used in training"
        seen = sorted(set(training_data(meta).groups))
        cfg = with_checkpoint_preprocess(DataConfig(data=source, exclude_alphabets=seen, split="all"), preprocess)
        try:
            ds = build_labelled(cfg, "test")
        except (DataError, ValueError) as exc:
            return None, f"no Omniglot alphabet outside the {len(seen)} it trained on ({exc})"
        return ds, f"{source}: {ds.num_classes} characters of the alphabets it did not train on"
    try:
        ds = build_labelled(cfg, "test")
    except (DataError, ValueError) as exc:
        return None, str(exc)
    return ds, f"{source}: the test split ({ds.num_classes} classes)"


def fine_tuning_data(meta: dict, given: dict, preprocess):
    """``(train, val, data options)`` to fine-tune a checkpoint on: its recorded training data and validation
    policy, with the data flags ``given`` on top (a ``--data`` naming another source replaces the record)."""
    from metaedge.cli.evaluate_cmd import with_checkpoint_preprocess
    from metaedge.train.config import DataConfig
    from metaedge.train.data.base import DataError
    from metaedge.train.data.sources import build_training_data
    stored = recorded_data_options(meta)
    if not stored and "data" not in given:
        raise _no_record("--data SOURCE")
    same_source = stored and given.get("data", stored["data"]) == stored["data"]
    try:
        cfg = DataConfig.from_dict({**stored, **given, "unlabelled": None} if same_source else given)
        cfg = with_checkpoint_preprocess(cfg, preprocess)
        data = build_training_data(cfg, "train")
    except (DataError, ValueError) as exc:
        raise CliError(("the checkpoint's recorded data: " if same_source else "") + str(exc)) from None
    return data.train, data.val, cfg.to_dict()


def spread_images(dataset, limit: int, seed: int = 0) -> list[np.ndarray]:
    """``limit`` raw uint8 images (HWC) drawn without replacement, seeded, from every part of a data set."""
    n = len(dataset)
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:limit])
    return list(dataset.raw_images(idx))


def labelled_images(dataset) -> tuple[list[np.ndarray], np.ndarray]:
    return list(dataset.raw_images()), dataset.labels.numpy()
