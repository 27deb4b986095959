"""`metaedge adapt`: fine-tune the classifier head of a gallery on its stored support embeddings."""
from __future__ import annotations

import argparse

from metaedge.cli import _sdk


def register(sub) -> None:
    p = sub.add_parser(
        "adapt", help="fine-tune the head on the enrolled shots (or --reset it)",
        description="Adapt GALLERY's classifier to its classes: a cosine head initialised from the prototypes "
                    "(weight imprinting) is fine-tuned with SGD on the support embeddings stored in the gallery, "
                    "and predictions use it from then on. Needs no images (the embeddings are stored). Classes "
                    "enrolled later are imprinted into the head; run adapt again to include them. --reset goes "
                    "back to pure prototypes. Unknown rejection carries over: the new head's threshold is "
                    "re-calibrated from the images `metaedge classes calibrate` was given (the gallery keeps their "
                    "embeddings) at the same target false-accept rate; the output says what it became.",
        epilog="example:\n  metaedge adapt bundle/ classes.metaedge --steps 100 --lr 0.1\n\n" + _sdk.EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory the gallery was made with")
    p.add_argument("gallery", metavar="GALLERY", help="gallery file")
    p.add_argument("--steps", type=int, default=100, help="SGD steps (default 100)")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default 0)")
    p.add_argument("--scale", type=float, default=10.0, help="cosine logit scale (default 10)")
    p.add_argument("--reset", action="store_true", help="drop the adapted head and use the prototypes again")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (one appears only for runs longer than half a second)")
    _sdk.add_backend_arg(p)
    _sdk.add_json_arg(p)
    p.set_defaults(func=run)


FLAGS = {"steps": "--steps", "lr": "--lr", "momentum": "--momentum", "weight_decay": "--weight-decay",
         "scale": "--scale", "backend": "--backend"}


def run(args) -> int:
    with _sdk.errors_to_exit_codes(FLAGS):
        with _sdk.open_classifier(args, args.gallery, must_exist=True) as clf:
            if args.reset:
                was = clf.adapted
                clf.reset_adaptation()
                state = clf.open_set()
                result = {"reset": True, "was_adapted": was, "classes": len(clf), "unknown_threshold": state.threshold,
                          "threshold_source": state.source, "open_set": state.explain()}
                report = None
            else:
                update, close = _sdk.progress_bar(args.steps, "adapt", "step", not args.no_progress and not args.json)
                try:
                    report = clf.adapt(steps=args.steps, lr=args.lr, momentum=args.momentum,
                                       weight_decay=args.weight_decay, scale=args.scale,
                                       progress=lambda done, steps, loss: update(done, f"loss={loss:.4f}"))
                finally:
                    close()
                result = report.to_dict()
    if args.json:
        _sdk.print_json(result)
    elif report is None:
        print(f"adaptation {'removed' if result['was_adapted'] else 'was not active'}; predictions use the "
              f"prototypes of {result['classes']} class(es)")
        print(f"unknown rejection: {result['open_set']}")
    else:
        took = f"{report.seconds * 1e3:.1f} ms" if report.seconds < 1 else f"{report.seconds:.2f} s"
        print(f"adapted {report.classes} classes on {report.support} stored embeddings: loss {report.loss_before:.4f} "
              f"-> {report.loss_after:.4f} in {report.steps} steps ({took}); saved {args.gallery}")
        print(f"unknown rejection: {report.open_set}")
    return 0
