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

import importlib

from metaedge._optional import require

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


def __getattr__(name: str):
    if name in _LAZY or name in _SUBMODULES:
        # Training needs torch; say what to install instead of a bare "No module named 'torch'".
        require("torch", f"metaedge.train.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"metaedge.train.{name}")
    raise AttributeError(f"module 'metaedge.train' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
