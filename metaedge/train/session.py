"""``TrainingSession``: everything one training step needs - device and ranks, model and method, mixed
precision and memory format, optimizer and schedule, the batch source - plus its resumable state and the
checkpoints it writes. The loop (``loop.py``) and its hooks (``hooks.py``) drive it; ``fit`` and ``pretrain``
build it.

Distributed: launched by ``torchrun --nproc_per_node=N``, each rank samples different episodes; gradients are
averaged (DistributedDataParallel for ProtoNet, the Baseline, SimCLR and BYOL; an explicit all-reduce for
MAML/Reptile, whose inner loops call ``autograd.grad`` inside the forward pass); rank 0 validates, logs and
checkpoints.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch

from metaedge.train.backbones import build_backbone
from metaedge.train.batches import make_batches
from metaedge.train.checkpoint import (CheckpointError, atomic_write_json, find_checkpoint, has_resume_state,
                                       load_resume_state, read_checkpoint_meta, save_checkpoint)
from metaedge.train.config import DataConfig, TrainConfig, lr_at
from metaedge.train.data.base import FewShotDataset
from metaedge.train.loop import RunState, StepResult, StopPolicy
from metaedge.train.methods import Batch, build_method


def _seed_int(*parts: int) -> int:
    import numpy as np
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def _make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=config.momentum > 0)


class _Joint(torch.nn.Module):
    """Backbone + method (+ the distiller's projection) in one module, so DistributedDataParallel sees (and
    syncs) all of them."""

    def __init__(self, model, method, distiller=None):
        super().__init__()
        self.model, self.method, self.distiller = model, method, distiller

    def forward(self, batch: Batch):
        out = self.method.forward_loss(self.model, batch)
        return out if self.distiller is None else self.distiller.add_to(self.model, batch, out)


@dataclass
class _Dist:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_setup(device_pref: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist
    if not dist.is_initialized():
        # initialised once per process and kept: destroying and re-creating a group under torchrun's store can
        # deadlock, and a script may call fit() several times; it is torn down at exit
        use_cuda = torch.cuda.is_available() and device_pref != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        import atexit
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return _Dist(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")))


def _resolve_device(pref: str, d: _Dist) -> torch.device:
    if pref == "auto":
        return torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: CUDA was asked for but torch sees no CUDA device")
    if dev.type == "cuda" and d.world_size > 1 and dev.index is None:
        dev = torch.device(f"cuda:{d.local_rank}")
    return dev


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def describe_data(data: FewShotDataset | None) -> dict[str, Any] | None:
    if data is None:
        return None
    out = {"name": data.name, "classes": data.num_classes, "images": len(data),
           "preprocess": data.preprocess.to_dict(), "unlabelled": bool(data.unlabelled)}
    if getattr(data, "source", None):
        out["source"] = data.source
    return out


def _init_meta(path: str) -> dict:
    try:
        return read_checkpoint_meta(find_checkpoint(path))
    except CheckpointError as exc:
        raise ValueError(f"init: {exc}") from None


def init_architecture(config: TrainConfig) -> tuple[str, dict[str, Any]]:
    """Backbone name and options of a run that starts ``--init`` from a checkpoint: the checkpoint's, unless
    the config names its own (which must then match)."""
    meta = _init_meta(config.init)
    stored = meta.get("backbone") or {}
    options = {k: v for k, v in (stored.get("options") or {}).items() if k not in ("preprocess", "metric")}
    if stored.get("name") != config.backbone:
        raise ValueError(f"init: {config.init} holds a {stored.get('name')!r} backbone, this run builds "
                         f"{config.backbone!r} (--backbone)")
    if config.backbone_options:
        ours = {k: v for k, v in config.backbone_options.items() if k != "weights"}
        if ours != options:
            raise ValueError(f"init: {config.init} was built with backbone options {options}, this run asks for "
                             f"{ours}; leave --backbone-option out to take the checkpoint's")
    return stored["name"], options


class TrainingSession:
    """Built from a config and the data (see the module docstring). ``state``/``stop``: the loop's run state and
    stop policy; ``step(episode, progress)``: one optimizer step."""

    def __init__(self, config: TrainConfig, data: FewShotDataset, val_data: FewShotDataset | None = None,
                 unlabelled: FewShotDataset | None = None, run_dir: str | None = None, resume: bool = False,
                 data_description: dict | None = None):
        c = self.config = config
        self.data, self.val_data, self.unlabelled = data, val_data, unlabelled
        self.run_dir, self.resume = run_dir, resume
        if resume and not run_dir:
            raise ValueError("resume=True needs the run_dir of the run to continue")
        self._check_run_dir((data_description or {}).get("options"))
        if val_data is not None and val_data.preprocess != data.preprocess:
            raise ValueError(f"val_data pre-processing {val_data.preprocess} differs from the training data's "
                             f"{data.preprocess}")
        seen = set(data.seen_keys()) | set(unlabelled.seen_keys() if unlabelled is not None else ())
        if config.init:  # what the starting checkpoint saw, the model has seen too
            seen |= set(((_init_meta(config.init).get("training") or {}).get("data") or {}).get("seen") or ())
        self.data_description = {"train": describe_data(data), "val": describe_data(val_data),
                                 "unlabelled": describe_data(unlabelled), "seen": sorted(seen),
                                 **(data_description or {})}
        if c.num_threads:
            torch.set_num_threads(int(c.num_threads))
        self.dist = _dist_setup(c.device)
        self.device = _resolve_device(c.device, self.dist)
        self.is_cuda = self.device.type == "cuda"
        self.state, self.stop = RunState(), StopPolicy(c.episodes, c.time_budget_s)
        self._build_model()
        self._build_training()
        self.batches = make_batches(c, self.method, data, unlabelled, self.dist.rank)
        self.val_ways, self.val_shots = c.val_ways or c.ways, c.val_shots or c.shots
        if val_data is not None and val_data.num_classes < self.val_ways:
            raise ValueError(f"the validation data has {val_data.num_classes} classes, fewer than "
                             f"val_ways={self.val_ways} (validate with fewer ways, on more classes, or not at all)")
        self.best_state: dict[str, torch.Tensor] | None = None
        if resume:
            self._load_resume()

    # ------------------------------------------------------------------------------------------ setup
    def _build_model(self):
        c = self.config
        torch.manual_seed(_seed_int(c.seed, 0xB1))  # weight init identical on every rank
        name, options = (c.backbone, c.backbone_options) if not c.init else init_architecture(c)
        model = build_backbone(name, preprocess=self.data.preprocess, **options)
        if c.init:
            self._load_init(model)
        method = build_method(c.method, embedding_dim=model.spec.embedding_dim, ways=c.ways,
                              num_classes=self.data.num_classes, label_smoothing=c.label_smoothing,
                              **c.method_options)
        if method.metric != model.spec.metric:
            model.spec = dataclasses.replace(model.spec, metric=method.metric)
            model.backbone_options["metric"] = method.metric
        # channels-last pays on CUDA and with oneDNN on CPU (conv4 on 2 cores: ~1.25x)
        self.channels_last = c.channels_last == "on" or (c.channels_last == "auto" and (
            self.is_cuda or torch.backends.mkldnn.is_available()))
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        method.setup(self.model)
        self.method = method.to(self.device)
        from metaedge.train.distill import build_distiller
        self.distiller = build_distiller(c, self.model, self.data, self.device)
        self.model.train_info = {"method": c.method, "method_options": method.options()}

    def _load_init(self, model):
        from metaedge.train.checkpoint import load_checkpoint
        c = self.config
        try:
            start = load_checkpoint(find_checkpoint(c.init))
        except CheckpointError as exc:
            raise ValueError(f"init: {exc}") from None
        if start.spec.preprocess != model.spec.preprocess:
            raise ValueError(f"init: {c.init} expects inputs {start.spec.preprocess}, this run's data gives "
                             f"{model.spec.preprocess} (--size/--color/--invert/--mean/--std)")
        model.load_state_dict(start.state_dict())
        self.init_from = {"checkpoint": c.init, "training": (start.checkpoint_meta.get("training") or {}).get("method")}

    def _build_training(self):
        c = self.config
        amp = c.amp
        if amp == "auto":
            if self.is_cuda:
                amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:  # CPUs with native bf16 (AVX512-BF16 / AMX) run oneDNN convolutions ~2x faster in bf16
                amp = "bf16" if _cpu_has_native_bf16() else "off"
        self.amp_name = amp
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = torch.amp.GradScaler("cuda") if (self.amp_dtype == torch.float16 and self.is_cuda) else None
        self.joint = _Joint(self.model, self.method, self.distiller)
        self.params = [p for p in self.joint.parameters() if p.requires_grad]
        self.optimizer = _make_optimizer(c, self.params)
        self.forward_module = self.joint
        if self.dist.world_size > 1 and self.method.ddp_compatible:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.forward_module = DDP(self.joint, device_ids=[self.device.index] if self.is_cuda else None,
                                      find_unused_parameters=False)
        elif self.dist.world_size > 1:
            import torch.distributed as dist
            for t in list(self.joint.parameters()) + list(self.joint.buffers()):
                dist.broadcast(t.data, src=0)

    # ----------------------------------------------------------------------------------------- resume
    def _load_resume(self):
        last = os.path.join(self.run_dir, "last")
        if not has_resume_state(last):
            raise CheckpointError(f"resume: no resumable checkpoint in {last}")
        from safetensors.torch import load_file
        opt_state, st = load_resume_state(last)
        self.model.load_state_dict(load_file(os.path.join(last, "model.safetensors")))
        self.method.load_state_dict(st["method"])
        if self.distiller is not None:
            self.distiller.load_state_dict(st["distill"])
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

    def _check_run_dir(self, data_options: dict | None):
        """The one resume check, before anything is built: a resumed run is the same command with the same
        options, except the resumable ones (how long, how often, where) - data options included; a new run
        does not overwrite an existing one."""
        if not self.run_dir:
            return
        cfg_path = os.path.join(self.run_dir, "config.json")
        if self.resume and os.path.exists(cfg_path):
            from metaedge.runtime.fileio import read_json
            old = read_json(cfg_path, "run configuration")
            if old.get("command", "train") != self.config.command:
                raise ValueError(f"resume: {self.run_dir} is a `{old.get('command', 'train')}` run, not "
                                 f"`{self.config.command}`")
            self.config.check_resume(old.get("config", {}))
            stored_data = (old.get("data") or {}).get("options")
            if data_options is not None and stored_data is not None:
                DataConfig.from_dict(data_options).check_resume(stored_data)
        elif not self.resume and os.path.exists(os.path.join(self.run_dir, "last", "model.json")):
            raise ValueError(f"{self.run_dir} already holds a run; pass resume=True (--resume) to continue it or "
                             f"choose another directory")

    def prepare_run_dir(self):
        """Write ``config.json`` (the options were checked against a resumed run's when the session opened)."""
        if not self.run_dir or not self.dist.main:
            return
        os.makedirs(self.run_dir, exist_ok=True)
        doc = {"command": self.config.command, "config": self.config.to_dict(), "data": self.data_description}
        atomic_write_json(os.path.join(self.run_dir, "config.json"), doc)

    # ----------------------------------------------------------------------------------------- steps
    def _batch(self, episode: int) -> Batch:
        gen = torch.Generator().manual_seed(_seed_int(self.config.seed, self.dist.rank, episode, 0xA6))
        batch = self.batches(episode, gen)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format

        def move(x):
            return None if x is None else x.to(self.device, non_blocking=True).contiguous(memory_format=fmt)
        labels = batch.support_labels
        return dataclasses.replace(batch, query=move(batch.query), support=move(batch.support),
                                   query_labels=batch.query_labels.to(self.device),
                                   support_labels=None if labels is None else labels.to(self.device))

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

    def step(self, episode: int, progress: float) -> StepResult:
        c = self.config
        lr = lr_at(c, episode, progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self._batch(episode)
        if c.adversarial:
            batch = self.method.adversarial_query(self._loss_fn, batch, c.adv_eps,
                                                  1 if c.adversarial == "fgsm" else c.adv_steps, c.adv_alpha,
                                                  random_start=c.adversarial == "pgd")
        self.optimizer.zero_grad(set_to_none=True)
        out = self.method.compute_grads(self.model, batch, self._loss_fn, self._backward)
        if self.distiller is not None and "distill" not in out.extra:
            out = self._distill_separately(batch, out)
        if self.dist.world_size > 1 and self.forward_module is self.joint:  # not DDP-wrapped: average here
            self._allreduce_grads()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)) if c.grad_clip else None
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.method.after_step(self.model, progress)
        return StepResult(episode + 1, float(out.loss.detach()), out.accuracy, lr, grad_norm, dict(out.extra))

    def _distill_separately(self, batch: Batch, out):
        """The distillation terms' own pass and gradients, for methods whose ``compute_grads`` filled the
        gradients without the joint forward pass (Reptile's weight difference)."""
        if self.amp_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                found = self.distiller.terms(self.model, batch)
        else:
            found = self.distiller.terms(self.model, batch)
        if found is None:
            return out
        self._backward(found["total"])
        return dataclasses.replace(out, extra={**out.extra, **self.distiller.logged(found)})

    # ------------------------------------------------------------------------ validation, checkpoints
    def validate(self) -> dict[str, float] | None:
        if self.val_data is None:
            return None
        from metaedge.train.evaluate import evaluate
        c = self.config
        report = evaluate(self.model, self.val_data, ways=self.val_ways, shots=self.val_shots,
                          queries=c.val_queries, episodes=c.val_episodes, seed=_seed_int(c.seed, 0x7A1) % (2 ** 31),
                          method=c.val_method, replacement=True)
        self.model.train()
        return {"val_accuracy": report.mean, "val_ci95": report.ci95}

    def training_record(self) -> dict[str, Any]:
        record = {**self.config.to_dict(), "command": self.config.command,
                  "method_options_resolved": self.method.options(), "data": self.data_description,
                  "world_size": self.dist.world_size, "device": str(self.device), "amp_resolved": self.amp_name,
                  "channels_last_resolved": self.channels_last}
        if getattr(self, "init_from", None):
            record["init_from"] = self.init_from
        if self.distiller is not None:
            teacher = self.distiller.teacher
            record["distilled_from"] = {"checkpoint": self.config.distill_from, "backbone": teacher.backbone_name,
                                        "embedding_dim": teacher.spec.embedding_dim}
        return record

    def keep_best(self, metrics: dict[str, float]) -> None:
        self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        if self.run_dir:
            save_checkpoint(self.model, os.path.join(self.run_dir, "best"), training=self.training_record(),
                            metrics={**metrics, "val_ways": self.val_ways, "val_shots": self.val_shots,
                                     "val_episodes": self.config.val_episodes, "episode": self.state.episode})

    def save_last(self) -> None:
        if not self.run_dir or not self.dist.main:
            return
        resume_state = {"progress": self.state.to_dict(), "method": self.method.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state(self.device) if self.is_cuda else None,
                        "scaler": self.scaler.state_dict() if self.scaler is not None else None}
        if self.distiller is not None:   # the projection W (the teacher is not part of the run's state)
            resume_state["distill"] = self.distiller.state_dict()
        save_checkpoint(self.model, os.path.join(self.run_dir, "last"), training=self.training_record(),
                        metrics={"episode": self.state.episode, "elapsed_s": self.state.elapsed_s,
                                 "last_val": self.state.last_val},
                        optimizer_state=self.optimizer.state_dict(), resume_state=resume_state)

    def final_model(self, why: str):
        model = self.model
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        model = model.to(memory_format=torch.contiguous_format).eval()
        best = self.best_state is not None
        model.train_info = {"method": self.config.method, "method_options": self.method.options(),
                            "episodes": self.state.episode, "elapsed_s": self.state.elapsed_s,
                            "best_val_accuracy": self.state.best_val if best else None,
                            "best_val_ci95": self.state.best_val_ci95 if best else None,
                            "best_episode": self.state.best_episode, "stopped_by": why,
                            "amp": self.amp_name, "channels_last": self.channels_last,
                            "distill_from": self.config.distill_from}
        return model

    def agree(self, flag: bool) -> bool:
        """All ranks stop together (rank 0's clock and Ctrl-C decide)."""
        if self.dist.world_size == 1:
            return flag
        import torch.distributed as dist
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.is_cuda else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self):
        if self.dist.world_size > 1:
            import torch.distributed as dist
            dist.barrier()
