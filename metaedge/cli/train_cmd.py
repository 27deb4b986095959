"""`metaedge train`: meta-train a backbone on base classes; writes a resumable run directory. Its flags are
generated from ``DataConfig`` and ``TrainConfig`` (``metaedge.train.config``)."""
from __future__ import annotations

import argparse

from metaedge.cli._training import add_training_arguments, print_result, run_training_command
from metaedge.cli.main import CliError


def register(sub) -> None:
    from metaedge.train.config import TrainConfig
    p = sub.add_parser(
        "train", help="meta-train a backbone (ProtoNet, MAML, Reptile, Baseline), optionally from a pretrained one",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Meta-train an embedding backbone on base classes and keep the best validated checkpoint. "
                    "The run directory gets config.json, metrics.jsonl, TensorBoard scalars, best/ (the model to "
                    "export: model.safetensors + model.json) and last/ (with the optimizer, schedule, RNG and "
                    "episode counter: `metaedge train --resume RUN_DIR` continues exactly). --init starts from a "
                    "pretrained backbone (`metaedge pretrain`); --unlabelled mixes unsupervised episodes of "
                    "unlabelled images into the run. Multi-GPU/multi-node: launch with `torchrun "
                    "--nproc_per_node=N -m metaedge train ...`; every rank samples different episodes.",
        epilog="examples:\n"
               "  metaedge train --episodes 2000                                  # synthetic glyphs, ProtoNet\n"
               "  metaedge train --data omniglot:/data/omniglot --sets images_background_small1 \\\n"
               "      --rotations 0,90,180,270 --val-split 0.1 --ways 60 --queries 5 --time-budget 20m\n"
               "  metaedge train --data ./parts --size 84 --backbone resnet12 --method baseline --episodes 20000\n"
               "  metaedge train --data ./parts --init runs/pretrain/last --episodes 2000  # from `metaedge pretrain`\n"
               "  metaedge train --data ./parts --unlabelled video:site.mp4 --frame-step 10 --episodes 4000\n"
               "  metaedge train --resume runs/omniglot --episodes 6000          # continue, with a longer schedule")
    p.set_defaults(func=run)
    add_training_arguments(p, TrainConfig, "train")
    p.add_argument("--test", action="store_true",
                   help="after training, evaluate the best model on the test split of synthetic data / image "
                        "folders: 5-way 1-shot and 5-shot, 600 episodes (use `metaedge eval` for anything else)")


def run(args) -> int:
    from metaedge.train.config import TrainConfig
    done = run_training_command(args, TrainConfig, "train")
    if done is None:
        return 0
    model, result, data_cfg = done
    if args.test:
        import dataclasses

        from metaedge.train.data.sources import build_labelled
        from metaedge.train.evaluate import evaluate
        try:
            test = build_labelled(dataclasses.replace(data_cfg, split="test"), "test")
            smallest = int(test.counts.min())
            # as many queries as the smallest class allows, up to the usual 15
            result["test"] = [evaluate(model, test, ways=min(5, test.num_classes), shots=k,
                                       queries=max(1, min(15, smallest - k)), episodes=600).to_dict(per_episode=False)
                              for k in (1, 5) if smallest > k]
        except ValueError as exc:
            raise CliError(f"--test: {exc}") from None
    print_result(result, args.json)
    return 0
