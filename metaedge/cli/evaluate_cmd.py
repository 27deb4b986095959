"""`metaedge eval`: N-way K-shot accuracy of a checkpoint on held-out classes, with 95% confidence intervals."""
from __future__ import annotations

import argparse
import json
import sys

from metaedge.cli.main import CliError
from metaedge.cli.train_cmd import add_data_arguments, build_dataset, data_args


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="few-shot accuracy of a checkpoint with 95%% confidence intervals",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate a trained checkpoint on classes it never saw: seeded N-way K-shot episodes, mean "
                    "accuracy +- 1.96 std / sqrt(episodes). The data is pre-processed as the checkpoint's model.json "
                    "says unless --size/--color/--invert/... are given. Classification: nearest prototype (the "
                    "device's metaedge.kernels path), prototype + adapt_head fine-tuning (the device's adapt()), or "
                    "MAML/Reptile adaptation of the whole network.",
        epilog="example (the Omniglot development protocol):\n"
               "  metaedge eval runs/omniglot/best --data omniglot:/data/omniglot --sets images_background_small2 \\\n"
               "      --alphabets 'Japanese_(katakana),Sanskrit,Tagalog' --ways 20 5 --shots 1 --episodes 1000")
    p.add_argument("checkpoint", help="checkpoint directory (with model.json + model.safetensors) or a run directory")
    add_data_arguments(p, for_eval=True)
    e = p.add_argument_group("episodes")
    e.add_argument("--ways", type=int, nargs="+", default=[5], help="one or more N (each N x K is reported) [5]")
    e.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="one or more K [1 5]")
    e.add_argument("--queries", type=int, default=15, help="query images per class [15]")
    e.add_argument("--episodes", type=int, default=600, help="episodes per setting [600]")
    e.add_argument("--seed", type=int, default=0, help="episode seed (same seed = same episodes) [0]")
    e.add_argument("--replacement", action="store_true", help="allow classes with fewer than shots + queries images")
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
    p.set_defaults(func=run)


def _checkpoint_dir(path: str) -> str:
    import os
    for candidate in (path, os.path.join(path, "best"), os.path.join(path, "last")):
        if os.path.isfile(os.path.join(candidate, "model.json")):
            return candidate
    if os.path.basename(path) in ("model.json", "model.safetensors"):
        return os.path.dirname(path) or "."
    raise CliError(f"{path!r}: no model.json here nor in best/ or last/ (expected a checkpoint or a run directory)")


def run(args) -> int:
    import torch

    from metaedge.train.checkpoint import CheckpointError, load_checkpoint
    from metaedge.train.evaluate import evaluate
    if args.threads:
        torch.set_num_threads(args.threads)
    directory = _checkpoint_dir(args.checkpoint)
    try:
        model = load_checkpoint(directory, map_location=args.device)
    except CheckpointError as exc:
        raise CliError(str(exc)) from None
    pre = model.spec.preprocess
    opts = data_args(args)
    # the checkpoint says how its inputs were made; flags override only what they name
    opts["size"] = opts["size"] or pre.size[0]
    opts["color"] = opts["color"] or pre.color
    if opts["invert"] is None:
        opts["invert"] = pre.invert
    opts["mean"] = opts["mean"] or list(pre.mean)
    opts["std"] = opts["std"] or list(pre.std)
    if opts["data"] == "synthetic":
        opts["invert"], opts["mean"], opts["std"], opts["color"] = None, None, None, None
    data = build_dataset(opts, "test")
    if data.preprocess != pre:
        print(f"metaedge eval: warning: data pre-processing {data.preprocess} differs from the checkpoint's {pre}",
              file=sys.stderr)
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
                               replacement=args.replacement, progress=not (args.no_progress or args.json))
            except ValueError as exc:
                raise CliError(str(exc)) from None
            reports.append(rep)
            if not args.json:
                print(rep)
    if args.json:
        print(json.dumps({"checkpoint": directory, "data": repr(data),
                          "reports": [r.to_dict(per_episode=args.per_episode) for r in reports]}, indent=2))
    return 0
