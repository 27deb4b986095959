"""Workstation side: backbones, episodic data, meta-learning methods, training, evaluation, checkpoints.

This package may import torch (nothing below it in the layering imports it). Names are resolved on first
use so that ``import metaedge.train`` stays cheap::

    import metaedge as me
    data = me.train.data.SyntheticGlyphs(split="train")
    model = me.train.fit(backbone="conv4", method="protonet", data=data, ways=20, shots=5, queries=15,
                         episodes=2000)
    report = me.train.evaluate(model, me.train.data.SyntheticGlyphs(split="test"), ways=5, shots=1)
    pretrained = me.train.pretrain(me.train.data.UnlabelledImages.from_folder("frames/"), method="simclr",
                                   time_budget_s=600)   # no labels; then fit(..., init=CHECKPOINT)
    me.train.save_checkpoint(model, "runs/glyphs/best")
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from metaedge._lazy import lazy_exports
from metaedge._optional import require

if TYPE_CHECKING:  # what type checkers and IDEs see; resolved lazily by __getattr__ at run time
    from metaedge.train import augment, backbones, checkpoint, data, methods, model, trainer
    from metaedge.train.backbones import BACKBONES, build_backbone
    from metaedge.train.checkpoint import CheckpointError, load_checkpoint, load_resume_state, save_checkpoint
    from metaedge.train.evaluate import EvalReport, evaluate
    from metaedge.train.model import EmbeddingModel
    from metaedge.train.trainer import TrainConfig, fit

_LAZY = {
    "EmbeddingModel": "metaedge.train.model",
    "build_backbone": "metaedge.train.backbones",
    "BACKBONES": "metaedge.train.backbones",
    "save_checkpoint": "metaedge.train.checkpoint",
    "load_checkpoint": "metaedge.train.checkpoint",
    "load_resume_state": "metaedge.train.checkpoint",
    "CheckpointError": "metaedge.train.checkpoint",
    "fit": "metaedge.train.trainer",
    "pretrain": "metaedge.train.pretrain",
    "TrainConfig": "metaedge.train.config",
    "PretrainConfig": "metaedge.train.config",
    "DataConfig": "metaedge.train.config",
    "evaluate": "metaedge.train.evaluate",
    "EvalReport": "metaedge.train.evaluate",
}
_SUBMODULES = {"data", "methods", "backbones", "checkpoint", "model", "trainer", "evaluate", "augment", "config"}

__all__ = sorted(_LAZY) + sorted(_SUBMODULES)


# Hidden from type checkers, which see the imports above instead: with a module __getattr__ they would
# accept any attribute, so a typo such as `me.EdgeClasifier` would pass unnoticed.
if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(
        # Training needs torch: say what to install instead of a bare "No module named 'torch'".
        __name__, _LAZY, _SUBMODULES, globals(), before=lambda name: require("torch", f"metaedge.train.{name}"))
