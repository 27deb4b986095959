"""Device-side plots (matplotlib, optional: ``pip install 'metaedge[plot]'``): what a calibration of the unknown
threshold did, as a PNG."""
from __future__ import annotations

import io
import os

import numpy as np

from metaedge._plotting import pyplot
from metaedge.runtime.fileio import atomic_write_bytes

__all__ = ["calibration_plot"]


def _rates(known: np.ndarray, negative: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False-accept rate (negatives scoring >= t) and false-reject rate (known scoring < t) at each t of grid."""
    neg, kno = np.sort(negative), np.sort(known)
    far = 1.0 - np.searchsorted(neg, grid, side="left") / max(len(neg), 1)
    frr = np.searchsorted(kno, grid, side="left") / max(len(kno), 1)
    return far, frr


def calibration_plot(report, path: str | os.PathLike, title: str | None = None) -> str:
    """Write a PNG of a ``CalibrationReport``: the score histograms of the known and the negative images with
    the chosen threshold, and the false-accept / false-reject rates against the threshold with the target
    false-accept rate. The file is written whole or not at all. Returns the path."""
    plt = pyplot("metaedge classes calibrate --plot")
    known = np.asarray(report.known_scores, np.float64)
    negative = np.asarray(report.negative_scores, np.float64)
    both = np.concatenate([known, negative])
    lo, hi = float(both.min()), float(both.max())
    pad = 0.05 * (hi - lo) if hi > lo else 0.05
    bins = np.linspace(lo - pad, hi + pad, 41)
    negatives = "impostors (best wrong-class score)" if report.negatives == "impostors" else "other images"

    fig, (ax_hist, ax_rate) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    ax_hist.hist(known, bins=bins, alpha=0.6, color="tab:blue", label=f"known ({len(known)})")
    ax_hist.hist(negative, bins=bins, alpha=0.6, color="tab:red", label=f"{negatives} ({len(negative)})")
    ax_hist.axvline(report.threshold, color="black", linestyle="--",
                    label=f"threshold {report.threshold:.4f}")
    ax_hist.set_xlabel(f"score ({report.score.split(',')[0]})" if report.score else "score")
    ax_hist.set_ylabel("images")
    ax_hist.set_title("score histograms")
    ax_hist.legend(fontsize=8)

    grid = np.linspace(lo - pad, hi + pad, 400)
    far, frr = _rates(known, negative, grid)
    ax_rate.plot(grid, 100 * far, color="tab:red", label="false accepts (negatives >= threshold)")
    ax_rate.plot(grid, 100 * frr, color="tab:blue", label="false rejects (known < threshold)")
    ax_rate.axvline(report.threshold, color="black", linestyle="--")
    ax_rate.axhline(100 * report.target_fpr, color="tab:gray", linestyle=":",
                    label=f"target false-accept rate {100 * report.target_fpr:g}%")
    ax_rate.plot([report.threshold], [100 * report.fpr], "o", color="tab:red")
    ax_rate.plot([report.threshold], [100 * (1 - report.known_accept_rate)], "o", color="tab:blue")
    ax_rate.set_xlabel("threshold")
    ax_rate.set_ylabel("%")
    ax_rate.set_ylim(-2, 102)
    ax_rate.set_title(f"at the threshold: {100 * report.fpr:.1f}% false accepts, "
                      f"{100 * (1 - report.known_accept_rate):.1f}% false rejects", fontsize=10)
    ax_rate.legend(fontsize=8)
    fig.suptitle(title or f"unknown threshold of the {report.mode} head")
    fig.tight_layout()

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return os.fspath(path)
