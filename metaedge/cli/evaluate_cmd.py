"""`metaedge eval`: N-way K-shot accuracy of a checkpoint on held-out classes, with 95% confidence intervals.

The data defaults to the checkpoint's own: its source and class split (seed, fractions) as stored at training
time, test part. Classes the model saw in training (labelled or not) are refused unless --allow-overlap."""
from __future__ import annotations

import argparse
import json
import os
import sys

from metaedge.cli._options import add_config_arguments, values_from_args
from metaedge.cli.main import CliError

# what rebuilds a checkpoint's class split when the evaluation reads the same source (rotations and mirror
# images are not inherited: they multiply classes without moving them between splits)
_SPLIT_OPTIONS = ("split_fractions", "split_by", "data_seed", "synthetic_classes", "synthetic_samples", "on_error",
                  "frame_step", "max_frames")
_SELECTION = ("sets", "alphabets", "exclude_alphabets")


def register(sub) -> None:
    from metaedge.train.config import DataConfig
    p = sub.add_parser(
        "eval", help="few-shot accuracy of a checkpoint with 95%% confidence intervals",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate a trained checkpoint on classes it never saw: seeded N-way K-shot episodes, mean "
                    "accuracy +- 1.96 std / sqrt(episodes). Without --data the checkpoint's own training source is "
                    "used, test split, with the class split (seed, fractions) it was trained with; with the same "
                    "--data, the split options (and Omniglot sets/alphabets) not given are the checkpoint's. Classes seen in training - labelled or "
                    "not - are refused, naming them (--allow-overlap evaluates anyway, with a warning). The data is "
                    "pre-processed as the checkpoint's model.json says unless --size/--color/--invert/... are "
                    "given. Classification: nearest prototype (the device's metaedge.kernels path), prototype + "
                    "adapt_head fine-tuning (the device's adapt()), or MAML/Reptile adaptation of the whole network.",
        epilog="examples:\n"
               "  metaedge eval runs/glyphs                      # the test split of what it was trained on\n"
               "  metaedge eval runs/omniglot/best --data omniglot:/data/omniglot --sets images_background_small2 \\\n"
               "      --alphabets 'Japanese_(katakana),Sanskrit,Tagalog' --ways 20 5 --shots 1 --episodes 1000\n"
               "  metaedge eval runs/glyphs --ways 5 20 --shots 1 5 10 --plot eval.png   # a picture of it")
    p.add_argument("checkpoint", help="checkpoint directory (with model.json + model.safetensors) or a run directory")
    add_config_arguments(p, DataConfig, "eval")
    e = p.add_argument_group("episodes")
    e.add_argument("--ways", type=int, nargs="+", default=[5], help="one or more N (each N x K is reported) [5]")
    e.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="one or more K [1 5]")
    e.add_argument("--queries", type=int, default=15, help="query images per class [15]")
    e.add_argument("--episodes", type=int, default=600, help="episodes per setting [600]")
    e.add_argument("--seed", type=int, default=0, help="episode seed (same seed = same episodes) [0]")
    e.add_argument("--replacement", action="store_true", help="allow classes with fewer than shots + queries images")
    e.add_argument("--allow-overlap", action="store_true",
                   help="evaluate even on classes the checkpoint was trained on (warns, naming them)")
    c = p.add_argument_group("classification")
    c.add_argument("--method", choices=("prototype", "adapt_head", "maml", "reptile"), default="prototype",
                   help="prototype: nearest class mean with the model's metric; adapt_head: cosine head initialised "
                        "from the prototypes and fine-tuned with metaedge.kernels.adapt_head; maml/reptile: inner-loop "
                        "adaptation (options from training unless given) [prototype]")
    c.add_argument("--metric", choices=("euclidean", "cosine", "dot"), default=None,
                   help="prototype: override the model's metric")
    c.add_argument("--adapt-steps", type=int, default=100, help="adapt_head: SGD steps [100]")
    c.add_argument("--adapt-lr", type=float, default=0.1, help="adapt_head: learning rate [0.1]")
    c.add_argument("--adapt-scale", type=float, default=10.0, help="adapt_head: cosine logit scale [10]")
    c.add_argument("--inner-steps", type=int, default=None, help="maml/reptile: adaptation steps")
    c.add_argument("--inner-lr", type=float, default=None, help="maml/reptile: adaptation learning rate")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 [cpu]")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--per-episode", action="store_true", help="include every episode's accuracy in --json output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the reports as JSON on stdout")
    p.add_argument("--plot", metavar="OUT.png", default=None,
                   help="write a PNG: accuracy against shots per N-way with 95%% CI bars and chance level, and the "
                        "most-confused class pairs over every setting (needs matplotlib: pip install "
                        "'metaedge[plot]')")
    p.set_defaults(func=run)


def eval_data_config(given: dict, stored: dict | None, preprocess):
    """The ``DataConfig`` to evaluate on: the checkpoint's source and class split unless ``--data`` names another
    source (then only what is given), test split, pre-processing from the checkpoint unless given."""
    import dataclasses

    from metaedge.train.config import DataConfig
    from metaedge.train.data.sources import UNLABELLED_KINDS, source_kind
    same_source = stored is not None and given.get("data", stored["data"]) == stored["data"]
    if same_source:
        selects = any(k in given for k in _SELECTION)
        base = {k: stored[k] for k in _SPLIT_OPTIONS + (() if selects else _SELECTION) if k in stored}
        kind, _ = source_kind(stored["data"])
        if "split" not in given and not selects and (
                kind in UNLABELLED_KINDS or (kind == "omniglot" and stored.get("split") in (None, "all"))):
            raise CliError(f"this checkpoint was trained on every image of {stored['data']!r} (no held-out test "
                           f"split there): give --data (and --sets/--alphabets) for classes it never saw")
        cfg = DataConfig.from_dict({"data": stored["data"], **base, **given})
        if "split" not in given and not (kind == "omniglot" and selects):
            cfg = dataclasses.replace(cfg, split="test")
    else:
        cfg = DataConfig.from_dict(given)
    return with_checkpoint_preprocess(cfg, preprocess)


def with_checkpoint_preprocess(cfg, preprocess):
    """``cfg`` with the checkpoint's input pre-processing wherever the flags did not name one (the checkpoint
    says how its inputs were made; synthetic data has only its own)."""
    import dataclasses

    from metaedge.train.data.sources import source_kind
    kind, _ = source_kind(cfg.data)
    if kind == "synthetic":
        return cfg
    return dataclasses.replace(cfg, size=cfg.size or preprocess.size[0], color=cfg.color or preprocess.color,
                               invert=preprocess.invert if cfg.invert is None else cfg.invert,
                               mean=cfg.mean or list(preprocess.mean), std=cfg.std or list(preprocess.std))


def run(args) -> int:
    import torch

    from metaedge.train.checkpoint import CheckpointError, find_checkpoint, load_checkpoint
    from metaedge.train.config import DataConfig
    from metaedge.train.data.base import DataError
    from metaedge.train.data.sources import build_labelled
    from metaedge.train.evaluate import evaluate, training_overlap
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.plot:  # before minutes of evaluation: a missing matplotlib or an unwritable path is said first
        from metaedge._optional import require
        require("matplotlib", "metaedge eval --plot")   # exit 3 naming the install line
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
            raise CliError(f"--plot: the folder of {args.plot!r} does not exist")
    try:
        directory = find_checkpoint(args.checkpoint)
        model = load_checkpoint(directory, map_location=args.device)
    except CheckpointError as exc:
        raise CliError(str(exc)) from None
    pre = model.spec.preprocess
    stored = ((model.checkpoint_meta.get("training") or {}).get("data") or {}).get("options")
    try:
        cfg = eval_data_config(values_from_args(args, DataConfig, "eval"), stored, pre)
        data = build_labelled(cfg, "test")
    except (DataError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if data.preprocess != pre:
        print(f"metaedge eval: warning: data pre-processing {data.preprocess} differs from the checkpoint's {pre}",
              file=sys.stderr)
    overlap = training_overlap(model, data)
    if overlap is None:
        print("metaedge eval: warning: the checkpoint does not record its training classes; cannot check that the "
              "evaluation classes are new to it", file=sys.stderr)
    elif overlap:
        listed = ", ".join(overlap[:8]) + (f" and {len(overlap) - 8} more" if len(overlap) > 8 else "")
        message = f"{len(overlap)} of the {data.num_classes} evaluation classes were seen in training: {listed}"
        if not args.allow_overlap:
            raise CliError(message + " (evaluate on other classes, or pass --allow-overlap)")
        print(f"metaedge eval: warning: {message}", file=sys.stderr)
    adaptation = {k: v for k, v in (("inner_steps", args.inner_steps), ("inner_lr", args.inner_lr)) if v is not None}
    if "inner_steps" in adaptation:
        adaptation["eval_inner_steps"] = adaptation["inner_steps"]
    reports = []
    for ways in args.ways:
        for shots in args.shots:
            try:
                rep = evaluate(model, data, ways=ways, shots=shots, queries=args.queries, episodes=args.episodes,
                               seed=args.seed, method=args.method, metric=args.metric, adapt_steps=args.adapt_steps,
                               adapt_lr=args.adapt_lr, adapt_scale=args.adapt_scale, adaptation=adaptation or None,
                               replacement=args.replacement, progress=not (args.no_progress or args.json),
                               confusion=bool(args.plot))
            except ValueError as exc:
                raise CliError(str(exc)) from None
            reports.append(rep)
            if not args.json:
                print(rep)
    if args.plot:
        _plot(reports, args.plot, f"{os.path.basename(os.path.abspath(directory))} on {data.name} "
                                  f"({args.episodes} episodes per setting, {args.method})")
        if not args.json:
            print(f"plot: {args.plot}")
    if args.json:
        print(json.dumps({"checkpoint": directory, "data": repr(data), "data_options": cfg.to_dict(),
                          "overlap": overlap, "reports": [r.to_dict(per_episode=args.per_episode) for r in reports]},
                         indent=2))
    return 0


def _plot(reports, path: str, title: str) -> None:
    """Accuracy vs shots and the most-confused pairs of every setting together (errors and queries summed)."""
    from collections import Counter

    from metaedge.train import plots
    errors: Counter = Counter()
    asked: Counter = Counter()
    for rep in reports:
        errors.update({(c["true"], c["predicted"]): c["errors"] for c in rep.confused})
        asked.update({c["true"]: c["queries"] for c in rep.confused})  # one count per class and setting
    confusion = [(t, p, n, asked[t]) for (t, p), n in errors.items()]
    plots.evaluation_summary([r.to_dict(per_episode=False) for r in reports], confusion, path, title=title)
