"""`metaedge compress`: a smaller, faster checkpoint - channel pruning, then episodic fine-tuning on a budget."""
from __future__ import annotations

import argparse
import json
import os
import sys

from metaedge.cli.main import CliError


def finetune_duration(text: str) -> float:
    """``--finetune``: a duration (90s, 5m, 1.5h, seconds) or ``0`` / ``none`` for no fine-tuning."""
    from metaedge.train.config import parse_duration
    if str(text).strip().lower() in ("none", "no", "off"):
        return 0.0
    return parse_duration(text)


def register(sub) -> None:
    from metaedge.cli._options import add_config_arguments
    from metaedge.train.config import DataConfig
    p = sub.add_parser(
        "compress", help="prune a checkpoint's channels and fine-tune it back (a smaller, faster backbone)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Remove --prune of the channels of every coupled group of layers of CHECKPOINT (lowest weight "
                    "norm first; residual connections, depthwise groups and the embedding follow; Torch-Pruning's "
                    "dependency graph), then recover the accuracy by fine-tuning with the checkpoint's own method "
                    "and episode shape on its own training data (as recorded in the checkpoint; the data flags "
                    "below override it) for --finetune of wall time and/or --finetune-episodes. The best validated "
                    "model is kept when the data has validation classes. The result is an ordinary checkpoint: "
                    "`metaedge eval` and `metaedge export` (also --int8) use it as any other.",
        epilog="examples:\n"
               "  metaedge compress runs/r18/best --prune 0.5 --finetune 5m -o runs/r18-p50\n"
               "  metaedge compress runs/r18/best --prune 0.3 --finetune none -o runs/r18-p30   # prune only\n"
               "  metaedge compress runs/omniglot/best --prune 0.5 --finetune-episodes 2000 --lr 3e-4 \\\n"
               "      --data omniglot:/data/omniglot --sets images_background_small1 -o runs/omniglot-p50")
    p.add_argument("checkpoint", help="checkpoint or run directory (its best/, else last/)")
    p.add_argument("-o", "--output", "--out", dest="out", required=True, metavar="DIR",
                   help="checkpoint directory to write (refused if it holds files, unless --force)")
    g = p.add_argument_group("pruning")
    g.add_argument("--prune", type=float, required=True, metavar="F",
                   help="fraction of channels to remove, e.g. 0.3 or 0.5 (about (1-F)^2 of the multiply-adds remain)")
    g.add_argument("--round-to", type=int, default=8, metavar="N",
                   help="keep channel counts multiples of N (vector widths; default 8; 1 = exact ratio)")
    g.add_argument("--keep-embedding-dim", action="store_true",
                   help="do not prune the last layer's outputs (the embedding keeps its size)")
    f = p.add_argument_group("fine-tuning")
    f.add_argument("--finetune", type=finetune_duration, default=300.0, metavar="DURATION",
                   help="fine-tuning wall time, e.g. 90s, 5m, 1.5h (default 5m; 0 or none = prune only, unless "
                        "--finetune-episodes)")
    f.add_argument("--finetune-episodes", type=int, default=None, metavar="N",
                   help="stop fine-tuning after N episodes (with a --finetune time: whichever comes first)")
    f.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the checkpoint's)")
    f.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch")
    f.add_argument("--run-dir", default=None, metavar="DIR",
                   help="also keep the fine-tuning run (metrics, TensorBoard, best/last) in DIR")
    add_config_arguments(p, DataConfig, "compress")
    p.add_argument("--force", action="store_true", help="write into --output even if it already holds files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from metaedge.cli._checkpoint_data import fine_tuning_data
    from metaedge.cli._options import values_from_args
    from metaedge.train.checkpoint import CheckpointError, find_checkpoint, load_checkpoint
    from metaedge.train.compress import compress
    from metaedge.train.config import DataConfig
    from metaedge.train.prune import PruneError
    if not 0 < args.prune < 1:
        raise CliError(f"--prune: expected a fraction in (0, 1), got {args.prune}")
    if args.finetune < 0:
        raise CliError(f"--finetune: expected a duration >= 0 (or none), got {args.finetune}")
    if args.finetune_episodes is not None and args.finetune_episodes < 1:
        raise CliError(f"--finetune-episodes: expected >= 1, got {args.finetune_episodes}")
    if args.round_to is not None and args.round_to < 1:
        raise CliError(f"--round-to: expected >= 1, got {args.round_to}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CliError(f"--output: {args.out} exists and is not a directory")
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        raise CliError(f"--output: {args.out} already holds files; pass --force to write the checkpoint there "
                       f"anyway", 1)
    try:
        model = load_checkpoint(find_checkpoint(args.checkpoint))
    except CheckpointError as exc:
        raise CliError(str(exc), 1) from None
    finetune_s = args.finetune or None
    data = val = options = None
    if finetune_s is not None or args.finetune_episodes is not None:
        try:
            given = values_from_args(args, DataConfig, "compress")
        except ValueError as exc:
            raise CliError(str(exc)) from None
        data, val, options = fine_tuning_data(model.checkpoint_meta, given, model.spec.preprocess)
        if not args.json:
            print(f"fine-tuning on {data!r}" + (f", validating on {val!r}" if val is not None else ""),
                  file=sys.stderr)
    overrides = {"num_threads": args.threads} if args.threads else {}
    try:
        _, report = compress(model, args.out, prune=args.prune, data=data, val_data=val, finetune_s=finetune_s,
                             finetune_episodes=args.finetune_episodes, lr=args.lr, round_to=args.round_to,
                             keep_embedding_dim=args.keep_embedding_dim, data_options=options,
                             progress=not (args.no_progress or args.json), run_dir=args.run_dir, **overrides)
    except PruneError as exc:
        raise CliError(f"--prune: {exc}", 1) from None
    except ValueError as exc:
        raise CliError(str(exc), 1) from None
    if args.json:
        print(json.dumps({"checkpoint": os.path.abspath(args.out), **report}, indent=2, default=str))
        return 0
    ft = report["finetune"]
    print(f"pruned {100 * args.prune:.0f}% of the channels: {report['macs_ratio']:.2f}x fewer multiply-adds, "
          f"{report['params_ratio']:.2f}x fewer parameters, embedding {report['embedding_dim'][0]} -> "
          f"{report['embedding_dim'][1]}")
    if ft:
        val_text = ("" if ft.get("best_val_accuracy") is None else
                    f"; best validation {100 * ft['best_val_accuracy']:.2f}% +- {100 * ft['best_val_ci95']:.2f}%")
        print(f"fine-tuned {ft['episodes']} episodes in {ft['elapsed_s']:.0f}s ({ft['stopped_by']}){val_text}")
    print(f"checkpoint: {os.path.abspath(args.out)}\nnext: `metaedge eval {args.out} ...`, "
          f"`metaedge export {args.out} -o BUNDLE [--int8]`")
    return 0
