"""Meta-learning methods: ProtoNet, MAML (second/first order), Reptile, and the supervised Baseline."""
from __future__ import annotations

from metaedge.train.methods.base import Batch, Method, StepOutput, prototypes, squared_euclidean
from metaedge.train.methods.baseline import Baseline
from metaedge.train.methods.maml import MAML
from metaedge.train.methods.protonet import ProtoNet
from metaedge.train.methods.reptile import Reptile

METHODS = ("protonet", "maml", "fomaml", "reptile", "baseline")

__all__ = ["Batch", "Method", "StepOutput", "prototypes", "squared_euclidean", "ProtoNet", "MAML", "Reptile",
           "Baseline", "METHODS", "build_method"]


def build_method(name: str, *, embedding_dim: int, ways: int, num_classes: int, label_smoothing: float = 0.0,
                 **options) -> Method:
    """A method by name; ``fomaml`` is MAML with ``first_order=True``."""
    if name == "protonet":
        return ProtoNet(label_smoothing=label_smoothing, **options)
    if name in ("maml", "fomaml"):
        if name == "fomaml":
            options["first_order"] = True
        return MAML(ways=ways, embedding_dim=embedding_dim, label_smoothing=label_smoothing, **options)
    if name == "reptile":
        return Reptile(label_smoothing=label_smoothing, **options)
    if name == "baseline":
        return Baseline(num_classes=num_classes, embedding_dim=embedding_dim, label_smoothing=label_smoothing,
                        **options)
    raise ValueError(f"method: expected one of {METHODS}, got {name!r}")
