"""Code that uses metaedge's public API the way an app does; tests/test_typing.py runs mypy on it (never run).

mypy must find every name through ``import metaedge as me`` (the lazy exports are declared for type checkers),
see real classes and functions rather than ``Any``, and accept these calls.
"""
from __future__ import annotations

from typing import Any

from typing_extensions import assert_type  # typing.assert_type is 3.11+; this file is checked as 3.10

import numpy as np

import metaedge as me
from metaedge.runtime.bundle import Bundle
from metaedge.runtime.classifier import EdgeClassifier, Prediction
from metaedge.runtime.gallery import Gallery


def device_side(frames: np.ndarray) -> list[str]:
    assert_type(me.__version__, str)
    assert_type(me.EdgeClassifier, type[EdgeClassifier])
    assert_type(me.Prediction, type[Prediction])
    assert_type(me.Bundle, type[Bundle])
    assert_type(me.Gallery, type[Gallery])
    info: dict[str, Any] = me.build_info(backends=False)
    clf: me.EdgeClassifier = me.EdgeClassifier("bundle/", gallery="classes.metaedge", backend="auto")
    clf.enroll("bolt_m6", frames)
    pred: me.Prediction = me.Prediction(label="bolt_m6", score=0.9, topk=(("bolt_m6", 0.9),), unknown=False)
    assert_type(pred.label, str)
    assert_type(pred.unknown, bool)
    assert_type(clf.labels, list[str])
    clf.save()
    assert me.cuda.is_available() in (True, False)
    scores, indices = me.kernels.topk(frames, frames, k=5, metric="cosine")
    protos, counts = me.kernels.class_prototypes(frames, np.zeros(len(frames), np.int64), 1)
    return [str(info["version"]), *clf.labels]


def workstation_side() -> None:
    config = me.train.TrainConfig()
    data = me.train.data.SyntheticGlyphs(split="train")
    model = me.train.fit(backbone="conv4", method="protonet", data=data, ways=5, shots=1)
    report = me.train.evaluate(model, data, ways=5, shots=1, episodes=10)
    assert_type(report, me.train.EvalReport)
    me.export.export_bundle(model, "bundle/")
    me.export.build_engine("bundle/", precision="fp16")
    del config
