"""PNG plots of a training run and of few-shot results (matplotlib, no display needed)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metaedge._optional import require


def _pyplot():
    matplotlib = require("matplotlib", "plotting")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (a torn last line from a killed run is skipped)."""
    records = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return records
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def training_curve(history: Sequence[dict], path: str | Path, title: str = "meta-training") -> None:
    """Training loss and accuracy, and validation accuracy with its 95% CI, against episodes."""
    plt = _pyplot()
    train = [h for h in history if "train_loss" in h]
    val = [h for h in history if "val_accuracy" in h]
    fig, ax_loss = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ep = [h["episode"] for h in train]
        ax_loss.plot(ep, [h["train_loss"] for h in train], color="tab:red", label="training loss")
    ax_loss.set_xlabel("episode")
    ax_loss.set_ylabel("training loss", color="tab:red")
    ax_acc = ax_loss.twinx()
    if train:
        ax_acc.plot(ep, [100 * h["train_accuracy"] for h in train], color="tab:orange", alpha=0.6,
                    label="training accuracy (episodes)")
    if val:
        vep = [h["episode"] for h in val]
        acc = np.array([100 * h["val_accuracy"] for h in val])
        ci = np.array([100 * h.get("val_ci95", 0.0) for h in val])
        ax_acc.errorbar(vep, acc, yerr=ci, color="tab:blue", marker="o", capsize=3,
                        label="validation accuracy (held-out classes, 95% CI)")
    ax_acc.set_ylabel("accuracy (%)")
    handles = ax_loss.get_legend_handles_labels()[0] + ax_acc.get_legend_handles_labels()[0]
    if handles:
        ax_acc.legend(handles=handles, loc="center right", fontsize=8)
    ax_loss.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def accuracy_vs_shots(results: Sequence[dict], path: str | Path, ways: int) -> None:
    """Accuracy on never-seen classes against shots per class, with 95% CIs (and after adaptation)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    shots = [r["shots"] for r in results]
    acc = [100 * r["accuracy"] for r in results]
    ci = [100 * r["ci95"] for r in results]
    ax.errorbar(shots, acc, yerr=ci, marker="o", capsize=4, label="prototypes (enroll only)")
    adapted = [r for r in results if "adapted" in r]
    if adapted:
        ax.errorbar([r["shots"] for r in adapted], [100 * r["adapted"]["accuracy"] for r in adapted],
                    yerr=[100 * r["adapted"]["ci95"] for r in adapted], marker="s", capsize=4, linestyle="none",
                    color="tab:green", label=f"after adapt_head ({adapted[0]['adapted']['steps']} steps)")
    ax.axhline(100 / ways, color="gray", linestyle=":", label=f"chance ({100 / ways:.0f}%)")
    _shots_axis(ax, shots, "shots per class (images enrolled)", "accuracy (%)")
    ax.set_title(f"{ways}-way accuracy on never-seen classes")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def prediction_grid(samples: Sequence[tuple[np.ndarray, str, str]], path: str | Path, title: str,
                    columns: int = 8, max_images: int = 32) -> None:
    """Query images with true and predicted labels; wrong predictions framed and labelled in red."""
    plt = _pyplot()
    samples = list(samples)[:max_images]
    rows = max(1, int(np.ceil(len(samples) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.35, rows * 1.6), dpi=110, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image, truth, predicted) in zip(axes.ravel(), samples):
        img = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        wrong = truth != predicted
        ax.set_title(f"true {_short(truth)}\npred {_short(predicted)}", fontsize=6,
                     color="red" if wrong else "black")
        if wrong:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2.5)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _shots_axis(ax, shots: Sequence[int], xlabel: str, ylabel: str) -> None:
    """Shots on a log2 axis with a tick per measured value; accuracy in percent, 0-100."""
    if len(shots) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(shots)
    ax.set_xticklabels([str(s) for s in shots])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 101)


def _short(label: str, width: int = 14) -> str:
    label = label.split("/")[-1] if len(label) > width else label
    return label if len(label) <= width else label[: width - 1] + "~"


def evaluation_summary(reports: Sequence[dict], confusion: Sequence[tuple[str, str, int, int]], path: str | Path,
                       title: str = "few-shot evaluation", pairs: int = 12) -> None:
    """``metaedge eval --plot``: accuracy against shots (one line per N-way, 95% CI bars, chance level) and the
    most-confused class pairs (``(true, predicted, errors, queries of true)``, most errors first)."""
    plt = _pyplot()
    fig, (ax, ax_conf) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110, gridspec_kw={"width_ratios": [1, 1.25]})
    for ways in sorted({r["ways"] for r in reports}):
        rows = sorted((r for r in reports if r["ways"] == ways), key=lambda r: r["shots"])
        line = ax.errorbar([r["shots"] for r in rows], [100 * r["mean"] for r in rows],
                           yerr=[100 * r["ci95"] for r in rows], marker="o", capsize=4, label=f"{ways}-way")
        ax.axhline(100 / ways, color=line[0].get_color(), linestyle=":", linewidth=1)
    _shots_axis(ax, sorted({r["shots"] for r in reports}), "shots per class (dotted: chance)",
                "accuracy on never-seen classes (%)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    worst = sorted(confusion, key=lambda c: (-c[2], c[0], c[1]))[:pairs]
    if worst:
        names = [f"{_short(t, 22)} -> {_short(p, 22)}" for t, p, _, _ in worst][::-1]
        rates = [100 * e / max(1, n) for _, _, e, n in worst][::-1]
        bars = ax_conf.barh(range(len(worst)), rates, color="tab:red", alpha=0.75)
        for bar, (_, _, errors, n) in zip(bars, worst[::-1]):
            ax_conf.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {errors}/{n}", va="center",
                         fontsize=7)
        ax_conf.set_yticks(range(len(worst)))
        ax_conf.set_yticklabels(names, fontsize=7)
        ax_conf.set_xlabel("% of the true class's queries given to the other class")
        ax_conf.set_title(f"most-confused class pairs (all settings, {len(confusion)} confused pairs)", fontsize=10)
    else:
        ax_conf.axis("off")
        ax_conf.text(0.5, 0.5, "no confusions (every query right)", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
