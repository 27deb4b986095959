"""`metaedge enroll`: add a class (or more shots of one) to a gallery from a few images, one class per sub-folder
of a folder (--per-folder), or shots captured from a live camera (the in-field enrollment case)."""
from __future__ import annotations

import argparse
import os
import time

from metaedge.cli import _sdk
from metaedge.cli.main import CliError

FLAGS = {**_sdk.FRAME_FLAGS, "label": "LABEL", "shots": "--shots", "classes": "--per-folder"}


def register(sub) -> None:
    p = sub.add_parser(
        "enroll", help="enroll a class from a few images into a gallery (or one class per sub-folder)",
        description="Enroll LABEL from IMAGES into the gallery file GALLERY, using the network of BUNDLE. A new "
                    "label becomes a new class; an existing label gets more shots (its prototype is the running "
                    "mean of all of them). GALLERY is created if it does not exist; the enrollment is one "
                    "transaction of the gallery store, so an interrupted command never damages it and apps using "
                    "the gallery see the class at their next prediction. Directories in IMAGES are searched for "
                    "image files; a directory whose images sit in several sub-folders (a folder of classes) is "
                    "refused unless --recursive says they are all LABEL. --per-folder DIR enrolls one class per "
                    "sub-folder of DIR instead (label = the sub-folder's name; all classes in one transaction).",
        epilog="examples:\n"
               "  metaedge enroll bundle/ classes.metaedge bolt_m6 photos/bolt_m6/*.jpg\n"
               "  metaedge enroll bundle/ classes.metaedge --per-folder photos/   # photos/<label>/*.jpg\n"
               "  metaedge enroll bundle/ classes.metaedge bolt_m6 --source /dev/video0 --shots 10 --every 0.5s \\\n"
               "      --roi 200,120,240,240      # hold the object in the box; 10 shots, one every half second\n\n"
               + _sdk.EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory (manifest.json + model.onnx)")
    p.add_argument("gallery", metavar="GALLERY", help="gallery file (created if missing)")
    p.add_argument("label", metavar="LABEL", nargs="?",
                   help="class label (1-128 characters, no control characters); not with --per-folder")
    p.add_argument("images", metavar="IMAGES", nargs="*", help="image files or directories of images (or --source)")
    p.add_argument("--per-folder", metavar="DIR", default=None,
                   help="enroll one class per sub-folder of DIR, named after it (DIR/<label>/*.png)")
    p.add_argument("--recursive", action="store_true",
                   help="the images of a directory in IMAGES may sit in several sub-folders: all of them are LABEL")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (one appears only for work longer than half a second)")
    _sdk.add_frame_args(p, "capture the shots from a camera (/dev/video0 or 0, csi://0), stream (rtsp://, http://), "
                           "video file or image folder instead of IMAGES")
    g = p.add_argument_group("capturing shots (with --source)")
    g.add_argument("--shots", type=int, default=10, metavar="N", help="shots to capture (default 10)")
    g.add_argument("--every", default="0.5s", metavar="Ts|N",
                   help="time between shots ('0.5s', '200ms') or frames between them ('3'); move or turn the "
                        "object between shots for a better class (default 0.5s)")
    g.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="give up (nothing enrolled) if the shots are not captured within S seconds (default 60)")
    _sdk.add_backend_arg(p)
    _sdk.add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.per_folder is not None:
        return _run_per_folder(args)
    if args.label is None:
        raise CliError("give LABEL and IMAGES (or --source), or --per-folder DIR", _sdk.EXIT_USAGE)
    if not args.images and not args.source and os.path.isdir(args.label):
        raise CliError(f"no IMAGES for LABEL {args.label!r}, which is a directory: --per-folder {args.label} "
                       f"enrolls one class per sub-folder of it", _sdk.EXIT_USAGE)
    if bool(args.images) == bool(args.source):
        raise CliError("give IMAGES or --source (one of them)", _sdk.EXIT_USAGE)
    if args.source is not None and args.shots < 1:
        raise CliError(f"--shots: expected an integer >= 1, got {args.shots}", _sdk.EXIT_USAGE)
    with _sdk.errors_to_exit_codes(FLAGS):
        if args.images and not args.recursive:
            _sdk.refuse_class_tree(args.images, args.label)
        images = _sdk.expand_images(args.images) if args.images else None
        with _sdk.open_classifier(args, args.gallery, must_exist=False) as clf:
            new = args.label not in clf
            if images is None:
                shots, fmt = _capture(args)
            elif args.roi:  # the regions of decoded images
                from metaedge.runtime.images import load_images
                shots, fmt = load_images(images), "auto"
            else:
                shots, fmt = images, None
            info = clf.enroll(args.label, shots, roi=args.roi, pixel_format=fmt)  # committed (durably) on return
            count = len(shots) * (len(args.roi) if args.roi else 1)
            timings = clf.last_timings
            total = len(clf)
    if args.json:
        _sdk.print_json({"label": info.label, "new_class": new, "images": count, "class": info.to_dict(),
                         "classes": total, "gallery": args.gallery, "timings": timings.to_dict()})
    else:
        what = "new class" if new else "more shots for"
        print(f"enrolled {what} {info.label!r}: {count} image(s), {info.shots} shot(s) in total; "
              f"{total} class(es) in {args.gallery}")
        print(f"  {_sdk.timings_line(timings)}")
    return 0


def _run_per_folder(args) -> int:
    """--per-folder DIR: one class per sub-folder, all in one transaction."""
    if args.label is not None or args.images or args.source or args.roi:
        raise CliError("--per-folder DIR takes the labels from the sub-folders: give no LABEL, IMAGES, --source or "
                       "--roi with it", _sdk.EXIT_USAGE)
    with _sdk.errors_to_exit_codes(FLAGS):
        classes = _sdk.class_folders(args.per_folder)
        images = sum(len(v) for v in classes.values())
        update, close = _sdk.progress_bar(len(classes), "enroll", "class", not args.no_progress and not args.json)
        with _sdk.open_classifier(args, args.gallery, must_exist=False) as clf:
            new = {label: label not in clf for label in classes}
            try:
                infos = clf.enroll_many(classes, pixel_format=args.pixel_format,
                                        progress=lambda done, n, label: update(done, label))
            finally:
                close()
            timings = clf.last_timings
            total = len(clf)
    if args.json:
        _sdk.print_json({"classes_enrolled": [{"label": i.label, "new_class": new[i.label],
                                               "images": len(classes[i.label]), "class": i.to_dict()} for i in infos],
                         "images": images, "classes": total, "gallery": args.gallery, "timings": timings.to_dict()})
        return 0
    width = max(len(i.label) for i in infos)
    for i in infos:
        print(f"  {i.label:<{width}}  {'new class' if new[i.label] else 'more shots'}: {len(classes[i.label])} "
              f"image(s), {i.shots} shot(s) in total")
    print(f"enrolled {len(infos)} class(es) from {args.per_folder} ({sum(new.values())} new), {images} image(s); "
          f"{total} class(es) in {args.gallery}")
    print(f"  {_sdk.timings_line(timings)}")
    return 0


def _capture(args):
    """--shots frames of --source, one every --every, as (frames, pixel format); enroll cuts the --roi regions."""
    import sys
    from metaedge.runtime.stream import parse_every
    from metaedge.runtime.video import open_source
    schedule = parse_every(args.every)
    shots, fmt = [], None
    deadline = time.monotonic() + args.timeout
    last, seen = -float("inf"), 0
    with open_source(args.source) as source:
        while len(shots) < args.shots:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CliError(f"--source {args.source}: {len(shots)} of {args.shots} shots in {args.timeout:.0f} s; "
                               f"nothing enrolled (raise --timeout or lower --shots)", _sdk.EXIT_USAGE)
            frame = source.read(timeout=remaining)
            if frame is None:
                raise CliError(f"--source {args.source}: ended after {len(shots)} of {args.shots} shots; nothing "
                               f"enrolled", _sdk.EXIT_USAGE)
            now = time.monotonic()
            due = schedule is None or (schedule[0] == "frames" and seen % int(schedule[1]) == 0) or \
                (schedule[0] == "seconds" and now - last >= schedule[1])
            seen += 1
            if not due:
                continue
            last = now
            shots.append(frame.pixels.copy())
            fmt = args.pixel_format or frame.pixel_format
            if not args.json:
                print(f"  shot {len(shots)}/{args.shots} (frame {frame.index})", file=sys.stderr, flush=True)
    return shots, fmt
