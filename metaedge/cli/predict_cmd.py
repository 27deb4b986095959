"""`metaedge predict`: classify images against the classes of a gallery."""
from __future__ import annotations

import argparse

from metaedge.cli import _sdk
from metaedge.cli.main import CliError


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify images with the enrolled classes",
        description="Classify IMAGES with the network of BUNDLE against the classes enrolled in GALLERY. Each "
                    "image gets the nearest class and its score (cosine similarity for cosine bundles and after "
                    "adaptation); it is reported as unknown when the score is below the gallery's open-set "
                    "threshold (or --threshold). Directories in IMAGES are searched for image files.",
        epilog="example:\n  metaedge predict bundle/ classes.metaedge frame.png --k 3 --json\n\n"
               + _sdk.EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory (manifest.json + model.onnx)")
    p.add_argument("gallery", metavar="GALLERY", help="gallery file made by `metaedge enroll`")
    p.add_argument("images", metavar="IMAGES", nargs="+", help="image files or directories of images")
    p.add_argument("--k", type=int, default=1, help="how many best classes to report per image (default 1)")
    p.add_argument("--threshold", type=float, default=None,
                   help="open-set threshold: scores below it are 'unknown' (default: the gallery's calibrated "
                        "value, else the bundle's, else off)")
    _sdk.add_backend_arg(p)
    _sdk.add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.k < 1:
        raise CliError(f"--k: expected an integer >= 1, got {args.k}", _sdk.EXIT_USAGE)
    with _sdk.errors_to_exit_codes():
        images = _sdk.expand_images(args.images)
        with _sdk.open_classifier(args, args.gallery, must_exist=True, autosave=False) as clf:
            if args.threshold is not None:
                clf.unknown_threshold = args.threshold
            preds = clf.predict(images, k=args.k)
            timings = clf.last_timings
            threshold = clf.unknown_threshold
            backend = clf.backend.describe()
    if args.json:
        _sdk.print_json({"predictions": [{"image": img, **p.to_dict()} for img, p in zip(images, preds)],
                         "threshold": threshold, "backend": backend, "timings": timings.to_dict()})
        return 0
    width = max(len(img) for img in images)
    for img, p in zip(images, preds):
        head = f"unknown (nearest {p.label!r} {p.score:.4f})" if p.unknown else f"{p.label}  {p.score:.4f}"
        print(f"{img:<{width}}  {head}")
        for label, score in p.topk[1:]:
            print(f"{'':<{width}}    {label}  {score:.4f}")
    print(f"# {backend}; {_sdk.timings_line(timings)}")
    return 0
