"""``fit``: episodic (or supervised) training with validation, best-checkpoint keeping and exact resume.

Stop by count (``episodes``) or wall time (``time_budget_s``; both: whichever comes first). Every
``val_every`` episodes the model is evaluated on held-out classes (nearest prototype, the device's path) and
the best one is kept (in memory, and in ``<run_dir>/best`` when a run directory is given). ``<run_dir>/last``
holds the latest weights plus the optimizer, schedule, RNG and episode counter, so ``resume=True`` continues
bit-exactly: episode ``i``'s tasks and augmentations come from generators keyed by ``(seed, rank, i)``.

Distributed: launched by ``torchrun --nproc_per_node=N``, each rank samples different episodes; gradients are
averaged (DistributedDataParallel for ProtoNet and the Baseline; an explicit all-reduce for MAML/Reptile,
whose inner loops call ``autograd.grad`` inside the forward pass); rank 0 validates, logs and checkpoints.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from metaedge.train.augment import make_augment
from metaedge.train.backbones import build_backbone
from metaedge.train.checkpoint import (CheckpointError, atomic_write_json, has_resume_state, load_resume_state,
                                       save_checkpoint)
from metaedge.train.data.base import FewShotDataset
from metaedge.train.data.samplers import ClassBalancedBatchSampler, TaskSampler
from metaedge.train.methods import METHODS, Batch, build_method

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
ADVERSARIAL = (None, "fgsm", "pgd")
# options that may change when a run is resumed (how long / how often), everything else must match
RESUMABLE_CHANGES = {"episodes", "time_budget_s", "val_every", "checkpoint_every", "log_every", "device",
                     "num_threads", "val_episodes"}


@dataclass
class TrainConfig:
    """Every training option (JSON-serialisable; stored in ``config.json`` and in checkpoints)."""
    backbone: str = "conv4"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    method: str = "protonet"
    method_options: dict[str, Any] = field(default_factory=dict)
    ways: int = 5
    shots: int = 1
    queries: int = 15
    replacement: bool = False
    batch_size: int = 128                 # Baseline only
    classes_per_batch: int | None = None  # Baseline only
    episodes: int | None = None
    time_budget_s: float | None = None
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9                 # SGD
    schedule: str = "cosine"
    warmup: int = 0                       # episodes of linear warm-up
    step_size: int | None = None          # step schedule: episodes between decays (default: a third of the run)
    gamma: float = 0.5                    # step schedule: decay factor
    min_lr_ratio: float = 0.0             # cosine: final lr = lr * min_lr_ratio
    label_smoothing: float = 0.0
    adversarial: str | None = None        # "fgsm" | "pgd" on the query set
    adv_eps: float = 0.03
    adv_steps: int = 3
    adv_alpha: float | None = None
    grad_clip: float | None = None        # max global gradient norm
    amp: str = "auto"                     # auto (CUDA: bf16/fp16; CPU with native bf16: bf16), off, bf16, fp16
    channels_last: str = "auto"           # auto (CUDA, or CPU with oneDNN), on, off
    augment: Any = None                   # None | preset name | dict of Augment fields
    seed: int = 0
    val_every: int = 500
    val_episodes: int = 200
    val_ways: int | None = None
    val_shots: int | None = None
    val_queries: int = 15
    val_method: str = "prototype"
    checkpoint_every: int | None = None   # default: val_every
    log_every: int = 20
    device: str = "auto"
    num_threads: int | None = None

    def validate(self) -> "TrainConfig":
        def need(cond, msg):
            if not cond:
                raise ValueError(msg)
        need(self.method in METHODS, f"method: expected one of {METHODS}, got {self.method!r}")
        need(self.ways >= 2 and self.shots >= 1 and self.queries >= 1,
             f"ways >= 2, shots >= 1 and queries >= 1 are needed, got {self.ways}/{self.shots}/{self.queries}")
        need(self.episodes is not None or self.time_budget_s is not None,
             "give episodes= (a count) or time_budget_s= (seconds), or both")
        need(self.episodes is None or self.episodes >= 1, f"episodes: expected >= 1, got {self.episodes}")
        need(self.time_budget_s is None or self.time_budget_s > 0, "time_budget_s: expected > 0")
        need(self.optimizer in OPTIMIZERS, f"optimizer: expected one of {OPTIMIZERS}, got {self.optimizer!r}")
        need(self.schedule in SCHEDULES, f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        need(self.lr > 0, f"lr: expected > 0, got {self.lr}")
        need(self.adversarial in ADVERSARIAL, f"adversarial: expected one of {ADVERSARIAL}, got {self.adversarial!r}")
        need(self.amp in ("auto", "off", "bf16", "fp16"), f"amp: expected auto/off/bf16/fp16, got {self.amp!r}")
        need(self.channels_last in ("auto", "on", "off"), f"channels_last: expected auto/on/off, got "
                                                          f"{self.channels_last!r}")
        need(self.val_every >= 1 and self.log_every >= 1, "val_every and log_every must be >= 1")
        need(self.val_method in ("prototype", "adapt_head", "maml", "reptile"),
             f"val_method: unknown {self.val_method!r}")
        need(0 <= self.label_smoothing < 1, "label_smoothing: expected in [0, 1)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training option(s): {sorted(unknown)}")
        return cls(**d)


# ------------------------------------------------------------------------------------------ helpers
def lr_at(config: TrainConfig, episode: int, progress: float) -> float:
    """Learning rate for ``episode`` (``progress`` = fraction of the run done, by count or by time)."""
    base = config.lr
    if config.warmup and episode < config.warmup:
        return base * (episode + 1) / config.warmup
    if config.schedule == "constant":
        return base
    if config.schedule == "step":
        if config.step_size:
            return base * config.gamma ** (episode // config.step_size)
        return base * config.gamma ** min(2, int(progress * 3))
    warm = config.warmup / config.episodes if (config.episodes and config.warmup) else 0.0
    p = min(1.0, max(0.0, (progress - warm) / max(1e-12, 1.0 - warm)))
    return base * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def _make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=config.momentum > 0)


def _seed_int(*parts: int) -> int:
    import numpy as np
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class _Joint(torch.nn.Module):
    """Backbone + method in one module, so DistributedDataParallel sees (and syncs) both."""

    def __init__(self, model, method):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, batch: Batch):
        return self.method.forward_loss(self.model, batch)


@dataclass
class _Dist:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_setup(device_pref: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist
    here = False
    if not dist.is_initialized():
        # initialised once per process and kept: destroying and re-creating a group under torchrun's store can
        # deadlock, and a script may call fit() several times; it is torn down at exit
        use_cuda = torch.cuda.is_available() and device_pref != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        import atexit
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
        here = True
    return _Dist(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), here)


def _resolve_device(pref: str, d: _Dist) -> torch.device:
    if pref == "auto":
        return torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: CUDA was asked for but torch sees no CUDA device")
    if dev.type == "cuda" and d.world_size > 1 and dev.index is None:
        dev = torch.device(f"cuda:{d.local_rank}")
    return dev


def _describe_data(data: FewShotDataset | None) -> dict[str, Any] | None:
    if data is None:
        return None
    return {"name": data.name, "classes": data.num_classes, "images": len(data),
            "preprocess": data.preprocess.to_dict()}


# ------------------------------------------------------------------------------------------------ fit
def fit(backbone: str = "conv4", method: str = "protonet", data: FewShotDataset | None = None, *,
        val_data: FewShotDataset | None = None, run_dir: str | None = None, resume: bool = False,
        progress: bool = True, tensorboard: bool = True, config: TrainConfig | None = None,
        callback: Callable[[dict[str, Any]], Any] | None = None, data_description: dict | None = None,
        **options) -> "EmbeddingModel":  # noqa: F821
    """Train a backbone and return the best validated ``EmbeddingModel`` (the last one without ``val_data``).

    ``data``: the base classes (a ``FewShotDataset``: ``SyntheticGlyphs``, ``Omniglot``,
    ``ImageFolderDataset``); default: ``SyntheticGlyphs("train")`` with ``SyntheticGlyphs("val")`` for
    validation. ``val_data``: held-out classes for validation and best-model keeping. ``options``: any
    ``TrainConfig`` field (ways, shots, queries, episodes, time_budget_s, lr, optimizer, schedule, ...).
    ``run_dir``: where ``config.json``, ``metrics.jsonl``, TensorBoard scalars and the ``best``/``last``
    checkpoints go; with ``resume=True`` training continues from ``run_dir/last``.
    ``callback(info)`` is called after every step on rank 0; returning True stops training cleanly (the last
    checkpoint is written, so the run can be resumed). Ctrl-C does the same (a second Ctrl-C aborts).
    """
    if config is None:
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = set(options) - names
        if unknown:
            raise TypeError(f"fit() got unknown option(s) {sorted(unknown)}; valid: {sorted(names)}")
        config = TrainConfig(backbone=backbone, method=method, **options)
    elif options:
        config = dataclasses.replace(config, **options)
    config.validate()
    if data is None:
        from metaedge.train.data.synthetic import SyntheticGlyphs
        data = SyntheticGlyphs(split="train")
        if val_data is None:
            val_data = SyntheticGlyphs(split="val")
    if val_data is not None and (val_data.preprocess != data.preprocess):
        raise ValueError(f"val_data pre-processing {val_data.preprocess} differs from the training data's "
                         f"{data.preprocess}")
    trainer = _Trainer(config, data, val_data, run_dir, resume, progress, tensorboard, callback, data_description)
    return trainer.run()


class _Trainer:
    def __init__(self, config: TrainConfig, data, val_data, run_dir, resume, progress, tensorboard, callback,
                 data_description):
        self.config, self.data, self.val_data = config, data, val_data
        self.run_dir, self.resume, self.progress, self.use_tb = run_dir, resume, progress, tensorboard
        self.callback = callback
        self.data_description = data_description or {"train": _describe_data(data), "val": _describe_data(val_data)}
        if resume and not run_dir:
            raise ValueError("resume=True needs the run_dir of the run to continue")

    # ------------------------------------------------------------------------------------------ setup
    def _setup(self):
        c = self.config
        if c.num_threads:
            torch.set_num_threads(int(c.num_threads))
        self.dist = _dist_setup(c.device)
        self.device = _resolve_device(c.device, self.dist)
        torch.manual_seed(_seed_int(c.seed, 0xB1))  # weight init identical on every rank
        model = build_backbone(c.backbone, preprocess=self.data.preprocess, **c.backbone_options)
        method = build_method(c.method, embedding_dim=model.spec.embedding_dim, ways=c.ways,
                              num_classes=self.data.num_classes, label_smoothing=c.label_smoothing,
                              **c.method_options)
        if method.metric != model.spec.metric:
            model.spec = dataclasses.replace(model.spec, metric=method.metric)
            model.backbone_options["metric"] = method.metric
        self.is_cuda = self.device.type == "cuda"
        # channels-last pays on CUDA and with oneDNN on CPU (conv4 on 2 cores: ~1.25x)
        self.channels_last = c.channels_last == "on" or (c.channels_last == "auto" and (
            self.is_cuda or torch.backends.mkldnn.is_available()))
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.method = method.to(self.device)
        self.model.train_info = {"method": c.method, "method_options": method.options()}
        amp = c.amp
        if amp == "auto":
            if self.is_cuda:
                amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:  # CPUs with native bf16 (AVX512-BF16 / AMX) run oneDNN convolutions ~2x faster in bf16
                amp = "bf16" if _cpu_has_native_bf16() else "off"
        self.amp_name = amp
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = torch.amp.GradScaler("cuda") if (self.amp_dtype == torch.float16 and self.is_cuda) else None
        self.params = [p for p in list(self.model.parameters()) + list(self.method.parameters()) if p.requires_grad]
        self.optimizer = _make_optimizer(c, self.params)
        self.augment = make_augment(c.augment)
        self.joint = _Joint(self.model, self.method)
        self.forward_module = self.joint
        if self.dist.world_size > 1 and method.ddp_compatible:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.forward_module = DDP(self.joint, device_ids=[self.device.index] if self.is_cuda else None,
                                      find_unused_parameters=False)
        elif self.dist.world_size > 1:
            import torch.distributed as dist
            for t in list(self.joint.parameters()) + list(self.joint.buffers()):
                dist.broadcast(t.data, src=0)
        if method.episodic:
            self.sampler = TaskSampler(self.data, c.ways, c.shots, c.queries, seed=c.seed,
                                       replacement=c.replacement, rank=self.dist.rank)
        else:
            self.sampler = ClassBalancedBatchSampler(self.data, c.batch_size, c.classes_per_batch, seed=c.seed,
                                                     rank=self.dist.rank)
        self.val_ways = c.val_ways or c.ways
        self.val_shots = c.val_shots or c.shots
        if self.val_data is not None and self.val_data.num_classes < self.val_ways:
            raise ValueError(f"val_data has {self.val_data.num_classes} classes, fewer than val_ways={self.val_ways}")
        self.state = {"episode": 0, "elapsed_s": 0.0, "best_val": float("-inf"), "best_val_ci95": 0.0,
                      "best_episode": -1, "last_val": None}
        self.best_state = None
        self.writer = None
        self.metrics_path = None

    def _prepare_run_dir(self):
        if not self.run_dir or not self.dist.main:
            return
        os.makedirs(self.run_dir, exist_ok=True)
        cfg_path = os.path.join(self.run_dir, "config.json")
        doc = {"config": self.config.to_dict(), "data": self.data_description}
        if self.resume and os.path.exists(cfg_path):
            from metaedge.runtime.fileio import read_json
            old = read_json(cfg_path, "run configuration").get("config", {})
            diffs = sorted(k for k in set(old) | set(doc["config"])
                           if k not in RESUMABLE_CHANGES and old.get(k) != doc["config"].get(k))
            if diffs:
                raise ValueError(f"resume: the options differ from the run in {self.run_dir}: "
                                 + ", ".join(f"{k}: {old.get(k)!r} -> {doc['config'].get(k)!r}" for k in diffs))
        elif not self.resume and os.path.exists(os.path.join(self.run_dir, "last", "model.json")):
            raise ValueError(f"{self.run_dir} already holds a run; pass resume=True (--resume) to continue it or "
                             f"choose another directory")
        atomic_write_json(cfg_path, doc)
        self.metrics_path = os.path.join(self.run_dir, "metrics.jsonl")
        if self.use_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(os.path.join(self.run_dir, "tensorboard"),
                                            purge_step=self.state["episode"] if self.resume else None)
            except ImportError:
                warnings.warn("TensorBoard scalars skipped: the tensorboard package is not installed", stacklevel=3)

    def _load_resume(self):
        last = os.path.join(self.run_dir, "last")
        if not has_resume_state(last):
            raise CheckpointError(f"resume: no resumable checkpoint in {last}")
        from safetensors.torch import load_file
        opt_state, st = load_resume_state(last)
        weights = load_file(os.path.join(last, "model.safetensors"))
        self.model.load_state_dict(weights)
        self.method.load_state_dict(st["method"])
        self.optimizer.load_state_dict(opt_state)
        if self.scaler is not None and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        torch.set_rng_state(st["torch_rng"])
        if self.is_cuda and st.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(st["cuda_rng"], self.device)
        self.state.update(st["progress"])
        best_dir = os.path.join(self.run_dir, "best")
        if os.path.exists(os.path.join(best_dir, "model.safetensors")) and self.val_data is not None:
            self.best_state = load_file(os.path.join(best_dir, "model.safetensors"))

    # ----------------------------------------------------------------------------------------- steps
    def _batch(self, episode: int) -> Batch:
        gen = torch.Generator().manual_seed(_seed_int(self.config.seed, self.dist.rank, episode, 0xA6))
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format

        def move(x):
            return x.to(self.device, non_blocking=True).contiguous(memory_format=fmt)
        if self.method.episodic:
            ep = self.sampler.sample(episode)
            return Batch(query=move(self.data.batch(ep.query, self.augment, gen)),
                         query_labels=ep.query_labels.to(self.device),
                         support=move(self.data.batch(ep.support, self.augment, gen)),
                         support_labels=ep.support_labels.to(self.device), ways=ep.ways, generator=gen)
        idx, labels = self.sampler.sample(episode)
        return Batch(query=move(self.data.batch(idx, self.augment, gen)), query_labels=labels.to(self.device),
                     ways=self.data.num_classes, generator=gen)

    def _loss_fn(self, batch: Batch):
        if self.amp_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                return self.forward_module(batch)
        return self.forward_module(batch)

    def _backward(self, loss):
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def _allreduce_grads(self):
        import torch.distributed as dist
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.dist.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def _step(self, episode: int, lr: float):
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self._batch(episode)
        if c.adversarial:
            batch = self.method.adversarial_query(self._loss_fn, batch, c.adv_eps,
                                                  1 if c.adversarial == "fgsm" else c.adv_steps, c.adv_alpha,
                                                  random_start=c.adversarial == "pgd")
        self.optimizer.zero_grad(set_to_none=True)
        out = self.method.compute_grads(self.model, batch, self._loss_fn, self._backward)
        if self.dist.world_size > 1 and self.forward_module is self.joint:  # not DDP-wrapped: average here
            self._allreduce_grads()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if c.grad_clip:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return float(out.loss.detach()), out.accuracy, grad_norm

    # ---------------------------------------------------------------------------------- validation etc
    def _validate(self) -> dict[str, float] | None:
        if self.val_data is None:
            return None
        from metaedge.train.evaluate import evaluate
        c = self.config
        report = evaluate(self.model, self.val_data, ways=self.val_ways, shots=self.val_shots,
                          queries=c.val_queries, episodes=c.val_episodes, seed=_seed_int(c.seed, 0x7A1) % (2 ** 31),
                          method=c.val_method, replacement=True)
        self.model.train()
        return {"val_accuracy": report.mean, "val_ci95": report.ci95}

    def _training_record(self) -> dict[str, Any]:
        return {**self.config.to_dict(), "method_options_resolved": self.method.options(),
                "data": self.data_description, "world_size": self.dist.world_size, "device": str(self.device),
                "amp_resolved": self.amp_name, "channels_last_resolved": self.channels_last}

    def _save_last(self):
        if not self.run_dir or not self.dist.main:
            return
        resume_state = {"progress": dict(self.state), "method": self.method.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state(self.device) if self.is_cuda else None,
                        "scaler": self.scaler.state_dict() if self.scaler is not None else None}
        save_checkpoint(self.model, os.path.join(self.run_dir, "last"), training=self._training_record(),
                        metrics={k: self.state[k] for k in ("episode", "elapsed_s", "last_val")},
                        optimizer_state=self.optimizer.state_dict(), resume_state=resume_state)

    def _log(self, record: dict[str, Any]):
        if not self.dist.main:
            return
        if self.metrics_path:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record["episode"]
            for key, value in record.items():
                if key != "episode" and isinstance(value, (int, float)) and value is not None:
                    self.writer.add_scalar(key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key,
                                           value, step)

    def _bar(self, start: int):
        if not (self.progress and self.dist.main):
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        c = self.config
        return tqdm(total=c.episodes, initial=start, unit="ep", dynamic_ncols=True,
                    desc=f"{c.method} {c.backbone} {c.ways}w{c.shots}s" if self.method.episodic else
                    f"{c.method} {c.backbone} bs{c.batch_size}")

    # ------------------------------------------------------------------------------------------- loop
    def run(self):
        self._setup()
        if self.resume:
            self._load_resume()
        self._prepare_run_dir()
        c = self.config
        stop_requested = {"flag": False, "why": None}
        old_handler = None
        if self.dist.main and _in_main_thread():
            def on_sigint(signum, frame):
                if stop_requested["flag"]:
                    raise KeyboardInterrupt
                stop_requested["flag"], stop_requested["why"] = True, "interrupted"
                print("\nmetaedge train: stopping after this step and saving a resumable checkpoint "
                      "(Ctrl-C again to abort)", flush=True)
            old_handler = signal.signal(signal.SIGINT, on_sigint)
        ckpt_every = c.checkpoint_every or c.val_every
        episode = self.state["episode"]
        bar = self._bar(episode)
        run_start = time.perf_counter()
        elapsed_before = self.state["elapsed_s"]
        window = {"loss": 0.0, "acc": 0.0, "n": 0, "t": time.perf_counter()}
        self.model.train()
        self.method.train()
        try:
            while True:
                elapsed = elapsed_before + (time.perf_counter() - run_start)
                done = c.episodes is not None and episode >= c.episodes
                out_of_time = c.time_budget_s is not None and elapsed >= c.time_budget_s
                stop = self._agree(done or out_of_time or stop_requested["flag"])
                if stop:
                    if not stop_requested["flag"]:
                        stop_requested["why"] = "episodes" if done else ("time_budget" if out_of_time else "rank 0")
                    break
                fraction = max(episode / c.episodes if c.episodes else 0.0,
                               elapsed / c.time_budget_s if c.time_budget_s else 0.0)
                lr = lr_at(c, episode, fraction)
                loss, acc, grad_norm = self._step(episode, lr)
                episode += 1
                self.state["episode"] = episode
                self.state["elapsed_s"] = elapsed_before + (time.perf_counter() - run_start)
                window["loss"] += loss
                window["acc"] += acc
                window["n"] += 1
                if bar is not None:
                    bar.update(1)
                if episode % c.log_every == 0:
                    now = time.perf_counter()
                    record = {"episode": episode, "train_loss": window["loss"] / window["n"],
                              "train_accuracy": window["acc"] / window["n"], "lr": lr,
                              "episodes_per_s": window["n"] * self.dist.world_size / max(1e-9, now - window["t"]),
                              "elapsed_s": self.state["elapsed_s"]}
                    if grad_norm is not None:
                        record["grad_norm"] = grad_norm
                    self._log(record)
                    if bar is not None:
                        post = {"loss": f"{record['train_loss']:.3f}", "acc": f"{record['train_accuracy']:.3f}",
                                "lr": f"{lr:.2e}"}
                        if self.state["best_val"] > float("-inf"):
                            post["val"] = f"{self.state['best_val']:.3f}"
                        if c.time_budget_s:
                            post["left"] = f"{max(0, c.time_budget_s - self.state['elapsed_s']):.0f}s"
                        bar.set_postfix(post)
                    window = {"loss": 0.0, "acc": 0.0, "n": 0, "t": now}
                if episode % c.val_every == 0:
                    self._validation_round(episode)
                if episode % ckpt_every == 0:
                    self._save_last()
                    self._barrier()
                if self.callback is not None and self.dist.main:
                    if self.callback({"episode": episode, "loss": loss, "accuracy": acc, "lr": lr,
                                      "elapsed_s": self.state["elapsed_s"], "model": self.model}):
                        stop_requested["flag"], stop_requested["why"] = True, "callback"
            # final validation/checkpoint unless this episode was just handled
            if self.state["last_val"] is None or self.state["last_val"].get("episode") != episode:
                self._validation_round(episode)
            if episode % ckpt_every != 0 or stop_requested["flag"]:
                self._save_last()
            self._barrier()
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
            if bar is not None:
                bar.close()
            if self.writer is not None:
                self.writer.close()
        return self._final_model(stop_requested["why"])

    def _validation_round(self, episode: int):
        if not self.dist.main:
            self._barrier()
            return
        result = self._validate()
        if result is not None:
            self.state["last_val"] = {"episode": episode, **result}
            self._log({"episode": episode, **result})
            if result["val_accuracy"] > self.state["best_val"]:
                self.state.update(best_val=result["val_accuracy"], best_val_ci95=result["val_ci95"],
                                  best_episode=episode)
                self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
                if self.run_dir:
                    save_checkpoint(self.model, os.path.join(self.run_dir, "best"), training=self._training_record(),
                                    metrics={"val_accuracy": result["val_accuracy"], "val_ci95": result["val_ci95"],
                                             "val_ways": self.val_ways, "val_shots": self.val_shots,
                                             "val_episodes": self.config.val_episodes, "episode": episode})
        else:
            self.state["last_val"] = {"episode": episode}
        self._barrier()

    def _final_model(self, why):
        model = self.model
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        model = model.to(memory_format=torch.contiguous_format).eval()
        model.train_info = {"method": self.config.method, "method_options": self.method.options(),
                            "episodes": self.state["episode"], "elapsed_s": self.state["elapsed_s"],
                            "best_val_accuracy": None if self.best_state is None else self.state["best_val"],
                            "best_val_ci95": None if self.best_state is None else self.state["best_val_ci95"],
                            "best_episode": self.state["best_episode"], "stopped_by": why,
                            "amp": self.amp_name, "channels_last": self.channels_last}
        return model

    def _agree(self, flag: bool) -> bool:
        """All ranks stop together (rank 0's clock and Ctrl-C decide)."""
        if self.dist.world_size == 1:
            return flag
        import torch.distributed as dist
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.is_cuda else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _barrier(self):
        if self.dist.world_size > 1:
            import torch.distributed as dist
            dist.barrier()


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
