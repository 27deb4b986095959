"""`metaedge demo`: the whole product in a few minutes, offline."""
from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="meta-train, export, enroll new classes and predict - end to end, offline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the main job end to end on the embedded SyntheticGlyphs data set (default), on Omniglot "
                    "or on your own image folder:\n"
                    "  1. meta-train a conv4 Prototypical Network (progress bar; stops at --time-budget),\n"
                    "  2. export a bundle (ONNX + manifest) and verify it against torch,\n"
                    "  3. open an EdgeClassifier on the best backend here (TensorRT > ONNX Runtime > torch),\n"
                    "  4. enroll never-seen classes with 1..10 shots and predict held-out images; adapt the head,\n"
                    "  5. print accuracy (95%% CI) and per-frame latency, write summary.json, plots, bundle, gallery.",
        epilog="examples:\n  metaedge demo\n  metaedge demo --quick --out /tmp/demo\n"
               "  metaedge demo --omniglot ~/data/omniglot --time-budget 300\n"
               "  metaedge demo --data ~/pictures/parts --size 84")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--omniglot", nargs="+", metavar="DIR|ZIP",
                     help="use Omniglot: a folder with images_background_small1/2.zip (development protocol), "
                          "or zip files / torchvision-layout folders")
    src.add_argument("--data", metavar="IMAGE_FOLDER", help="use your own images: one sub-folder per class")
    p.add_argument("--size", type=int, default=84, help="input side for --data (default 84)")
    p.add_argument("--color", choices=("rgb", "gray"), default="rgb", help="input colour for --data (default rgb)")
    p.add_argument("--out", default="demo_out", help="output folder (default ./demo_out)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="meta-training wall time (default 100; 12 with --quick)")
    p.add_argument("--ways", type=int, default=20, help="classes per evaluation episode (default 20)")
    p.add_argument("--episodes", type=int, default=None, help="evaluation episodes per shot count (default 30)")
    p.add_argument("--backend", default="auto", help="auto | tensorrt | ort-cuda | ort-cpu | torch (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, training and episodes (default 0)")
    p.add_argument("--quick", action="store_true", help="a sub-minute smoke run (tiny training, few episodes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON at the end")
    p.set_defaults(func=run)


def run(args) -> int:
    from metaedge.train.demo import DemoConfig, run_demo
    options = dict(out_dir=args.out, ways=args.ways, backend=args.backend, seed=args.seed,
                   progress=not args.no_progress)
    if args.omniglot:
        options.update(data="omniglot", omniglot=tuple(args.omniglot))
    elif args.data:
        options.update(data="folder", folder=args.data, extra={"size": args.size, "color": args.color})
    if args.time_budget is not None:
        options["time_budget_s"] = args.time_budget
    if args.episodes is not None:
        options["episodes"] = args.episodes
    cfg = DemoConfig.quick_defaults(**options) if args.quick else DemoConfig(**options)
    summary = run_demo(cfg)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0
