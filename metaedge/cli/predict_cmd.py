"""`metaedge predict`: classify images - or the frames of a camera, video file or stream - against the classes of
a gallery."""
from __future__ import annotations

import argparse
import time

from metaedge.cli import _sdk
from metaedge.cli.main import CliError

FLAGS = {**_sdk.FRAME_FLAGS, "unknown_threshold": "--threshold", "images": "IMAGES"}


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify images, or the frames of a camera, video or stream",
        description="Classify IMAGES - or every frame of --source - with the network of BUNDLE against the classes "
                    "enrolled in GALLERY. Each image or region gets the nearest class and its score (cosine "
                    "similarity in [-1, 1] for cosine bundles and after adaptation, with a confidence (1 + score) / "
                    "2 in [0, 1]; a dot product, or minus the squared distance for euclidean bundles: higher is "
                    "nearer - the output says which); it is reported as unknown when the score is below the open-set "
                    "threshold of the head in use (the gallery's, see `metaedge classes list`, or --threshold). "
                    "Directories in IMAGES are "
                    "searched for image files. With --source the frames are classified as they come (a live "
                    "source: the newest frame each time), --save writes them with the label, score and unknown "
                    "state drawn on, and --json prints one JSON object per classified frame.",
        epilog="examples:\n"
               "  metaedge predict bundle/ classes.metaedge frame.png --k 3 --json\n"
               "  metaedge predict bundle/ classes.metaedge --source video.mp4 --save out.mp4\n"
               "  metaedge predict bundle/ classes.metaedge --source /dev/video0 --roi 200,120,240,240 --smooth 5\n"
               "  metaedge predict bundle/ classes.metaedge --source rtsp://cam.local/live --every 0.5s --json\n\n"
               + _sdk.EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory (manifest.json + model.onnx)")
    p.add_argument("gallery", metavar="GALLERY", help="gallery file made by `metaedge enroll`")
    p.add_argument("images", metavar="IMAGES", nargs="*", help="image files or directories of images (or --source)")
    p.add_argument("--k", type=int, default=1, metavar="K",
                   help="how many best classes to report per image (default 1: the best only)")
    p.add_argument("--threshold", type=float, default=None,
                   help="open-set threshold: scores below it are 'unknown' (default: the gallery's calibrated "
                        "value, else the bundle's, else off)")
    _sdk.add_frame_args(p, "classify the frames of a video file, image folder or glob, camera (/dev/video0 or 0), "
                           "stream (rtsp://, http://), Jetson CSI camera (csi://0) or GStreamer pipeline (gst:...)")
    g = p.add_argument_group("frame loop (with --source)")
    g.add_argument("--every", default=None, metavar="N|Ts",
                   help="classify every N-th frame ('3') or at most every T seconds ('0.5s', '200ms'); frames in "
                        "between keep the last result (default: every frame)")
    g.add_argument("--smooth", type=int, default=1, metavar="N",
                   help="average the scores of the last N classified frames (a steadier label; default 1: off)")
    g.add_argument("--save", metavar="OUT.mp4", default=None,
                   help="write the frames with the predictions drawn on them (.mp4, .avi or .mkv)")
    g.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames")
    _sdk.add_backend_arg(p)
    _sdk.add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.k < 1:
        raise CliError(f"--k: expected an integer >= 1, got {args.k}", _sdk.EXIT_USAGE)
    if bool(args.images) == bool(args.source):
        raise CliError("give IMAGES or --source (one of them)", _sdk.EXIT_USAGE)
    if args.source is None and any(v is not None for v in (args.every, args.save, args.max_frames)) \
            or (args.source is None and args.smooth != 1):
        raise CliError("--every, --smooth, --save and --max-frames go with --source", _sdk.EXIT_USAGE)
    if args.smooth < 1:
        raise CliError(f"--smooth: expected an integer >= 1, got {args.smooth}", _sdk.EXIT_USAGE)
    if args.max_frames is not None and args.max_frames < 1:
        raise CliError(f"--max-frames: expected an integer >= 1, got {args.max_frames}", _sdk.EXIT_USAGE)
    if args.source is not None:
        return _run_stream(args)
    with _sdk.errors_to_exit_codes(FLAGS):
        images = _sdk.expand_images(args.images)
        with _sdk.open_classifier(args, args.gallery, must_exist=True, autosave=False) as clf:
            if args.threshold is not None:
                clf.unknown_threshold = args.threshold
            if args.roi:
                preds, names = _predict_regions(clf, images, args)
            else:
                preds, names = clf.predict(images, k=args.k, pixel_format=args.pixel_format), images
            timings = clf.last_timings
            state = clf.open_set()
            backend = clf.backend.describe()
    if args.json:
        _sdk.print_json({"predictions": [{"image": img, **p.to_dict()} for img, p in zip(names, preds)],
                         "threshold": state.threshold, "threshold_source": state.source, "score": state.score,
                         "backend": backend, "timings": timings.to_dict()})
        return 0
    width = max(len(img) for img in names)
    for img, p in zip(names, preds):
        print(f"{img:<{width}}  {_describe(p)}")
        for label, score in p.topk[1:]:
            print(f"{'':<{width}}    {label}  {score:.4f}")
    print(f"# score: {state.score}")
    print(f"# unknown: {state.explain()}")
    print(f"# {backend}; {_sdk.timings_line(timings)}")
    return 0


def _predict_regions(clf, images, args):
    """Each image decoded, then its --roi regions classified in one call: (predictions, names)."""
    from metaedge.runtime.images import load_images
    preds, names = [], []
    for path in images:
        (pixels,) = load_images([path])
        got = clf.predict(pixels, k=args.k, roi=args.roi)
        for box, p in zip(args.roi, got):
            preds.append(p)
            names.append(f"{path}@{','.join(map(str, box))}")
    return preds, names


def _describe(p) -> str:
    conf = "" if p.confidence is None else f" (confidence {p.confidence:.2f})"
    return f"unknown (nearest {p.label!r} {p.score:.4f}{conf})" if p.unknown else f"{p.label}  {p.score:.4f}{conf}"


def _run_stream(args) -> int:
    import json
    import sys
    from metaedge.runtime.video import VideoWriter, draw_predictions, open_source, to_bgr
    writer = None
    summary = {}
    with _sdk.errors_to_exit_codes(FLAGS):
        with _sdk.open_classifier(args, args.gallery, must_exist=True, autosave=False) as clf:
            if args.threshold is not None:
                clf.unknown_threshold = args.threshold
            state = clf.open_set()
            if not args.json:
                print(f"# score: {state.score}\n# unknown: {state.explain()}", flush=True)
            source = open_source(args.source)
            start = time.monotonic()
            frames = classified = 0
            try:
                if args.save:
                    writer = VideoWriter(args.save, fps=getattr(source, "fps", None) or 30.0)
                for result in clf.stream(source, roi=args.roi, every=args.every, smooth=args.smooth, k=args.k,
                                         pixel_format=args.pixel_format, max_frames=args.max_frames):
                    frames += 1
                    if writer is not None:
                        image = to_bgr(result.frame.pixels, args.pixel_format or result.frame.pixel_format)
                        writer.write(draw_predictions(image, list(result.predictions), args.roi, fps=result.fps))
                    if not result.classified:
                        continue
                    classified += 1
                    if args.json:
                        sys.stdout.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
                        sys.stdout.flush()
                    else:
                        line = " | ".join(_describe(p) for p in result.predictions)
                        print(f"frame {result.frame.index:>6}  t={result.frame.timestamp:8.2f}s  {line}", flush=True)
            except KeyboardInterrupt:
                pass
            finally:
                source.close()
                if writer is not None:
                    writer.close()
            seconds = time.monotonic() - start
            summary = {"frames": frames, "classified": classified, "seconds": round(seconds, 3),
                       "fps": round(frames / seconds, 2) if seconds > 0 else None, "dropped": source.stats.dropped,
                       "reconnects": source.stats.reconnects, "saved": args.save,
                       "backend": clf.backend.describe(), "score": state.score, "threshold": state.threshold,
                       "threshold_source": state.source}
    if args.json:
        sys.stdout.write(json.dumps({"summary": summary}) + "\n")
    else:
        saved = f"; saved {args.save}" if args.save else ""
        print(f"# {frames} frame(s), {classified} classified in {summary['seconds']:.1f} s "
              f"({summary['fps'] or 0:.1f} frames/s, {summary['dropped']} dropped){saved}; {summary['backend']}")
    return 0
