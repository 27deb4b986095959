"""Open-set recognition: what a score means, and when it means "none of the enrolled classes".

Scores, per head (the class matrix ``predict`` scores against):

- the prototypes of a ``cosine`` bundle, and the adapted head after ``adapt`` (always cosine): the cosine
  similarity in [-1, 1]; its *confidence* is ``(1 + score) / 2`` in [0, 1] - the same order, on a scale people
  read as a percentage. It is not a probability (calibrate a threshold for that question);
- a ``dot`` bundle: the dot product, unbounded (no confidence);
- a ``euclidean`` bundle: minus the squared euclidean distance, <= 0 (no confidence).

Higher is nearer in every case. A prediction is *unknown* when its score is below the open-set threshold of the
head in use. A threshold is calibrated from data (:func:`calibrate_head`): the scores of images of enrolled
classes (*known*) and of *negatives* - images of none of the classes (*others*), or, without them, each known
image's best score among the *other* classes (*impostors*) - set it just above all but ``target_fpr`` of the
negatives. The gallery keeps the embeddings it was calibrated from (:class:`CalibrationSet`), so when ``adapt``
installs a new head its threshold is computed again from the same images at the same target false-accept rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from metaedge import kernels

__all__ = ["HEADS", "SOURCES", "score_meaning", "confidence", "threshold_at_fpr", "CalibrationSet",
           "HeadCalibration", "calibrate_head", "resolve_threshold", "OpenSetState", "open_set_state"]

HEADS = ("prototypes", "adapted")
# How a stored threshold was set (the gallery's open-set record says which, per head).
SOURCES = {
    "calibrated": "calibrated from the stored calibration set",
    "recalibrated": "re-calibrated after adapt from the stored calibration set",
    "set": "set by hand (Gallery.set_threshold)",
    "migrated": "calibrated before galleries kept their calibration set (re-run classes calibrate)",
}
# How a threshold in use was found when the head has none stored.
FALLBACKS = {
    "borrowed": "the prototypes head's (same cosine scale; not re-calibrated for this head)",
    "manifest": "the bundle manifest's unknown_threshold",
    "override": "given to this classifier (unknown_threshold= / --threshold)",
    "off": "none: open-set rejection is off for this head",
}

_MEANINGS = {"cosine": "cosine similarity in [-1, 1]",
             "dot": "dot product (unbounded)",
             "euclidean": "minus the squared euclidean distance (<= 0)"}


def score_meaning(metric: str) -> str:
    """What a score of this metric is, in words (higher is nearer for every metric)."""
    return _MEANINGS[metric] + ", higher is nearer" + ("; confidence = (1 + score) / 2" if metric == "cosine" else "")


def confidence(scores, metric: str):
    """The normalised confidence of cosine scores, ``(1 + score) / 2`` clipped to [0, 1] (a float for a float,
    an array for an array); ``None`` for metrics without a bounded scale (dot, euclidean)."""
    if metric != "cosine":
        return None
    if isinstance(scores, np.ndarray):
        return np.clip((1.0 + scores) * 0.5, 0.0, 1.0)
    return min(1.0, max(0.0, (1.0 + float(scores)) * 0.5))


def threshold_at_fpr(negatives: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold (scores >= it are accepted as known) that accepts at most ``floor(target_fpr * n)``
    of the ``n`` negative scores: just above the (allowed + 1)-th highest (in float32, as scores are)."""
    desc = np.sort(np.asarray(negatives, np.float64))[::-1]
    allowed = int(math.floor(target_fpr * len(desc)))
    if allowed >= len(desc):
        return float(desc[-1])
    return float(np.nextafter(np.float32(desc[allowed]), np.float32(np.inf)))


@dataclass(frozen=True)
class CalibrationSet:
    """The embeddings a threshold is calibrated from: ``known`` ``[n, d]`` with ``known_uids`` (the class id of
    each row, -1 for images given without a label) and ``other`` ``[m, d]`` (images of none of the classes; m
    may be 0). A known row whose class has since been forgotten counts as a negative."""
    known: np.ndarray
    known_uids: np.ndarray
    other: np.ndarray

    def __len__(self) -> int:
        return len(self.known) + len(self.other)


@dataclass(frozen=True)
class HeadCalibration:
    """One head calibrated: its threshold and what it does on the calibration set."""
    head: str                          # "prototypes" or "adapted"
    threshold: float
    target_fpr: float
    fpr: float                         # negatives accepted as known (score >= threshold)
    known_accept_rate: float           # known images accepted
    known_correct_rate: float | None   # accepted with the right label (labelled known images only)
    negatives: str                     # "others" or "impostors"
    n_known: int
    n_negative: int
    known_scores: np.ndarray = field(repr=False, compare=False)
    negative_scores: np.ndarray = field(repr=False, compare=False)

    def summary(self) -> dict:
        """The figures (no score arrays), as the gallery's open-set record keeps them."""
        return {"threshold": self.threshold, "target_fpr": self.target_fpr, "fpr": self.fpr,
                "known_accept_rate": self.known_accept_rate, "known_correct_rate": self.known_correct_rate,
                "negatives": self.negatives, "n_known": self.n_known, "n_negative": self.n_negative}


def calibrate_head(head: str, weights: np.ndarray, metric: str, class_uids: np.ndarray, cset: CalibrationSet,
                   target_fpr: float, negatives: str) -> HeadCalibration | None:
    """Calibrate the head ``weights`` (rows = classes ``class_uids``, ascending) on ``cset``: ``negatives`` is
    ``"others"`` (the ``other`` images) or ``"impostors"`` (each labelled known image's best score among the
    other classes). Known rows of forgotten classes are negatives in both cases. ``None`` when there is no
    negative to calibrate on."""
    class_uids = np.asarray(class_uids, np.int64)
    n_classes = len(class_uids)
    k = min(2, n_classes)
    labelled = cset.known_uids >= 0
    at_clipped = np.minimum(np.searchsorted(class_uids, cset.known_uids), max(n_classes - 1, 0))
    present = labelled & (class_uids[at_clipped] == cset.known_uids) if n_classes else np.zeros_like(labelled)
    gone = labelled & ~present
    if len(cset.known) and n_classes:
        s, i = kernels.topk(cset.known, weights, k, metric)
    else:
        s, i = np.zeros((len(cset.known), max(k, 1)), np.float32), np.zeros((len(cset.known), max(k, 1)), np.int64)
    mine = ~gone
    known_scores = s[mine, 0].astype(np.float64)
    negative_parts = [s[gone, 0]]
    if negatives == "others":
        if len(cset.other) and n_classes:
            negative_parts.append(kernels.topk(cset.other, weights, 1, metric)[0][:, 0])
    elif k == 2:
        right = i[present, 0] == at_clipped[present]
        negative_parts.append(np.where(right, s[present, 1], s[present, 0]))
    negative_scores = np.concatenate(negative_parts).astype(np.float64)
    if len(negative_scores) == 0:
        return None
    threshold = threshold_at_fpr(negative_scores, target_fpr)
    accepted = s[:, 0] >= threshold
    correct_rate = None
    if present.any():
        correct_rate = float(np.mean(accepted[present] & (i[present, 0] == at_clipped[present])))
    return HeadCalibration(head, threshold, float(target_fpr), float(np.mean(negative_scores >= threshold)),
                           float(np.mean(known_scores >= threshold)) if len(known_scores) else 0.0, correct_rate,
                           negatives, int(len(known_scores)), int(len(negative_scores)), known_scores,
                           negative_scores)


def resolve_threshold(adapted: bool, metric: str, thresholds: dict, manifest: float | None) -> tuple[float | None, str]:
    """The threshold predictions of a head use when nothing overrides it, and where it comes from: the head's
    own (``"stored"``), for the adapted head of a cosine gallery the prototypes head's (``"borrowed"``: same
    scale), the bundle manifest's (``"manifest"``; for the adapted head only on the cosine scale), or none
    (``"off"``)."""
    cosine = metric == "cosine"
    if adapted:
        t = thresholds.get("adapted")
        if t is not None:
            return t, "stored"
        if cosine and thresholds.get("prototypes") is not None:
            return thresholds["prototypes"], "borrowed"
        return (manifest, "manifest") if cosine and manifest is not None else (None, "off")
    t = thresholds.get("prototypes")
    if t is not None:
        return t, "stored"
    return (manifest, "manifest") if manifest is not None else (None, "off")


@dataclass(frozen=True)
class OpenSetState:
    """The open-set state of a gallery (and classifier): the head predictions use now, its threshold and where
    that comes from, the record of each head's stored threshold, and the stored calibration set."""
    head: str                        # "prototypes" or "adapted": what predict scores against now
    threshold: float | None          # what predict applies (None: rejection off)
    source: str                      # "calibrated" / "recalibrated" / "set" / "migrated" / a FALLBACKS key
    target_fpr: float | None         # the false-accept rate it was calibrated for (None if not calibrated)
    score: str                       # what the head's scores mean
    heads: dict                      # head -> {"threshold", "how", figures of its calibration...} (stored ones)
    calibration: dict | None         # the stored calibration set: target FPR, negatives, sizes, when

    @property
    def rejecting(self) -> bool:
        return self.threshold is not None

    def explain(self) -> str:
        """One line: the head in use, its threshold and where it comes from."""
        if self.threshold is None:
            return f"{self.head} head: no threshold - unknowns are not rejected (run `metaedge classes calibrate`)"
        how = SOURCES.get(self.source) or FALLBACKS.get(self.source, self.source)
        fpr = f", target false-accept rate {100 * self.target_fpr:g}%" if self.target_fpr is not None else ""
        return f"{self.head} head: threshold {self.threshold:.4f} ({how}{fpr})"

    def to_dict(self) -> dict:
        return {"head": self.head, "threshold": self.threshold, "source": self.source,
                "source_means": SOURCES.get(self.source) or FALLBACKS.get(self.source), "target_fpr": self.target_fpr,
                "score": self.score, "heads": self.heads, "calibration": self.calibration}


def open_set_state(*, adapted: bool, metric: str, thresholds: dict, record: dict, manifest: float | None = None,
                   override=None, overridden: bool = False) -> OpenSetState:
    """The :class:`OpenSetState` of a gallery: ``thresholds`` and ``record`` (its stored open-set record:
    ``{"heads": {...}, "calibration": ...}``), the head in use, the bundle manifest's threshold, and an override
    (``overridden``: one is set, ``override`` its value - None turns rejection off)."""
    head = "adapted" if adapted else "prototypes"
    heads = {h: {"threshold": thresholds.get(h), **(record.get("heads") or {}).get(h, {"how": "set"})}
             for h in HEADS if thresholds.get(h) is not None}
    if overridden:
        value, source = override, "override" if override is not None else "off"
    else:
        value, source = resolve_threshold(adapted, metric, thresholds, manifest)
        if source == "stored":
            source = heads[head]["how"]
    used = heads.get(head) if source in SOURCES else None
    target = used.get("target_fpr") if used else None
    score = score_meaning("cosine" if adapted else metric)
    return OpenSetState(head, value, source, target, score, heads, record.get("calibration"))
