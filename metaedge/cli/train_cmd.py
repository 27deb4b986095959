"""`metaedge train`: meta-train a backbone on base classes; writes a resumable run directory."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from metaedge.cli.main import CliError

DATA_HELP = ("where the images come from: 'synthetic' (built-in procedural glyphs, offline, seconds), "
             "'omniglot' or 'omniglot:ROOT' (the original zips or the torchvision layout; ROOT defaults to "
             "$METAEDGE_OMNIGLOT), or a directory with one sub-folder of images per class")


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


def parse_key_values(items: list[str] | None, what: str) -> dict:
    """['hidden=32', 'widths=[64,128]'] -> {'hidden': 32, 'widths': [64, 128]} (JSON values, else strings)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise CliError(f"{what}: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except ValueError:
            out[key.strip().replace("-", "_")] = value
    return out


def _csv(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def add_data_arguments(p: argparse.ArgumentParser, for_eval: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="synthetic", metavar="SOURCE", help=DATA_HELP + " (default: synthetic)")
    g.add_argument("--size", type=int, default=None, metavar="PX",
                   help="input side in pixels (default: 28 for synthetic/omniglot, 84 for image folders)")
    g.add_argument("--color", choices=("gray", "rgb"), default=None,
                   help="channels the network takes (default: gray for synthetic/omniglot, rgb for folders)")
    g.add_argument("--invert", action=argparse.BooleanOptionalAction, default=None,
                   help="invert pixels (255 - x) before scaling; default on for Omniglot (strokes = 1)")
    g.add_argument("--mean", type=float, nargs="+", default=None, help="per-channel mean subtracted after /255")
    g.add_argument("--std", type=float, nargs="+", default=None, help="per-channel std divided by after /255")
    g.add_argument("--sets", type=_csv, default=None, metavar="A,B",
                   help="Omniglot sets to read, e.g. images_background_small1 (default: all found)")
    g.add_argument("--alphabets", type=_csv, default=None, metavar="A,B", help="Omniglot: keep only these alphabets")
    g.add_argument("--exclude-alphabets", type=_csv, default=None, metavar="A,B",
                   help="Omniglot: leave these alphabets out")
    g.add_argument("--rotations", type=lambda s: [int(v) for v in _csv(s)], default=None, metavar="0,90,180,270",
                   help="Omniglot: add rotated copies of every character as new classes (default: 0 only)")
    g.add_argument("--mirror", action="store_true",
                   help="Omniglot: add the mirror image of every (rotated) character as a new class")
    g.add_argument("--split", choices=("train", "val", "test", "all"), default=None,
                   help="which class split to use for synthetic data / image folders (default: "
                        + ("test" if for_eval else "train") + "; 'all' for every class)")
    g.add_argument("--split-fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"),
                   help="image folders: class fractions of the train/val/test split (default: 0.7 0.15 0.15)")
    g.add_argument("--split-by", choices=("class", "group"), default="class",
                   help="split classes individually, or keep each top-level folder / alphabet in one split [class]")
    g.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="image folders: stop at an unreadable image [raise] or skip it with a warning")
    g.add_argument("--synthetic-classes", type=int, default=200, help="synthetic: total classes over all splits (60/20/20%% train/val/test) [200]")
    g.add_argument("--synthetic-samples", type=int, default=20, help="synthetic: images per class [20]")
    g.add_argument("--data-seed", type=int, default=0, help="seed of synthetic data and of class splits [0]")


def data_args(args) -> dict:
    keys = ("data", "size", "color", "invert", "mean", "std", "sets", "alphabets", "exclude_alphabets", "rotations",
            "mirror", "split", "split_fractions", "split_by", "on_error", "synthetic_classes", "synthetic_samples", "data_seed")
    d = {k: getattr(args, k) for k in keys}
    if d["split_fractions"] is not None:
        d["split_fractions"] = list(d["split_fractions"])
    return d


def build_dataset(d: dict, default_split: str):
    """A FewShotDataset from the data options (a dict, as stored in a run's config.json)."""
    from metaedge.train.data import DataError, ImageFolderDataset, Omniglot, SyntheticGlyphs
    source = d["data"]
    split = d.get("split") or default_split
    try:
        if source == "synthetic":
            ds = SyntheticGlyphs(None if split == "all" else split, num_classes=d["synthetic_classes"],
                                 samples_per_class=d["synthetic_samples"], size=d.get("size") or 28,
                                 seed=d["data_seed"])
            if d.get("invert") or d.get("mean") or d.get("std") or (d.get("color") not in (None, "gray")):
                raise CliError("synthetic data is gray with strokes = 1; --color/--invert/--mean/--std do not apply")
            return ds
        if source == "omniglot" or source.startswith("omniglot:"):
            root = source.split(":", 1)[1] if ":" in source else None
            if d.get("color") not in (None, "gray"):
                raise CliError("Omniglot is gray: --color rgb does not apply")
            return Omniglot(root, sets=d.get("sets"), alphabets=d.get("alphabets"),
                            exclude_alphabets=d.get("exclude_alphabets"), rotations=d.get("rotations") or (0,),
                            mirror=bool(d.get("mirror")),
                            size=d.get("size") or 28, invert=True if d.get("invert") is None else d["invert"],
                            mean=(d.get("mean") or [0.0])[0], std=(d.get("std") or [1.0])[0])
        if not os.path.isdir(source):
            raise CliError(f"--data {source!r}: not 'synthetic', 'omniglot[:ROOT]' or an existing directory")
        return ImageFolderDataset(source, size=d.get("size") or 84, color=d.get("color") or "rgb",
                                  invert=bool(d.get("invert")), mean=d.get("mean"), std=d.get("std"),
                                  on_error=d.get("on_error", "raise"),
                                  split=None if split == "all" else split,
                                  split_fractions=d.get("split_fractions") or (0.7, 0.15, 0.15),
                                  split_seed=d["data_seed"], split_by=d.get("split_by", "class"))
    except DataError as exc:
        raise CliError(str(exc)) from None


def build_train_val(d: dict, val: dict):
    """Training data and validation data (or None) from the stored data options."""
    train = build_dataset(d, "train")
    mode = val.get("mode", "auto")
    if mode == "none":
        return train, None
    if mode == "holdout":
        fraction = float(val["fraction"])
        if not 0 < fraction < 1:
            raise CliError(f"--val-split: expected a fraction in (0, 1), got {fraction}")
        kept, held = train.split((1 - fraction, fraction), seed=d["data_seed"], by=d.get("split_by", "class"),
                                 names=("train", "val"))
        return kept, held
    if mode == "data":
        return train, build_dataset({**d, **val["data"]}, "val")
    # auto: the 'val' split of split-able sources, nothing for Omniglot (say so)
    if d["data"] == "synthetic" or os.path.isdir(d["data"]):
        if (d.get("split") or "train") == "train":
            return train, build_dataset(d, "val")
    return train, None


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="meta-train a backbone (ProtoNet, MAML, Reptile, Baseline)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Meta-train an embedding backbone on base classes and keep the best validated checkpoint. "
                    "The run directory gets config.json, metrics.jsonl, TensorBoard scalars, best/ (the model to "
                    "export: model.safetensors + model.json) and last/ (with the optimizer, schedule, RNG and "
                    "episode counter: `metaedge train --resume RUN_DIR` continues exactly). Multi-GPU/multi-node: "
                    "launch with `torchrun --nproc_per_node=N -m metaedge train ...`; every rank samples different "
                    "episodes.",
        epilog="examples:\n"
               "  metaedge train --episodes 2000                                  # synthetic glyphs, ProtoNet\n"
               "  metaedge train --data omniglot:/data/omniglot --sets images_background_small1 \\\n"
               "      --rotations 0,90,180,270 --val-split 0.1 --ways 60 --queries 5 --time-budget 20m\n"
               "  metaedge train --data ./parts --size 84 --backbone resnet12 --method baseline --episodes 20000\n"
               "  metaedge train --resume runs/omniglot --episodes 6000          # continue, with a longer schedule")
    p.set_defaults(func=run)
    add_data_arguments(p)
    v = p.add_argument_group("validation (held-out classes; the best model is kept)")
    v.add_argument("--val-split", type=float, default=None, metavar="FRACTION",
                   help="hold out this fraction of the training classes for validation (rotations of a character "
                        "stay together; --split-by group holds out whole alphabets/folders)")
    v.add_argument("--val-data", default=None, metavar="SOURCE", help="validate on another source (see --data)")
    v.add_argument("--val-sets", type=_csv, default=None, help="Omniglot sets of --val-data")
    v.add_argument("--val-alphabets", type=_csv, default=None, help="Omniglot alphabets of --val-data")
    v.add_argument("--no-val", action="store_true", help="no validation: the last model is the result")
    v.add_argument("--val-every", type=int, default=None, help="episodes between validations [500]")
    v.add_argument("--val-episodes", type=int, default=None, help="episodes per validation [200]")
    v.add_argument("--val-ways", type=int, default=None, help="ways of validation episodes [--ways]")
    v.add_argument("--val-shots", type=int, default=None, help="shots of validation episodes [--shots]")
    v.add_argument("--val-queries", type=int, default=None, help="queries per class in validation [15]")
    v.add_argument("--val-method", choices=("prototype", "adapt_head", "maml", "reptile"), default=None,
                   help="how validation classifies [prototype: the device's nearest-prototype path]")
    m = p.add_argument_group("model")
    m.add_argument("--backbone", choices=("conv4", "resnet12", "resnet18", "mobilenet_v3_small"), default=None,
                   help="embedding network [conv4]")
    m.add_argument("--weights", default=None, metavar="PATH",
                   help="initial weights from a local file (torchvision resnet18/mobilenet_v3_small state dict, "
                        ".safetensors or .pth); nothing is downloaded")
    m.add_argument("--embedding-dim", type=int, default=None, help="add a linear projection to this dimension")
    m.add_argument("--backbone-option", action="append", metavar="KEY=VALUE",
                   help="other backbone options, e.g. hidden=32 (conv4) or widths=[64,128,256,512] (resnet12)")
    t = p.add_argument_group("method")
    t.add_argument("--method", choices=("protonet", "maml", "fomaml", "reptile", "baseline"), default=None,
                   help="protonet: prototypical networks; maml: second-order MAML; fomaml: first-order MAML; "
                        "reptile; baseline: supervised pre-training over all base classes [protonet]")
    t.add_argument("--metric", choices=("euclidean", "cosine"), default=None,
                   help="protonet: squared euclidean (paper) or cosine with a learned scale [euclidean]")
    t.add_argument("--inner-steps", type=int, default=None, help="maml/fomaml/reptile: inner-loop SGD steps")
    t.add_argument("--inner-lr", type=float, default=None, help="maml/fomaml/reptile: inner-loop learning rate")
    t.add_argument("--eval-inner-steps", type=int, default=None,
                   help="maml/fomaml/reptile: inner steps when evaluating by adaptation [--inner-steps]")
    t.add_argument("--head-init", choices=("zero", "proto", "learned"), default=None,
                   help="maml/reptile: initial N-way head: zero (any ways), proto (Proto-MAML), learned (paper)")
    t.add_argument("--adapt", choices=("all", "head"), default=None,
                   help="maml: adapt every weight (paper) or the head only (ANIL)")
    t.add_argument("--inner-batch", type=int, default=None, help="reptile: inner mini-batch size [whole task]")
    t.add_argument("--baseline-head", choices=("cosine", "linear"), default=None,
                   help="baseline: cosine classifier (Baseline++) or linear [cosine]")
    t.add_argument("--method-option", action="append", metavar="KEY=VALUE", help="any other method option")
    e = p.add_argument_group("episodes / batches")
    e.add_argument("--ways", type=int, default=None, help="classes per training episode [5]")
    e.add_argument("--shots", type=int, default=None, help="support images per class [1]")
    e.add_argument("--queries", type=int, default=None, help="query images per class [15]")
    e.add_argument("--replacement", action="store_true", default=None,
                   help="allow classes with fewer than shots + queries images (images repeat)")
    e.add_argument("--batch-size", type=int, default=None, help="baseline: images per batch [128]")
    e.add_argument("--classes-per-batch", type=int, default=None,
                   help="baseline: classes per batch (default: every image from a uniformly drawn class)")
    e.add_argument("--augment", default=None, metavar="PRESET|JSON",
                   help="augmentation: none, light (small affine: characters), standard (crop/flip/colour: photos),"
                        " or a JSON dict of Augment fields [none]")
    s = p.add_argument_group("how long")
    s.add_argument("--episodes", type=int, default=None, help="stop after this many episodes (steps)")
    s.add_argument("--time-budget", type=parse_duration, default=None, metavar="DURATION",
                   help="stop after this much training time (e.g. 1200, 20m, 1h); with --episodes, whichever first")
    o = p.add_argument_group("optimisation")
    o.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default=None, help="[adam]")
    o.add_argument("--lr", type=float, default=None, help="peak learning rate [1e-3]")
    o.add_argument("--weight-decay", type=float, default=None, help="[0]")
    o.add_argument("--momentum", type=float, default=None, help="SGD momentum (Nesterov) [0.9]")
    o.add_argument("--schedule", choices=("cosine", "step", "constant"), default=None,
                   help="learning-rate schedule over the run (by episodes, or by time with --time-budget only) [cosine]")
    o.add_argument("--warmup", type=int, default=None, help="episodes of linear warm-up [0]")
    o.add_argument("--step-size", type=int, default=None, help="step schedule: episodes between decays [run/3]")
    o.add_argument("--gamma", type=float, default=None, help="step schedule: decay factor [0.5]")
    o.add_argument("--min-lr-ratio", type=float, default=None, help="cosine: final lr as a fraction of --lr [0]")
    o.add_argument("--label-smoothing", type=float, default=None, help="[0]")
    o.add_argument("--grad-clip", type=float, default=None, help="clip the global gradient norm to this value")
    o.add_argument("--adversarial", choices=("fgsm", "pgd"), default=None,
                   help="adversarial training on the query images (L-inf, in network-input units)")
    o.add_argument("--adv-eps", type=float, default=None, help="adversarial budget [0.03]")
    o.add_argument("--adv-steps", type=int, default=None, help="PGD steps [3]")
    o.add_argument("--adv-alpha", type=float, default=None, help="PGD step size [2.5 eps / steps]")
    r = p.add_argument_group("run")
    r.add_argument("--run-dir", default=None, help="output directory [runs/<method>-<backbone>-<time>]")
    r.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR exactly where it stopped (its options are reused; only "
                        "--episodes/--time-budget/--val-every/--val-episodes/--device/--threads may change)")
    r.add_argument("--seed", type=int, default=None, help="seed of episodes, augmentation and weights [0]")
    r.add_argument("--device", default=None, help="auto (CUDA if available), cpu, cuda, cuda:1 [auto]")
    r.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default=None,
                   help="mixed precision (weights stay fp32): auto = bf16/fp16 on CUDA, bf16 on CPUs with native "
                        "bf16 (AVX512-BF16/AMX), else off [auto]")
    r.add_argument("--channels-last", choices=("auto", "on", "off"), default=None,
                   help="channels-last memory format (auto: on with CUDA or oneDNN) [auto]")
    r.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    r.add_argument("--log-every", type=int, default=None, help="episodes between log lines/scalars [20]")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard scalars")
    r.add_argument("--test", action="store_true",
                   help="after training, evaluate the best model on the test split of synthetic data / image "
                        "folders: 5-way 1-shot and 5-shot, 600 episodes (use `metaedge eval` for anything else)")
    r.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


_CONFIG_FLAGS = {  # argparse dest -> TrainConfig field
    "backbone": "backbone", "method": "method", "ways": "ways", "shots": "shots", "queries": "queries",
    "replacement": "replacement", "batch_size": "batch_size", "classes_per_batch": "classes_per_batch",
    "episodes": "episodes", "time_budget": "time_budget_s", "optimizer": "optimizer", "lr": "lr",
    "weight_decay": "weight_decay", "momentum": "momentum", "schedule": "schedule", "warmup": "warmup",
    "step_size": "step_size", "gamma": "gamma", "min_lr_ratio": "min_lr_ratio", "label_smoothing": "label_smoothing",
    "adversarial": "adversarial", "adv_eps": "adv_eps", "adv_steps": "adv_steps", "adv_alpha": "adv_alpha",
    "grad_clip": "grad_clip", "amp": "amp", "channels_last": "channels_last", "seed": "seed",
    "val_every": "val_every", "val_episodes": "val_episodes", "val_ways": "val_ways", "val_shots": "val_shots",
    "val_queries": "val_queries", "val_method": "val_method", "log_every": "log_every", "device": "device",
    "threads": "num_threads",
}
_METHOD_FLAGS = {"metric": "metric", "inner_steps": "inner_steps", "inner_lr": "inner_lr",
                 "eval_inner_steps": "eval_inner_steps", "head_init": "head_init", "adapt": "adapt",
                 "inner_batch": "inner_batch", "baseline_head": "head"}


def _config_from_args(args) -> dict:
    cfg = {field: getattr(args, dest) for dest, field in _CONFIG_FLAGS.items() if getattr(args, dest) is not None}
    method = parse_key_values(args.method_option, "--method-option")
    method.update({opt: getattr(args, dest) for dest, opt in _METHOD_FLAGS.items() if getattr(args, dest) is not None})
    if method:
        cfg["method_options"] = method
    backbone = parse_key_values(args.backbone_option, "--backbone-option")
    if args.weights:
        backbone["weights"] = os.path.abspath(args.weights)
    if args.embedding_dim:
        backbone["embedding_dim"] = args.embedding_dim
    if backbone:
        cfg["backbone_options"] = backbone
    if args.augment is not None:
        aug = args.augment
        if aug.strip().startswith("{"):
            try:
                aug = json.loads(aug)
            except ValueError as exc:
                raise CliError(f"--augment: invalid JSON: {exc}") from None
        cfg["augment"] = None if aug == "none" else aug
    return cfg


def _val_options(args) -> dict:
    given = [bool(args.val_split), bool(args.val_data), bool(args.no_val)]
    if sum(given) > 1:
        raise CliError("give at most one of --val-split, --val-data, --no-val")
    if args.no_val:
        return {"mode": "none"}
    if args.val_split:
        return {"mode": "holdout", "fraction": args.val_split}
    if args.val_data:
        return {"mode": "data", "data": {"data": args.val_data, "sets": args.val_sets, "alphabets": args.val_alphabets,
                                         "exclude_alphabets": None, "split": "val"}}
    return {"mode": "auto"}


def run(args) -> int:
    from metaedge.train.trainer import RESUMABLE_CHANGES, TrainConfig, fit
    cli_cfg = _config_from_args(args)
    if args.resume:
        run_dir = args.resume
        path = os.path.join(run_dir, "config.json")
        if not os.path.isfile(path):
            raise CliError(f"--resume: {path} not found (is {run_dir!r} a metaedge run directory?)")
        from metaedge.runtime.fileio import read_json
        try:
            stored = read_json(path, "run configuration")
        except (OSError, ValueError) as exc:
            raise CliError(f"--resume: {path}: {exc}") from None
        changed = sorted(k for k, v in cli_cfg.items() if k not in RESUMABLE_CHANGES and stored["config"].get(k) != v)
        if changed:
            raise CliError(f"--resume: these options cannot change in a resumed run: {', '.join(changed)}")
        config = TrainConfig.from_dict({**stored["config"], **{k: v for k, v in cli_cfg.items()
                                                              if k in RESUMABLE_CHANGES}})
        cli = stored["data"].get("cli")
        if not cli:
            raise CliError(f"--resume: {run_dir} was not started by `metaedge train`; resume it with "
                           f"metaedge.train.fit(..., run_dir=..., resume=True)")
        data_opts, val_opts = cli["data"], cli["val"]
    else:
        try:
            config = TrainConfig.from_dict(cli_cfg)
        except (TypeError, ValueError) as exc:
            raise CliError(str(exc)) from None
        if config.episodes is None and config.time_budget_s is None:
            raise CliError("say how long to train: --episodes N and/or --time-budget DURATION")
        data_opts, val_opts = data_args(args), _val_options(args)
        run_dir = args.run_dir or os.path.join(
            "runs", f"{config.method}-{config.backbone}-{time.strftime('%Y%m%d-%H%M%S')}")
    train, val = build_train_val(data_opts, val_opts)
    if val is None and val_opts.get("mode") == "auto":
        print(f"metaedge train: no validation data for {data_opts['data']!r} (use --val-split or --val-data); "
              f"the last model will be kept", file=sys.stderr)
    description = {"train": _describe(train), "val": _describe(val), "cli": {"data": data_opts, "val": val_opts}}
    if not args.json:
        print(f"training {config.method} / {config.backbone} on {train!r}" + (f", validating on {val!r}" if val else "")
              + f" -> {run_dir}", file=sys.stderr)
    try:
        model = fit(config=config, data=train, val_data=val, run_dir=run_dir, resume=bool(args.resume),
                    progress=not args.no_progress and not args.json, tensorboard=not args.no_tensorboard,
                    data_description=description)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        return 0
    info = model.train_info
    best_dir = os.path.join(run_dir, "best")
    result = {"run_dir": os.path.abspath(run_dir),
              "checkpoint": os.path.abspath(best_dir if os.path.isdir(best_dir) else os.path.join(run_dir, "last")),
              "episodes": info["episodes"], "train_seconds": round(info["elapsed_s"], 2),
              "stopped_by": info["stopped_by"], "best_val_accuracy": info["best_val_accuracy"],
              "best_val_ci95": info["best_val_ci95"], "best_episode": info["best_episode"],
              "spec": model.spec.to_dict()}
    if args.test:
        from metaedge.train.evaluate import evaluate
        test = build_dataset({**data_opts, "split": "test"}, "test")
        smallest = int(test.counts.min())
        try:  # as many queries as the smallest class allows, up to the usual 15
            result["test"] = [evaluate(model, test, ways=min(5, test.num_classes), shots=k,
                                       queries=max(1, min(15, smallest - k)), episodes=600).to_dict(per_episode=False)
                              for k in (1, 5) if smallest > k]
        except ValueError as exc:
            raise CliError(f"--test: {exc}") from None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        val_text = "no validation" if info["best_val_accuracy"] is None else (
            f"best validation {100 * info['best_val_accuracy']:.2f}% +- {100 * info['best_val_ci95']:.2f}% "
            f"at episode {info['best_episode']}")
        print(f"{info['episodes']} episodes in {info['elapsed_s']:.0f}s ({info['stopped_by']}); {val_text}")
        print(f"checkpoint: {result['checkpoint']}")
        for rep in result.get("test", []):
            print(f"test {rep['ways']}-way {rep['shots']}-shot: {100 * rep['mean']:.2f}% +- {100 * rep['ci95']:.2f}%")
    return 0


def _describe(ds):
    if ds is None:
        return None
    return {"name": ds.name, "classes": ds.num_classes, "images": len(ds), "preprocess": ds.preprocess.to_dict()}
