"""`metaedge adapt`: fine-tune the classifier head of a gallery on its stored support embeddings."""
from __future__ import annotations

import argparse
import sys

from metaedge.cli import _sdk


def register(sub) -> None:
    p = sub.add_parser(
        "adapt", help="fine-tune the head on the enrolled shots (or --reset it)",
        description="Adapt GALLERY's classifier to its classes: a cosine head initialised from the prototypes "
                    "(weight imprinting) is fine-tuned with SGD on the support embeddings stored in the gallery, "
                    "and predictions use it from then on. Needs no images (the embeddings are stored). Classes "
                    "enrolled later are imprinted into the head; run adapt again to include them. --reset goes "
                    "back to pure prototypes.",
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _sdk.add_backend_arg(p)
    _sdk.add_json_arg(p)
    p.set_defaults(func=run)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None, lambda: None
    try:
        from tqdm import tqdm
    except ImportError:
        return None, lambda: None
    bars = []  # made at the first step: a refused adapt (too few classes) prints no bar

    def update(done, steps, loss):
        if not bars:
            bars.append(tqdm(total=total, desc="adapt", unit="step", file=sys.stderr, leave=False))
        bar = bars[0]
        bar.n = done
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.refresh()

    def close():
        for bar in bars:
            bar.close()
    return update, close


def run(args) -> int:
    with _sdk.errors_to_exit_codes():
        with _sdk.open_classifier(args, args.gallery, must_exist=True) as clf:
            if args.reset:
                was = clf.adapted
                clf.reset_adaptation()
                result = {"reset": True, "was_adapted": was, "classes": len(clf)}
                report = None
            else:
                update, close = _progress_bar(args.steps, not args.no_progress and not args.json)
                try:
                    report = clf.adapt(steps=args.steps, lr=args.lr, momentum=args.momentum,
                                       weight_decay=args.weight_decay, scale=args.scale, progress=update)
                finally:
                    close()
                result = report.to_dict()
    if args.json:
        _sdk.print_json(result)
    elif report is None:
        print(f"adaptation {'removed' if result['was_adapted'] else 'was not active'}; predictions use the "
              f"prototypes of {result['classes']} class(es)")
    else:
        print(f"adapted {report.classes} classes on {report.support} stored embeddings: loss {report.loss_before:.4f} "
              f"-> {report.loss_after:.4f} in {report.steps} steps ({report.seconds:.2f} s); saved {args.gallery}")
    return 0
