"""`metaedge enroll`: add a class (or more shots of one) to a gallery from a few images."""
from __future__ import annotations

import argparse

from metaedge.cli import _sdk


def register(sub) -> None:
    p = sub.add_parser(
        "enroll", help="enroll a class from a few images into a gallery",
        description="Enroll LABEL from IMAGES into the gallery file GALLERY, using the network of BUNDLE. A new "
                    "label becomes a new class; an existing label gets more shots (its prototype is the running "
                    "mean of all of them). GALLERY is created if it does not exist; the enrollment is one "
                    "transaction of the gallery store, so an interrupted command never damages it and apps using "
                    "the gallery see the class at their next prediction. Directories in IMAGES are searched for "
                    "image files.",
        epilog="example:\n  metaedge enroll bundle/ classes.metaedge bolt_m6 photos/bolt_m6/*.jpg\n\n"
               + _sdk.EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory (manifest.json + model.onnx)")
    p.add_argument("gallery", metavar="GALLERY", help="gallery file (created if missing)")
    p.add_argument("label", metavar="LABEL", help="class label (1-128 characters, no control characters)")
    p.add_argument("images", metavar="IMAGES", nargs="+", help="image files or directories of images")
    _sdk.add_backend_arg(p)
    _sdk.add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    with _sdk.errors_to_exit_codes():
        images = _sdk.expand_images(args.images)
        with _sdk.open_classifier(args, args.gallery, must_exist=False) as clf:
            new = args.label not in clf
            info = clf.enroll(args.label, images)  # committed (durably) when it returns
            timings = clf.last_timings
            total = len(clf)
    if args.json:
        _sdk.print_json({"label": info.label, "new_class": new, "images": len(images), "class": info.to_dict(),
                         "classes": total, "gallery": args.gallery, "timings": timings.to_dict()})
    else:
        what = "new class" if new else "more shots for"
        print(f"enrolled {what} {info.label!r}: {len(images)} image(s), {info.shots} shot(s) in total; "
              f"{total} class(es) in {args.gallery}")
        print(f"  {_sdk.timings_line(timings)}")
    return 0
