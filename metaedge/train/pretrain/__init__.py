"""Learning from unlabelled images: self-supervised pretraining (SimCLR, BYOL) and meta-learning on
unsupervised episodes (UMTRA/PsCo-style), with the trainer's features (time budget, exact resume, AMP and
channels_last, TensorBoard, DDP through torchrun).

    import metaedge as me
    from metaedge.train.data import Omniglot, UnlabelledImages
    images = UnlabelledImages.from_folder("frames/")          # or .from_video("site.mp4", step=5), .from_dataset(...)
    model = me.train.pretrain(images, method="simclr", time_budget_s=600, run_dir="runs/pretrain")
    # then few-shot meta-training from it:
    me.train.fit(data=labelled, init="runs/pretrain/last", episodes=2000)
"""
from __future__ import annotations

from typing import Any, Callable

from metaedge.train.config import PretrainConfig


def pretrain(data, method: str = "simclr", backbone: str = "conv4", *, val_data=None, run_dir: str | None = None,
             resume: bool = False, progress: bool = True, tensorboard: bool = True,
             config: PretrainConfig | None = None, callback: Callable[[dict[str, Any]], Any] | None = None,
             data_options: dict | None = None, **options):
    """Train a backbone without labels and return it (the best validated one when ``val_data`` is given).

    ``data``: ``UnlabelledImages`` (a folder, image list or video), or any labelled ``FewShotDataset`` whose
    labels are then ignored. ``method``: ``simclr`` (contrastive), ``byol`` (non-contrastive), or a
    meta-learning method (``protonet``, ``maml``, ``fomaml``, ``reptile``) trained on unsupervised episodes.
    ``options``: any ``PretrainConfig`` field (``batch_size``, ``augment`` - default ``auto``: the glyph preset
    for gray inputs, the natural-image one for RGB -, ``time_budget_s``, ``lr``, ...). ``val_data``: labelled
    held-out classes to measure few-shot accuracy on while training. The rest as ``fit``.
    """
    from metaedge.train.data.unlabelled import UnlabelledImages
    from metaedge.train.trainer import make_config, run_training
    config = make_config(PretrainConfig, config, options, backbone=backbone, method=method)
    if not data.unlabelled:
        data = UnlabelledImages.from_dataset(data)
    return run_training(config, data, val_data, None, run_dir=run_dir, resume=resume, progress=progress,
                        tensorboard=tensorboard, callback=callback, data_options=data_options)


__all__ = ["pretrain", "PretrainConfig"]


class _CallableModule(type(__import__("sys"))):
    """``metaedge.train.pretrain`` is both this package and the function ``pretrain`` (DESIGN section 4's
    ``me.train.pretrain(...)``): importing the package rebinds the attribute of ``metaedge.train`` to it, so
    the package forwards calls to the function (as ``metaedge.train.evaluate`` does)."""

    def __call__(self, *args, **kwargs):
        return pretrain(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
