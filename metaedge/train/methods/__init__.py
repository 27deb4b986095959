"""Training methods: meta-learning (ProtoNet, MAML first/second order, Reptile), the supervised Baseline, and
the self-supervised SimCLR, BYOL and PsCo (``metaedge.train.pretrain.methods``)."""
from __future__ import annotations

from metaedge.train.config import META_METHODS, METHODS, SELF_SUPERVISED
from metaedge.train.methods.base import Batch, Method, StepOutput, prototypes, squared_euclidean
from metaedge.train.methods.baseline import Baseline
from metaedge.train.methods.maml import MAML
from metaedge.train.methods.protonet import ProtoNet
from metaedge.train.methods.reptile import Reptile


__all__ = ["Batch", "Method", "StepOutput", "prototypes", "squared_euclidean", "ProtoNet", "MAML", "Reptile",
           "Baseline", "METHODS", "META_METHODS", "SELF_SUPERVISED", "build_method", "method_class"]


def method_class(name: str) -> type[Method]:
    """The class behind a method name (``fomaml`` is ``MAML``)."""
    if name == "protonet":
        return ProtoNet
    if name in ("maml", "fomaml"):
        return MAML
    if name == "reptile":
        return Reptile
    if name == "baseline":
        return Baseline
    if name in SELF_SUPERVISED:
        from metaedge.train.pretrain import methods
        return {"simclr": methods.SimCLR, "byol": methods.BYOL, "psco": methods.PsCo}[name]
    raise ValueError(f"method: expected one of {METHODS}, got {name!r}")


def build_method(name: str, *, embedding_dim: int, ways: int, num_classes: int, label_smoothing: float = 0.0,
                 **options) -> Method:
    """A method by name; ``fomaml`` is MAML with ``first_order=True``."""
    cls = method_class(name)
    if name == "fomaml":
        options["first_order"] = True
    if cls is MAML:
        return MAML(ways=ways, embedding_dim=embedding_dim, label_smoothing=label_smoothing, **options)
    if cls is Baseline:
        return Baseline(num_classes=num_classes, embedding_dim=embedding_dim, label_smoothing=label_smoothing,
                        **options)
    if name in SELF_SUPERVISED:
        return cls(embedding_dim=embedding_dim, label_smoothing=label_smoothing, **options)
    return cls(label_smoothing=label_smoothing, **options)
