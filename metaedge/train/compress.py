"""``compress``: channel-prune a trained backbone, then recover its accuracy with episodic fine-tuning under a
time budget - the result is an ordinary checkpoint (``metaedge export`` as usual).

The fine-tuning is the trainer itself (``fit`` with ``init=`` the pruned checkpoint): the checkpoint's own
method, episode shape, augmentation and data, validation and best-model keeping - only the length (a time
budget or an episode count) and, optionally, the learning rate change. See ``metaedge.train.prune`` for how
channels are chosen and how a pruned architecture is recorded and rebuilt.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from typing import Any

from metaedge.train.checkpoint import save_checkpoint
from metaedge.train.prune import prune_channels

# training options of the original run that fine-tuning does not inherit (how long, where, from what)
# (a distilled student is fine-tuned on its own: the teacher may be gone, and pruning is recovered from the data)
_NOT_INHERITED = {"episodes", "time_budget_s", "init", "backbone_options", "warmup", "step_size", "checkpoint_every",
                  "distill_from", "distill_weight", "distill_logit_weight", "distill_temperature"}


def finetune_config(training: dict, *, time_budget_s: float | None, episodes: int | None, lr: float | None,
                    init: str, overrides: dict[str, Any] | None = None):
    """The ``TrainConfig`` of the fine-tuning: the recorded run's, with its length, start and overrides."""
    from metaedge.train.config import TrainConfig
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    base = {k: v for k, v in (training or {}).items() if k in names and k not in _NOT_INHERITED}
    if base.get("method") not in TrainConfig.allowed_methods:
        base.pop("method", None)  # e.g. a pretraining method: fine-tune episodically with the default
        base.pop("method_options", None)
    base.update(overrides or {})
    if lr is not None:
        base["lr"] = lr
    return TrainConfig.from_dict({**base, "init": init, "time_budget_s": time_budget_s, "episodes": episodes}).validate()


def compress(model, out_dir: str, *, prune: float, data, val_data=None, finetune_s: float | None = 300.0,
             finetune_episodes: int | None = None, lr: float | None = None, round_to: int | None = 8,
             keep_embedding_dim: bool = False, data_options: dict | None = None, progress: bool = True,
             run_dir: str | None = None, **overrides):
    """Prune ``prune`` of the channels of ``model`` (a loaded checkpoint), fine-tune it on ``data`` (the base
    classes; ``val_data``: held-out classes for best-model keeping) for ``finetune_s`` seconds and/or
    ``finetune_episodes`` episodes (both None: no fine-tuning), and save it as a checkpoint in ``out_dir``.
    ``overrides``: other ``TrainConfig`` fields for the fine-tuning (ways, shots, augment, num_threads, ...).
    Returns ``(model, report)``; the report (pruning, fine-tuning, timings) is also in the checkpoint's metrics.
    """
    from metaedge.train.trainer import fit
    start = time.perf_counter()
    training = dict((getattr(model, "checkpoint_meta", None) or {}).get("training") or {})
    pruned, report = prune_channels(model, prune, round_to=round_to, keep_embedding_dim=keep_embedding_dim)
    report["prune_seconds"] = round(time.perf_counter() - start, 1)
    report["source_checkpoint"] = getattr(model, "checkpoint_path", None)
    if finetune_s is None and finetune_episodes is None:
        final, report["finetune"] = pruned, None
    else:
        with tempfile.TemporaryDirectory(prefix="metaedge-pruned-") as tmp:
            save_checkpoint(pruned, tmp, training=training, metrics={"pruned": report})
            config = finetune_config(training, time_budget_s=finetune_s, episodes=finetune_episodes, lr=lr,
                                     init=tmp, overrides=overrides)
            final = fit(config=config, data=data, val_data=val_data, run_dir=run_dir, progress=progress,
                        tensorboard=run_dir is not None, data_options=data_options)
        info = dict(getattr(final, "train_info", {}) or {})
        report["finetune"] = {k: info.get(k) for k in ("method", "episodes", "elapsed_s", "stopped_by",
                                                       "best_val_accuracy", "best_val_ci95", "best_episode")}
        report["finetune"]["config"] = {k: v for k, v in config.to_dict().items() if k != "init"}
        training = {**training, "compressed_from": report["source_checkpoint"]}
    report["seconds"] = round(time.perf_counter() - start, 1)
    os.makedirs(out_dir, exist_ok=True)
    save_checkpoint(final, out_dir, training={**training, "compress": report},
                    metrics={"compress": {k: v for k, v in report.items() if k != "finetune"} | {
                        "finetune": {k: v for k, v in (report["finetune"] or {}).items() if k != "config"} or None}})
    return final, report
