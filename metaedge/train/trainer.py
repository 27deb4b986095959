"""``fit``: episodic (or supervised) training with validation, best-checkpoint keeping and exact resume.

Stop by count (``episodes``) or wall time (``time_budget_s``; both: whichever comes first). Every
``val_every`` episodes the model is evaluated on held-out classes (nearest prototype, the device's path) and
the best one is kept (in memory, and in ``<run_dir>/best`` when a run directory is given). ``<run_dir>/last``
holds the latest weights plus the optimizer, schedule, RNG and episode counter, so ``resume=True`` continues
bit-exactly: episode ``i``'s tasks and augmentations come from generators keyed by ``(seed, rank, i)``.

``fit`` and ``metaedge.train.pretrain.pretrain`` share ``run_training``: a ``TrainingSession`` (the step and
its state, ``session.py``) driven by the small loop of ``loop.py`` with the hooks of ``hooks.py``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from metaedge.train.config import RESUMABLE_CHANGES, TrainConfig, lr_at  # noqa: F401 (public names)
from metaedge.train.data.base import FewShotDataset
from metaedge.train.hooks import Callback, Checkpoints, MetricsLog, ProgressBar, Validation
from metaedge.train.loop import run_loop, stop_on_interrupt
from metaedge.train.session import TrainingSession, _seed_int  # noqa: F401 (tests reproduce the seeding)


def make_config(cls: type[TrainConfig], config: TrainConfig | None, options: dict[str, Any], **base) -> TrainConfig:
    """A validated config from ``config`` and keyword options (unknown names are a TypeError listing the valid)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(options) - names
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; valid: {sorted(names)}")
    if config is None:
        config = cls(**{**base, **options})
    elif options:
        config = dataclasses.replace(config, **options)
    return config.validate()


def run_training(config: TrainConfig, data: FewShotDataset, val_data: FewShotDataset | None = None,
                 unlabelled: FewShotDataset | None = None, *, run_dir: str | None = None, resume: bool = False,
                 progress: bool = True, tensorboard: bool = True,
                 callback: Callable[[dict[str, Any]], Any] | None = None, data_options: dict | None = None):
    """Build the session, run the loop with its hooks, return the best validated (else the last) model."""
    session = TrainingSession(config, data, val_data, unlabelled, run_dir, resume,
                              {"options": data_options} if data_options else None)
    session.prepare_run_dir()
    c, main = session.config, session.dist.main
    metrics = MetricsLog(run_dir, c.log_every, tensorboard, main, session.dist.world_size)
    hooks = [metrics]
    if progress and main:
        shape = (f"bs{c.batch_size}" if (session.method.self_supervised or not session.method.episodic)
                 else f"{c.ways}w{c.shots}s")
        hooks.append(ProgressBar(c.episodes, f"{c.method} {c.backbone} {shape}", metrics, c.time_budget_s))
    hooks += [Validation(c.val_every, metrics), Checkpoints(c.checkpoint_every or c.val_every)]
    if callback is not None:
        hooks.append(Callback(callback))
    session.model.train()
    session.method.train()
    with stop_on_interrupt(session.stop, enabled=main, command=f"metaedge {c.command}"):
        why = run_loop(session, hooks)
    return session.final_model(why)


def fit(backbone: str = "conv4", method: str = "protonet", data: FewShotDataset | None = None, *,
        val_data: FewShotDataset | None = None, unlabelled: FewShotDataset | None = None, run_dir: str | None = None,
        resume: bool = False, progress: bool = True, tensorboard: bool = True, config: TrainConfig | None = None,
        callback: Callable[[dict[str, Any]], Any] | None = None, data_options: dict | None = None,
        **options) -> "EmbeddingModel":  # noqa: F821
    """Train a backbone and return the best validated ``EmbeddingModel`` (the last one without ``val_data``).

    ``data``: the base classes (a ``FewShotDataset``: ``SyntheticGlyphs``, ``Omniglot``,
    ``ImageFolderDataset``); default: ``SyntheticGlyphs("train")`` with ``SyntheticGlyphs("val")`` for
    validation. ``val_data``: held-out classes for validation and best-model keeping. ``unlabelled``: extra
    images without labels (``UnlabelledImages``, or any data set: its labels are ignored); ``unlabelled_ratio``
    of the episodes are then unsupervised episodes of them. ``options``: any ``TrainConfig`` field (ways,
    shots, queries, episodes, time_budget_s, lr, optimizer, schedule, init, ...; ``init=CHECKPOINT`` starts
    from a pretrained backbone). ``run_dir``: where ``config.json``, ``metrics.jsonl``, TensorBoard scalars
    and the ``best``/``last`` checkpoints go; with ``resume=True`` training continues from ``run_dir/last``.
    ``data_options``: the ``DataConfig`` the data was built from, stored so that ``metaedge eval`` can rebuild
    the class split. ``callback(info)`` is called after every step on rank 0; returning True stops training
    cleanly (the last checkpoint is written, so the run can be resumed). Ctrl-C does the same (a second
    Ctrl-C aborts).
    """
    config = make_config(TrainConfig, config, options, backbone=backbone, method=method)
    if data is None:
        from metaedge.train.data.synthetic import SyntheticGlyphs
        data = SyntheticGlyphs(split="train")
        if val_data is None:
            val_data = SyntheticGlyphs(split="val")
    if data.unlabelled:
        raise ValueError(f"fit: {data.name} has no labels; pretrain on it (metaedge.train.pretrain) or pass it as "
                         f"unlabelled= next to labelled data")
    if unlabelled is not None and not unlabelled.unlabelled:
        from metaedge.train.data.unlabelled import UnlabelledImages
        unlabelled = UnlabelledImages.from_dataset(unlabelled)
    return run_training(config, data, val_data, unlabelled, run_dir=run_dir, resume=resume, progress=progress,
                        tensorboard=tensorboard, callback=callback, data_options=data_options)
