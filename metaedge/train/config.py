"""Training options: ``TrainConfig`` (``metaedge train`` / ``fit``) and ``PretrainConfig`` (``metaedge pretrain`` /
``pretrain``), each field declared once with its default, help, flag and resume rule (see ``options.py``).

This module imports no torch: the command line is built from it on machines without torch (a Jetson running
``metaedge predict``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from metaedge.train.options import Shortcut, check_unchanged, from_dict, option, resumable_fields

BACKBONES = ("conv4", "resnet12", "resnet18", "mobilenet_v3_small")
META_METHODS = ("protonet", "maml", "fomaml", "reptile")
SELF_SUPERVISED = ("simclr", "byol", "psco")
METHODS = (*META_METHODS, "baseline", *SELF_SUPERVISED)
TRAIN_METHODS = (*META_METHODS, "baseline", "simclr", "byol")   # psco learns from its own pseudo-labels only
PRETRAIN_METHODS = (*SELF_SUPERVISED, *META_METHODS)
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
ADVERSARIAL = (None, "fgsm", "pgd")
VAL_METHODS = ("prototype", "adapt_head", "maml", "reptile")


def parse_duration(text: str) -> float:
    """'90', '90s', '20m', '1.5h' -> seconds."""
    text = str(text).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}
    try:
        if text and text[-1] in scale:
            return float(text[:-1]) * scale[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or a duration like 90s, 20m, 1.5h; got {text!r}") from None


def parse_augment(text: str) -> Any:
    """A preset name (``none`` included) or a JSON dict of ``Augment`` fields."""
    import json
    text = str(text).strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid JSON: {exc}") from None
    return text


def _abspath(text: str) -> str:
    import os
    return os.path.abspath(text)


# Flags that set one key of method_options / backbone_options; ``defaults`` repeat the constructors' (the help
# shows them) and tests/train/test_config.py checks them against the constructors.
METHOD_SHORTCUTS = (
    Shortcut("metric", "protonet: squared euclidean (paper) or cosine with a learned scale",
             choices=("euclidean", "cosine"), defaults={"protonet": "euclidean"}),
    Shortcut("inner_steps", "maml/fomaml/reptile: inner-loop SGD steps", type=int,
             defaults={"maml": 5, "reptile": 5}),
    Shortcut("inner_lr", "maml/fomaml/reptile: inner-loop learning rate", type=float,
             defaults={"maml": 0.1, "reptile": 0.05}),
    Shortcut("eval_inner_steps", "maml/fomaml/reptile: inner steps when evaluating by adaptation", type=int,
             commands=("train",), default_text="--inner-steps"),
    Shortcut("head_init", "maml/reptile: initial N-way head: zero (any ways), proto (Proto-MAML), learned (paper, "
             "maml only)", choices=("zero", "proto", "learned"), defaults={"maml": "zero", "reptile": "zero"}),
    Shortcut("adapt", "maml: adapt every weight (paper) or the head only (ANIL)", choices=("all", "head"),
             defaults={"maml": "all"}),
    Shortcut("inner_batch", "reptile: inner mini-batch size", type=int, default_text="whole task"),
    Shortcut("head", "baseline: cosine classifier (Baseline++) or linear", choices=("cosine", "linear"),
             flag="--baseline-head", commands=("train",), defaults={"baseline": "cosine"}),
    Shortcut("temperature", "simclr/psco: softmax temperature of the contrastive loss", type=float,
             defaults={"simclr": 0.2, "psco": 0.2}),
    Shortcut("projection_dim", "simclr/byol/psco: output size of the projection head", type=int,
             defaults={"simclr": 128, "byol": 128, "psco": 128}),
    Shortcut("ema", "byol/psco: initial momentum of the target network (rises to 1 over the run)", type=float,
             defaults={"byol": 0.99, "psco": 0.99}),
    Shortcut("queue_size", "psco: momentum keys kept as negatives and pseudo-positives", type=int,
             defaults={"psco": 8192}, commands=("pretrain",)),
)
BACKBONE_SHORTCUTS = (
    Shortcut("weights", "initial weights from a local file (torchvision resnet18/mobilenet_v3_small state dict, "
             ".safetensors or .pth); nothing is downloaded", type=_abspath, metavar="PATH"),
    Shortcut("embedding_dim", "add a linear projection to this dimension", type=int, metavar="DIM"),
)

_EPISODES = "episodes / batches"
_HOW_LONG = "how long"
_OPT = "optimisation"
_VAL = "validation (held-out classes; the best model is kept)"
_RUN = "run"
_DISTILL = "distillation (a bigger trained model teaches this one)"
# The distillation defaults (TrainConfig's options and metaedge.train.distill.Distiller's); why: at the options.
DISTILL_WEIGHT = 300.0
DISTILL_TEMPERATURE = 2.0


@dataclass
class TrainConfig:
    """Every training option (JSON-serialisable; stored in ``config.json`` and in checkpoints)."""
    backbone: str = option("conv4", "embedding network", group="model", choices=BACKBONES)
    backbone_options: dict[str, Any] = option(
        help="other backbone options, e.g. hidden=32 (conv4) or widths=[64,128,256,512] (resnet12)",
        group="model", flag="--backbone-option", factory=dict, key_values=True, shortcuts=BACKBONE_SHORTCUTS)
    init: str | None = option(
        None, "start from the backbone of this checkpoint or run directory (e.g. `metaedge pretrain`'s): its weights "
        "and BatchNorm statistics; backbone, its options and the input pre-processing must match",
        group="model", metavar="CHECKPOINT", parse=_abspath, commands=("train",))
    method: str = option(
        "protonet", "protonet: prototypical networks; maml: second-order MAML; fomaml: first-order MAML; reptile; "
        "baseline: supervised pre-training over all base classes; simclr/byol: self-supervised losses (on "
        "labelled episodes SimCLR's is supervised contrastive)", group="method", choices=TRAIN_METHODS)
    method_options: dict[str, Any] = option(help="any other method option", group="method", flag="--method-option",
                                            factory=dict, key_values=True, shortcuts=METHOD_SHORTCUTS)
    ways: int = option(5, "classes per training episode", group=_EPISODES)
    shots: int = option(1, "support images per class", group=_EPISODES)
    queries: int = option(15, "query images per class", group=_EPISODES)
    replacement: bool = option(False, "allow classes with fewer than shots + queries images (images repeat)",
                               group=_EPISODES)
    batch_size: int = option(128, "baseline: images per batch; simclr/byol/psco: images per batch (x 2 views)",
                             group=_EPISODES)
    classes_per_batch: int | None = option(
        None, "baseline: classes per batch", group=_EPISODES, commands=("train",),
        default_text="every image from a uniformly drawn class")
    augment: Any = option(
        None, "augmentation: none, light (small affine: characters), standard (crop/flip/colour: photos), the "
        "self-supervised presets glyphs / natural, auto (glyphs for gray, natural for RGB inputs), or a JSON dict "
        "of Augment fields", group=_EPISODES, metavar="PRESET|JSON", parse=parse_augment)
    unlabelled_ratio: float = option(
        0.5, "with --unlabelled: fraction of the episodes drawn as unsupervised episodes of the unlabelled images",
        group="semi-supervised (labelled + unlabelled images in one run)", commands=("train",))
    unlabelled_augment: Any = option(
        "auto", "with --unlabelled: augmentation of the unsupervised episodes (their only source of 'same class')",
        group="semi-supervised (labelled + unlabelled images in one run)", metavar="PRESET|JSON",
        parse=parse_augment, commands=("train",))
    distill_from: str | None = option(
        None, "distil from this teacher checkpoint or run directory (e.g. a resnet12 trained on the same data): "
        "the student also learns to match the teacher's embeddings (through a learned linear map used only in "
        "training: the exported student keeps its own) and, for protonet, its episode logits; the teacher "
        "pre-processes the images by its own spec", group=_DISTILL, metavar="TEACHER_CKPT", parse=_abspath,
        commands=("train",))
    # Both terms are below 1 while a student's own loss is often in the tens (a euclidean ProtoNet's squared
    # distances), so weights near 1 left the teacher unheard. Measured on Omniglot (conv4 students of a resnet18,
    # 3 minutes each, 300 episodes, 5-way 1-shot vs alone): weights 1 / 10 / 100 / 300 / 1000 -> +1.5 / +4.1 /
    # +12.1 / +14.0 / +13.9 points; temperature 1 / 2 / 4 at weight 10 -> +3.9 / +4.1 / +3.4.
    distill_weight: float = option(DISTILL_WEIGHT, "weight of the embedding term, 1 - cos(W student, teacher), both centred "
                                   "on the batch mean", group=_DISTILL, commands=("train",))
    distill_logit_weight: float = option(DISTILL_WEIGHT, "weight of the episode-logit term, T^2 KL(teacher || student) of "
                                         "the queries' nearest-prototype logits, each query's standardised "
                                         "(protonet)", group=_DISTILL, commands=("train",))
    distill_temperature: float = option(DISTILL_TEMPERATURE, "softmax temperature T of the episode-logit term (on standardised "
                                        "logits)", group=_DISTILL, commands=("train",))
    episodes: int | None = option(None, "stop after this many episodes (steps)", group=_HOW_LONG, resumable=True)
    time_budget_s: float | None = option(
        None, "stop after this much training time (e.g. 1200, 20m, 1h); with --episodes, whichever first",
        group=_HOW_LONG, flag="--time-budget", parse=parse_duration, metavar="DURATION", resumable=True)
    optimizer: str = option("adam", "", group=_OPT, choices=OPTIMIZERS)
    lr: float = option(1e-3, "peak learning rate", group=_OPT)
    weight_decay: float = option(0.0, "", group=_OPT)
    momentum: float = option(0.9, "SGD momentum (Nesterov)", group=_OPT)
    schedule: str = option("cosine", "learning-rate schedule over the run (by episodes, or by time with "
                           "--time-budget only)", group=_OPT, choices=SCHEDULES)
    warmup: int = option(0, "episodes of linear warm-up", group=_OPT)
    step_size: int | None = option(None, "step schedule: episodes between decays", group=_OPT,
                                   default_text="a third of the run")
    gamma: float = option(0.5, "step schedule: decay factor", group=_OPT)
    min_lr_ratio: float = option(0.0, "cosine: final lr as a fraction of --lr", group=_OPT)
    label_smoothing: float = option(0.0, "", group=_OPT)
    adversarial: str | None = option(None, "adversarial training on the query images (L-inf, in network-input "
                                     "units)", group=_OPT, choices=("fgsm", "pgd"), commands=("train",))
    adv_eps: float = option(0.03, "adversarial budget", group=_OPT, commands=("train",))
    adv_steps: int = option(3, "PGD steps", group=_OPT, commands=("train",))
    adv_alpha: float | None = option(None, "PGD step size", group=_OPT, default_text="2.5 eps / steps",
                                     commands=("train",))
    grad_clip: float | None = option(None, "clip the global gradient norm to this value", group=_OPT)
    val_every: int = option(500, "episodes between validations", group=_VAL, resumable=True)
    val_episodes: int = option(200, "episodes per validation", group=_VAL, resumable=True)
    val_ways: int | None = option(None, "ways of validation episodes", group=_VAL, default_text="--ways")
    val_shots: int | None = option(None, "shots of validation episodes", group=_VAL, default_text="--shots")
    val_queries: int = option(15, "queries per class in validation", group=_VAL)
    val_method: str = option("prototype", "how validation classifies (prototype: the device's nearest-prototype "
                             "path)", group=_VAL, choices=VAL_METHODS)
    seed: int = option(0, "seed of episodes, augmentation and weights", group=_RUN)
    checkpoint_every: int | None = option(None, "episodes between resumable checkpoints (last/)", group=_RUN,
                                          resumable=True, default_text="--val-every")
    log_every: int = option(20, "episodes between log lines/scalars", group=_RUN, resumable=True)
    device: str = option("auto", "auto (CUDA if available), cpu, cuda, cuda:1", group=_RUN, resumable=True)
    amp: str = option("auto", "mixed precision (weights stay fp32): auto = bf16/fp16 on CUDA, bf16 on CPUs with "
                      "native bf16 (AVX512-BF16/AMX), else off", group=_RUN, choices=("auto", "off", "bf16", "fp16"))
    channels_last: str = option("auto", "channels-last memory format (auto: on with CUDA or oneDNN)", group=_RUN,
                                choices=("auto", "on", "off"))
    num_threads: int | None = option(None, "CPU threads for torch", group=_RUN, flag="--threads", resumable=True,
                                     default_text="torch's choice")

    command = "train"
    allowed_methods = TRAIN_METHODS

    def validate(self) -> "TrainConfig":
        def need(cond, msg):
            if not cond:
                raise ValueError(msg)
        need(self.method in self.allowed_methods,
             f"method: expected one of {self.allowed_methods}, got {self.method!r}")
        need(self.backbone in BACKBONES, f"backbone: expected one of {BACKBONES}, got {self.backbone!r}")
        need(self.ways >= 2 and self.shots >= 1 and self.queries >= 1,
             f"ways >= 2, shots >= 1 and queries >= 1 are needed, got {self.ways}/{self.shots}/{self.queries}")
        need(self.batch_size >= 2, f"batch_size: expected >= 2, got {self.batch_size}")
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
        need(self.checkpoint_every is None or self.checkpoint_every >= 1, "checkpoint_every: expected >= 1")
        need(self.val_method in VAL_METHODS, f"val_method: unknown {self.val_method!r}")
        need(0 <= self.label_smoothing < 1, "label_smoothing: expected in [0, 1)")
        need(0 <= self.unlabelled_ratio <= 1, f"unlabelled_ratio: expected in [0, 1], got {self.unlabelled_ratio}")
        if self.distill_from:
            need(self.distill_weight >= 0 and self.distill_logit_weight >= 0
                 and self.distill_weight + self.distill_logit_weight > 0,
                 f"distill_weight (--distill-weight) and distill_logit_weight (--distill-logit-weight): expected >= "
                 f"0 and not both 0, got {self.distill_weight} and {self.distill_logit_weight}")
            need(self.distill_temperature > 0, f"distill_temperature (--distill-temperature): expected > 0, got "
                                               f"{self.distill_temperature}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return from_dict(cls, d, "training")

    @classmethod
    def resumable(cls) -> frozenset[str]:
        return resumable_fields(cls)

    def check_resume(self, stored: dict[str, Any]) -> None:
        """The one resume check: only the resumable options (how long, how often, where) may differ."""
        check_unchanged(type(self), stored, self.to_dict(), "resume")


@dataclass
class PretrainConfig(TrainConfig):
    """``TrainConfig`` with the defaults of self-supervised pretraining on unlabelled images (``pretrain``)."""
    method: str = option(
        "simclr", "simclr: contrastive (NT-Xent); byol: non-contrastive (momentum target, no negatives); psco: "
        "MoCo + pseudo-supervised few-shot tasks from its queue (each image's nearest keys as positives); "
        "protonet/maml/fomaml/reptile: meta-learning on unsupervised episodes (classes = random images, shots "
        "and queries = their augmentations, as UMTRA/PsCo)", group="method", choices=PRETRAIN_METHODS)
    batch_size: int = option(256, "simclr/byol/psco: images per batch (x 2 augmented views)", group=_EPISODES)
    augment: Any = option(
        "auto", "augmentation making the views: glyphs (affine, elastic, stroke width, erasing; for characters), "
        "natural (crop, flip, colour, grayscale, blur; for photos), auto (glyphs for gray, natural for RGB "
        "inputs), or a JSON dict of Augment fields", group=_EPISODES, metavar="PRESET|JSON", parse=parse_augment)

    command = "pretrain"
    allowed_methods = PRETRAIN_METHODS


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


# ------------------------------------------------------------------------------------------------ data
def _csv(text: str) -> list[str]:
    return [t for t in (s.strip() for s in str(text).split(",")) if t]


def _int_csv(text: str) -> list[int]:
    try:
        return [int(v) for v in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


DATA_HELP = ("where the images come from. Labelled: 'synthetic' (built-in procedural glyphs, offline, seconds), "
             "'omniglot' or 'omniglot:ROOT' (the original zips or the torchvision layout; ROOT defaults to "
             "$METAEDGE_OMNIGLOT), or a directory with one sub-folder of images per class. Unlabelled (pretrain, "
             "--unlabelled): 'folder:DIR' (every image under DIR), 'list:FILE' (a text file of image paths), "
             "'video:FILE' (frames of a video file); a labelled source used there loses its labels")
_DATA = "data"
_SEMI = "semi-supervised (labelled + unlabelled images in one run)"
_EVERYWHERE = ("train", "pretrain", "eval", "compress")
_FINE_TUNING = ("train", "pretrain", "compress")   # validation of a run, or of `metaedge compress`'s fine-tuning


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared (stored with a run and its checkpoints, so that
    ``metaedge eval`` knows the class split a model was trained on)."""
    data: str = option("synthetic", DATA_HELP, group=_DATA, metavar="SOURCE", commands=_EVERYWHERE)
    size: int | None = option(None, "input side in pixels", group=_DATA, metavar="PX", commands=_EVERYWHERE,
                              default_text="28 for synthetic/omniglot, 84 for image files")
    color: str | None = option(None, "channels the network takes", group=_DATA, choices=("gray", "rgb"),
                               commands=_EVERYWHERE, default_text="gray for synthetic/omniglot, rgb for image files")
    invert: bool | None = option(None, "invert pixels (255 - x) before scaling", group=_DATA, commands=_EVERYWHERE,
                                 default_text="on for Omniglot: strokes = 1")
    mean: list[float] | None = option(None, "per-channel mean subtracted after /255", group=_DATA, nargs="+",
                                      commands=_EVERYWHERE, default_text="ImageNet's for RGB image files, else 0")
    std: list[float] | None = option(None, "per-channel std divided by after /255", group=_DATA, nargs="+",
                                     commands=_EVERYWHERE, default_text="ImageNet's for RGB image files, else 1")
    sets: list[str] | None = option(None, "Omniglot sets to read, e.g. images_background_small1", group=_DATA,
                                    parse=_csv, metavar="A,B", commands=_EVERYWHERE, default_text="all found")
    alphabets: list[str] | None = option(None, "Omniglot: keep only these alphabets", group=_DATA, parse=_csv,
                                         metavar="A,B", commands=_EVERYWHERE, default_text="all")
    exclude_alphabets: list[str] | None = option(None, "Omniglot: leave these alphabets out", group=_DATA,
                                                 parse=_csv, metavar="A,B", commands=_EVERYWHERE)
    rotations: list[int] | None = option(
        None, "Omniglot: add rotated copies of every character as new classes (without labels: as new images)",
        group=_DATA, parse=_int_csv, metavar="0,90,180,270", commands=_EVERYWHERE, default_text="0 only")
    mirror: bool = option(False, "Omniglot: add the mirror image of every (rotated) character as a new class",
                          group=_DATA, commands=_EVERYWHERE)
    split: str | None = option(
        None, "which seeded class split to use ('all' for every class)", group=_DATA,
        choices=("train", "val", "test", "all"), commands=_EVERYWHERE,
        default_text="train; test for eval; Omniglot: all unless given")
    split_fractions: list[float] = option(
        help="class fractions of the train/val/test split (rotations of a character stay together)", group=_DATA,
        nargs=3, metavar=("TRAIN", "VAL", "TEST"), factory=lambda: [0.7, 0.15, 0.15], commands=_EVERYWHERE,
        default_text="0.7 0.15 0.15; eval: the checkpoint's")
    split_by: str = option("class", "split classes individually, or keep each top-level folder / alphabet in one "
                           "split", group=_DATA, choices=("class", "group"), commands=_EVERYWHERE)
    on_error: str = option("raise", "image files: stop at an unreadable image, or skip it with a warning",
                           group=_DATA, choices=("raise", "skip"), commands=_EVERYWHERE)
    synthetic_classes: int = option(200, "synthetic: total classes over all splits (60/20/20% train/val/test)",
                                    group=_DATA, commands=_EVERYWHERE)
    synthetic_samples: int = option(20, "synthetic: images per class", group=_DATA, commands=_EVERYWHERE)
    data_seed: int = option(0, "seed of synthetic data and of class splits", group=_DATA, commands=_EVERYWHERE,
                            default_text="0; eval: the checkpoint's")
    frame_step: int = option(1, "video: use every N-th frame (neighbouring frames are nearly the same picture)",
                             group=_DATA, metavar="N")
    max_frames: int | None = option(None, "video: stop after this many frames", group=_DATA, default_text="all")
    val_split: float | None = option(
        None, "hold out this fraction of the training classes for validation (--split-by group holds out whole "
        "alphabets/folders)", group=_VAL, metavar="FRACTION", commands=("train", "compress"))
    val_data: str | None = option(None, "validate on labelled classes of another source (see --data)", group=_VAL,
                                  metavar="SOURCE", commands=_FINE_TUNING)
    val_sets: list[str] | None = option(None, "Omniglot sets of --val-data", group=_VAL, parse=_csv, metavar="A,B",
                                        commands=_FINE_TUNING)
    val_alphabets: list[str] | None = option(None, "Omniglot alphabets of --val-data", group=_VAL, parse=_csv,
                                             metavar="A,B", commands=_FINE_TUNING)
    no_val: bool = option(False, "no validation: the last model is the result", group=_VAL, commands=_FINE_TUNING)
    unlabelled: str | None = option(
        None, "also learn from these unlabelled images (a SOURCE as for --data, with its pre-processing and "
        "Omniglot options; Omniglot: all classes, other labelled sources: their train split)", group=_SEMI,
        metavar="SOURCE", commands=("train",))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        return from_dict(cls, d, "data")

    def check_resume(self, stored: dict[str, Any]) -> None:
        check_unchanged(type(self), stored, self.to_dict(), "resume")


# options that may change when a run is resumed (how long / how often / where), everything else must match
RESUMABLE_CHANGES = resumable_fields(TrainConfig)
