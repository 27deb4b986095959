"""What the EdgeClassifier's calls return: predictions, adaptation and calibration reports, timings."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Prediction", "AdaptReport", "CalibrationReport", "Timings"]


@dataclass(frozen=True)
class Prediction:
    """The best class for one image.

    ``label``/``score``: the nearest class and its score - higher is nearer: the cosine similarity in [-1, 1]
    for ``metric="cosine"`` bundles and after adaptation, the dot product for ``"dot"``, minus the squared
    euclidean distance for ``"euclidean"`` (``EdgeClassifier.score_meaning`` says which). ``topk``: the ``k``
    best ``(label, score)`` pairs, best first. ``unknown``: the score is below the open-set threshold - the
    image probably shows none of the enrolled classes (``label`` is still the nearest one). ``confidence``: for
    cosine scores, ``(1 + score) / 2`` in [0, 1] (a rescaling, not a probability); ``None`` for dot and
    euclidean scores, which have no bounded scale.
    """
    label: str
    score: float
    topk: tuple[tuple[str, float], ...]
    unknown: bool
    confidence: float | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "score": self.score, "confidence": self.confidence, "unknown": self.unknown,
                "topk": [{"label": lab, "score": s} for lab, s in self.topk]}


@dataclass(frozen=True)
class AdaptReport:
    """An ``adapt`` run: settings, loss before and after, and what became of unknown rejection for the new head
    (``unknown_threshold``, ``threshold_source`` - ``"recalibrated"`` from the stored calibration set, ``"set"``
    by hand, or a fallback: ``"borrowed"``, ``"manifest"``, ``"off"`` - and ``open_set``, the same in words)."""
    steps: int
    lr: float
    loss_before: float
    loss_after: float
    seconds: float
    classes: int
    support: int                     # embeddings fine-tuned on
    losses: tuple[float, ...] = field(repr=False)
    unknown_threshold: float | None = None
    threshold_source: str = "off"
    open_set: str = ""

    def to_dict(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "loss_before": self.loss_before, "loss_after": self.loss_after,
                "seconds": self.seconds, "classes": self.classes, "support": self.support,
                "unknown_threshold": self.unknown_threshold, "threshold_source": self.threshold_source,
                "open_set": self.open_set}


@dataclass(frozen=True)
class CalibrationReport:
    """A calibration of the unknown threshold, for the head predictions use now (``mode``); ``heads`` has the
    figures of every head calibrated (the prototypes, and the adapted head if there is one). ``known_scores``
    and ``negative_scores`` are the scores it was computed from (for plots: ``metaedge.runtime.plots``)."""
    threshold: float
    target_fpr: float
    fpr: float                # fraction of negatives scoring >= threshold (accepted as known)
    known_accept_rate: float  # fraction of known images accepted (score >= threshold)
    known_correct_rate: float | None  # accepted and right label (labelled knowns only)
    negatives: str            # "others" (images of other classes) or "impostors" (best wrong-class scores)
    n_known: int
    n_negative: int
    mode: str                 # "prototypes" or "adapted": the scores it was calibrated on
    heads: dict = field(default_factory=dict)   # head -> {"threshold", "fpr", ...}
    score: str = ""           # what the scores mean
    known_scores: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    negative_scores: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("known_scores", "negative_scores")}


_SECONDS_ALIASES = {"load": "load_ms", "preprocess": "preprocess_ms", "backbone": "backbone_ms",
                    "kernels": "kernels_ms", "total": "total_ms", "preprocessing": "preprocessing_ms"}


@dataclass(frozen=True)
class Timings:
    """Milliseconds spent in the last call of this thread: image decoding/conversion (``load_ms``), the
    pre-processing kernel (``preprocess_ms``), the network (``backbone_ms``), top-k / prototype updates
    (``kernels_ms``), and ``total_ms`` (which includes the rest: validation, bookkeeping, the gallery commit);
    ``images``: how many images the call handled. ``str()`` gives one readable line."""
    load_ms: float
    preprocess_ms: float
    backbone_ms: float
    kernels_ms: float
    total_ms: float
    images: int

    @classmethod
    def from_seconds(cls, load: float, preprocess: float, backbone: float, kernels: float, total: float,
                     images: int) -> "Timings":
        return cls(1e3 * load, 1e3 * preprocess, 1e3 * backbone, 1e3 * kernels, 1e3 * total, images)

    @property
    def preprocessing_ms(self) -> float:
        """Everything before the network: ``load_ms + preprocess_ms``."""
        return self.load_ms + self.preprocess_ms

    def __getattr__(self, name: str):
        # metaedge <= 0.1 named these fields without the unit and held seconds: still readable, with a warning.
        if name in _SECONDS_ALIASES:
            warnings.warn(f"Timings.{name} (seconds) is deprecated: use Timings.{_SECONDS_ALIASES[name]} "
                          f"(milliseconds)", DeprecationWarning, stacklevel=2)
            return getattr(self, _SECONDS_ALIASES[name]) / 1e3
        raise AttributeError(f"'Timings' object has no attribute {name!r}")

    def __str__(self) -> str:
        return (f"{self.images} image(s): pre-processing {self.preprocessing_ms:.1f} ms (load {self.load_ms:.1f}, "
                f"kernel {self.preprocess_ms:.1f}), backbone {self.backbone_ms:.1f} ms, kernels "
                f"{self.kernels_ms:.2f} ms, total {self.total_ms:.1f} ms")

    def to_dict(self) -> dict:
        return {**self.__dict__, "preprocessing_ms": self.preprocessing_ms}
