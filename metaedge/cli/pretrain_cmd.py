"""`metaedge pretrain`: learn a backbone from unlabelled images (a folder, an image list, a video file, or a
labelled source without its labels). Its flags are generated from ``DataConfig`` and ``PretrainConfig``."""
from __future__ import annotations

import argparse

from metaedge.cli._training import add_training_arguments, print_result, run_training_command


def register(sub) -> None:
    from metaedge.train.config import PretrainConfig
    p = sub.add_parser(
        "pretrain", help="self-supervised pretraining on unlabelled images or video (SimCLR, BYOL, unsupervised "
                         "episodes)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train an embedding backbone without labels: SimCLR (contrastive), BYOL (non-contrastive), or "
                    "a meta-learning method on unsupervised episodes (each class an image, its shots and queries "
                    "augmentations of it). The augmentations are the only notion of 'same class', so they are "
                    "chosen per domain (--augment auto: glyphs for gray inputs, natural for RGB). The run directory "
                    "is laid out as `metaedge train`'s (config.json, metrics.jsonl, TensorBoard, last/, best/ with "
                    "--val-data); start few-shot meta-training from it with `metaedge train --init RUN_DIR/last`. "
                    "Same trainer features: --time-budget, --resume, AMP/channels_last, TensorBoard, torchrun.",
        epilog="examples:\n"
               "  metaedge pretrain --data folder:./frames --size 84 --time-budget 30m --run-dir runs/pre\n"
               "  metaedge pretrain --data video:site.mp4 --frame-step 10 --method byol --episodes 5000\n"
               "  metaedge pretrain --data omniglot:/data/omniglot --sets images_background_small1 \\\n"
               "      --rotations 0,90,180,270 --mirror --time-budget 19m        # labels removed\n"
               "  metaedge train --data ./parts --init runs/pre/last --episodes 2000   # then meta-train")
    p.set_defaults(func=run)
    add_training_arguments(p, PretrainConfig, "pretrain")


def run(args) -> int:
    from metaedge.train.config import PretrainConfig
    done = run_training_command(args, PretrainConfig, "pretrain")
    if done is not None:
        print_result(done[1], args.json)
    return 0
