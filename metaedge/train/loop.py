"""The training loop shared by ``fit`` (meta-training) and ``pretrain`` (self-supervised): a run state, a stop
policy, and hooks for everything that is not the step itself (logging, progress, validation, checkpoints,
callbacks).

    state, stop = RunState(), StopPolicy(episodes=1000, time_budget_s=None)
    why = run_loop(session, hooks)   # session: .state, .stop, .step(episode, progress), .agree(flag)

A hook sees the session after every step (``on_step``) and once at the end (``on_end``); the order of the
hooks is the order of their effects (validate before writing the resumable checkpoint, so that it records the
best score).
"""
from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass
class RunState:
    """Progress of a run; saved with every resumable checkpoint, restored on resume."""
    episode: int = 0
    elapsed_s: float = 0.0                  # training time so far, over every resumed part of the run
    best_val: float = -math.inf
    best_val_ci95: float = 0.0
    best_episode: int = -1
    last_val: dict[str, Any] | None = None  # {"episode": ..., "val_accuracy": ...} of the latest validation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, stored: dict[str, Any]) -> None:
        for key, value in stored.items():
            if hasattr(self, key):
                setattr(self, key, value)


@dataclass
class StepResult:
    """What one training step reports to the hooks."""
    episode: int                 # episodes done, this one included
    loss: float
    accuracy: float
    lr: float
    grad_norm: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


class StopPolicy:
    """A run stops after ``episodes`` steps, after ``time_budget_s`` seconds of training (a resumed run counts
    the time of its earlier parts), or when asked (Ctrl-C, a callback) - whichever comes first.
    ``progress`` (0..1) drives the learning-rate schedule and BYOL's momentum: by count, by time, or the
    larger of the two."""

    def __init__(self, episodes: int | None, time_budget_s: float | None):
        if episodes is None and time_budget_s is None:
            raise ValueError("give episodes= (a count) or time_budget_s= (seconds), or both")
        self.episodes, self.time_budget_s = episodes, time_budget_s
        self.requested: str | None = None
        self._started = time.perf_counter()
        self._before = 0.0

    def start(self, state: RunState) -> None:
        self._started, self._before = time.perf_counter(), state.elapsed_s

    def elapsed(self) -> float:
        return self._before + (time.perf_counter() - self._started)

    def request(self, why: str) -> None:
        """Stop after the current step (the first reason given is kept)."""
        self.requested = self.requested or why

    def reason(self, state: RunState) -> str | None:
        if self.requested:
            return self.requested
        if self.episodes is not None and state.episode >= self.episodes:
            return "episodes"
        if self.time_budget_s is not None and state.elapsed_s >= self.time_budget_s:
            return "time_budget"
        return None

    def progress(self, state: RunState) -> float:
        return max(state.episode / self.episodes if self.episodes else 0.0,
                   state.elapsed_s / self.time_budget_s if self.time_budget_s else 0.0)


class Session(Protocol):
    state: RunState
    stop: StopPolicy

    def step(self, episode: int, progress: float) -> StepResult: ...

    def agree(self, flag: bool) -> bool: ...


class Hook:
    """Something that happens around the steps. ``every``: the hook's period in episodes (None: never)."""

    def on_start(self, session) -> None:
        pass

    def on_step(self, session, result: StepResult) -> None:
        pass

    def on_end(self, session) -> None:
        pass

    def close(self) -> None:
        pass


def run_loop(session: Session, hooks: list[Hook]) -> str:
    """Step until the stop policy says so (every rank stops together); returns why it stopped."""
    state, stop = session.state, session.stop
    stop.start(state)
    for hook in hooks:
        hook.on_start(session)
    try:
        while True:
            state.elapsed_s = stop.elapsed()
            why = stop.reason(state)
            if session.agree(why is not None):
                why = why or "rank 0"
                break
            result = session.step(state.episode, stop.progress(state))
            state.episode = result.episode
            state.elapsed_s = stop.elapsed()
            for hook in hooks:
                hook.on_step(session, result)
        for hook in hooks:
            hook.on_end(session)
    finally:
        for hook in hooks:
            hook.close()
    return why


@contextmanager
def stop_on_interrupt(stop: StopPolicy, enabled: bool = True, command: str = "metaedge train"):
    """Ctrl-C asks the run to stop after the current step (and write its resumable checkpoint); a second Ctrl-C
    aborts. Only in the main thread (signal handlers live there)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):
        if stop.requested == "interrupted":
            raise KeyboardInterrupt
        stop.request("interrupted")
        print(f"\n{command}: stopping after this step and saving a resumable checkpoint (Ctrl-C again to abort)",
              flush=True)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
