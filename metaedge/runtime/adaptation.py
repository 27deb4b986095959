"""``EdgeClassifier.adapt``'s training: a cosine head fine-tuned on the gallery's support embeddings, starting
from the normalised prototypes (weight imprinting + fine-tuning with ``metaedge.kernels.adapt_head``).

The classifier reads the training set once, calls :func:`train_head` without holding the gallery (other
processes may enroll meanwhile) and installs the result in one transaction; this module only trains."""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from metaedge import kernels


class EmptyGalleryError(ValueError):
    """predict/adapt/calibrate on a gallery without (enough) classes."""


def positive_finite(value, name: str, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``), or a TypeError/ValueError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}`: expected a number, got {type(value).__name__}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"`{name}`: expected a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return v


def check_hyperparameters(steps, lr, momentum, weight_decay, scale) -> dict:
    """The adapt() arguments, checked and converted: ``{"steps", "lr", "momentum", "weight_decay", "scale"}``."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"`steps`: expected an int >= 1, got {steps!r}")
    momentum = positive_finite(momentum, "momentum", allow_zero=True)
    if momentum >= 1:
        raise ValueError(f"`momentum`: expected a value in [0, 1), got {momentum}")
    return {"steps": int(steps), "lr": positive_finite(lr, "lr"), "momentum": momentum,
            "weight_decay": positive_finite(weight_decay, "weight_decay", allow_zero=True),
            "scale": positive_finite(scale, "scale")}


def train_head(training, *, steps: int, lr: float, momentum: float, weight_decay: float, scale: float,
               progress: Callable[[int, int, float], None] | None = None) -> tuple[np.ndarray, dict, list[float]]:
    """Train a head on ``training`` (the gallery's training set: prototypes, support, support_labels, labels).
    Returns ``(weights, info, losses)``; ``info`` is what the gallery records with the head. Raises
    EmptyGalleryError without 2 classes or support, ValueError when the loss diverges (nothing is changed)."""
    start = time.perf_counter()
    if len(training.labels) < 2:
        raise EmptyGalleryError(f"adapt(): needs at least 2 enrolled classes, the gallery has "
                                f"{len(training.labels)}")
    support, labels = training.support, training.support_labels
    if len(support) == 0:
        raise EmptyGalleryError("adapt(): no support embeddings stored (support_cap=0?)")
    weights = kernels.l2_normalize(training.prototypes.copy())
    velocity = np.zeros_like(weights)
    losses: list[float] = []
    chunk = steps if progress is None else max(1, steps // 20)
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        losses.extend(kernels.adapt_head(weights, support, labels, steps=n, lr=lr, momentum=momentum,
                                         weight_decay=weight_decay, scale=scale, velocity=velocity).tolist())
        done += n
        if progress is not None:
            progress(done, steps, losses[-1])
    # The loss at the final weights, by the same kernel: a step's loss is measured before its update, and the
    # update lands on a throw-away copy.
    loss_after = float(kernels.adapt_head(weights.copy(), support, labels, steps=1, lr=1.0, momentum=0.0,
                                          scale=scale)[0])
    if not (np.isfinite(losses).all() and math.isfinite(loss_after)):
        raise ValueError(f"adapt(): the loss diverged (`lr` {lr} too high?); the classes were not changed")
    info = {"steps": steps, "lr": lr, "momentum": momentum, "weight_decay": weight_decay, "scale": scale,
            "loss_before": losses[0], "loss_after": loss_after, "seconds": time.perf_counter() - start,
            "at": time.time(), "support": int(len(support))}
    return weights, info, losses
