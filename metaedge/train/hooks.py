"""Hooks of the training loop: metrics (``metrics.jsonl`` + TensorBoard), a progress bar, validation with
best-model keeping, resumable checkpoints, and a user callback. Rank 0 does the writing; every rank takes part
in the barriers."""
from __future__ import annotations

import json
import os
import warnings
from typing import Any, Callable

from metaedge.train.loop import Hook, StepResult


class MetricsLog(Hook):
    """Every ``every`` episodes: mean loss/accuracy over the window, lr, episodes/s, elapsed time -> one line of
    ``<run_dir>/metrics.jsonl`` and TensorBoard scalars (``train/loss``, ``val/accuracy``, ...)."""

    def __init__(self, run_dir: str | None, every: int, tensorboard: bool, main: bool, world_size: int = 1):
        self.every, self.main, self.world_size = every, main, world_size
        self.path = os.path.join(run_dir, "metrics.jsonl") if (run_dir and main) else None
        self.use_tb = tensorboard and self.path is not None
        self.writer = None
        self.latest: dict[str, Any] | None = None
        self._reset(0.0)

    def _reset(self, now: float) -> None:
        self.window = {"loss": 0.0, "acc": 0.0, "n": 0, "t": now}

    def on_start(self, session) -> None:
        import time
        self._reset(time.perf_counter())
        if self.use_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(os.path.join(os.path.dirname(self.path), "tensorboard"),
                                            purge_step=session.state.episode or None)
            except ImportError:
                warnings.warn("TensorBoard scalars skipped: the tensorboard package is not installed", stacklevel=2)

    def on_step(self, session, result: StepResult) -> None:
        import time
        w = self.window
        w["loss"] += result.loss
        w["acc"] += result.accuracy
        w["n"] += 1
        if result.episode % self.every:
            return
        now = time.perf_counter()
        record = {"episode": result.episode, "train_loss": w["loss"] / w["n"], "train_accuracy": w["acc"] / w["n"],
                  "lr": result.lr, "episodes_per_s": w["n"] * self.world_size / max(1e-9, now - w["t"]),
                  "elapsed_s": session.state.elapsed_s, **result.extra}
        if result.grad_norm is not None:
            record["grad_norm"] = result.grad_norm
        self.latest = record
        self.log(record)
        self._reset(now)

    def log(self, record: dict[str, Any]) -> None:
        if not self.main or self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "episode" and isinstance(value, (int, float)):
                    tag = key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key
                    self.writer.add_scalar(tag, value, record["episode"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressBar(Hook):
    """A tqdm bar (rank 0) with the latest logged loss/accuracy, lr, best validation and time left."""

    def __init__(self, total: int | None, description: str, metrics: MetricsLog, time_budget_s: float | None):
        self.total, self.description, self.metrics, self.budget = total, description, metrics, time_budget_s
        self.bar = None

    def on_start(self, session) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=self.total, initial=session.state.episode, unit="ep", dynamic_ncols=True,
                        desc=self.description)

    def on_step(self, session, result: StepResult) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        record = self.metrics.latest
        if record is not None and record["episode"] == result.episode:
            post = {"loss": f"{record['train_loss']:.3f}", "acc": f"{record['train_accuracy']:.3f}",
                    "lr": f"{result.lr:.2e}"}
            if session.state.best_val > float("-inf"):
                post["val"] = f"{session.state.best_val:.3f}"
            if self.budget:
                post["left"] = f"{max(0, self.budget - session.state.elapsed_s):.0f}s"
            self.bar.set_postfix(post)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Validation(Hook):
    """Every ``every`` episodes and at the end: few-shot accuracy on held-out classes (rank 0); the best model is
    kept in memory and written to ``<run_dir>/best``."""

    def __init__(self, every: int, metrics: MetricsLog):
        self.every, self.metrics = every, metrics

    def on_step(self, session, result: StepResult) -> None:
        if result.episode % self.every == 0:
            self.round(session)

    def on_end(self, session) -> None:
        last = session.state.last_val
        if last is None or last.get("episode") != session.state.episode:
            self.round(session)

    def round(self, session) -> None:
        state = session.state
        if session.dist.main:
            result = session.validate()
            state.last_val = {"episode": state.episode, **(result or {})}
            if result is not None:
                self.metrics.log({"episode": state.episode, **result})
                if result["val_accuracy"] > state.best_val:
                    state.best_val, state.best_val_ci95 = result["val_accuracy"], result["val_ci95"]
                    state.best_episode = state.episode
                    session.keep_best(result)
        session.barrier()


class Checkpoints(Hook):
    """``<run_dir>/last`` (weights + optimizer, schedule, RNG and progress: an exact resume) every ``every``
    episodes, and at the end unless it was just written."""

    def __init__(self, every: int):
        self.every = every
        self.saved_at = -1

    def _save(self, session) -> None:
        session.save_last()
        session.barrier()
        self.saved_at = session.state.episode

    def on_step(self, session, result: StepResult) -> None:
        if result.episode % self.every == 0:
            self._save(session)

    def on_end(self, session) -> None:
        if self.saved_at != session.state.episode or session.stop.requested:
            self._save(session)


class Callback(Hook):
    """``fn(info)`` after every step on rank 0; a true return value stops the run cleanly (like Ctrl-C)."""

    def __init__(self, fn: Callable[[dict[str, Any]], Any]):
        self.fn = fn

    def on_step(self, session, result: StepResult) -> None:
        if session.dist.main and self.fn({"episode": result.episode, "loss": result.loss,
                                          "accuracy": result.accuracy, "lr": result.lr,
                                          "elapsed_s": session.state.elapsed_s, "model": session.model}):
            session.stop.request("callback")
