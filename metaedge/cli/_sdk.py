"""What the device-side commands (enroll, predict, adapt, classes) share: exit codes, error mapping, image
path expansion, opening a classifier or a gallery. Two commands (or a command and an app) editing one gallery
at once need no lock of ours: every change is a transaction of the gallery store."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from typing import Mapping

from metaedge.cli.main import CliError

# Exit codes scripts can rely on (also listed in every command's --help).
EXIT_OK = 0
EXIT_INTERNAL = 1     # a bug in metaedge (the message says how to get the traceback)
EXIT_USAGE = 2        # bad arguments or bad input: unreadable image, bad label, unknown class, empty gallery
EXIT_DEPENDENCY = 3   # an optional package is missing, or the requested backend cannot run here
EXIT_DATA = 4         # gallery or bundle missing, corrupted, edited, of another bundle/embedding size, or too new
EXIT_IO = 5           # a write failed (disk full, read-only, permission, gallery busy for too long)

EXIT_CODES_HELP = """exit codes:
  0  success
  2  bad arguments or bad input (unreadable or special file, oversized image, bad label, unknown class,
     empty gallery, class pack conflict)
  3  a required package is missing, or the backend cannot run here (the message says why)
  4  gallery or bundle missing, corrupted, edited after export, made for another bundle, in the old format
     (run `metaedge classes migrate`), or written by a newer metaedge
  5  a write failed (disk full, read-only file system, permission, gallery busy); nothing was changed
  1  an internal error (a bug: METAEDGE_DEBUG=1 shows the traceback)
"""

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

# Library parameters -> the flags of the commands that pass them (see cli_message). Each command adds its own.
FRAME_FLAGS = {"roi": "--roi", "rois": "--roi", "pixel_format": "--pixel-format", "resize_mode": "--resize-mode",
               "yuv_matrix": "--yuv-matrix", "every": "--every", "smooth": "--smooth", "k": "--k",
               "max_frames": "--max-frames", "backend": "--backend"}

# Work shorter than this shows no progress bar (tqdm's delay); METAEDGE_PROGRESS_DELAY overrides it (seconds).
PROGRESS_DELAY_S = 0.5


def add_backend_arg(p) -> None:
    p.add_argument("--backend", default="auto", metavar="NAME",
                   help="inference backend: auto (TensorRT > ONNX Runtime CUDA > ONNX Runtime CPU), or one of "
                        "tensorrt, ort-cuda, ort-cpu (default: auto)")


def add_frame_args(p, source_help: str) -> None:
    """--source/--roi/--pixel-format/--resize-mode/--yuv-matrix: camera frames, video files and streams."""
    g = p.add_argument_group("camera frames, video files and streams")
    g.add_argument("--source", metavar="URI", default=None, help=source_help)
    g.add_argument("--roi", metavar="X,Y,W,H", action="append", type=parse_roi, default=None,
                   help="the region of each frame (or image) to classify, in pixels; repeat it for several regions "
                        "(each gets its own prediction); default: the whole frame")
    g.add_argument("--pixel-format", default=None, choices=("rgb", "bgr", "rgba", "bgra", "gray", "nv12", "yuyv"),
                   help="layout of the source's frames (default: what the source says - BGR for OpenCV video, raw "
                        "YUYV/NV12 for raw cameras and csi://)")
    g.add_argument("--resize-mode", default=None, choices=("squeeze", "letterbox", "center_crop"),
                   help="how frames of another shape are fitted to the network input (default: the bundle's "
                        "resize policy, what it was trained with)")
    g.add_argument("--yuv-matrix", default="bt601", choices=("bt601", "bt709", "bt601-full", "bt709-full"),
                   help="YUV -> RGB conversion of NV12/YUYV frames (default: bt601, limited range)")


def parse_roi(text: str) -> tuple[int, int, int, int]:
    parts = text.replace(" ", "").split(",")
    try:
        x, y, w, h = (int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H (four integers, pixels), got {text!r}") from None
    if w < 1 or h < 1 or x < 0 or y < 0:
        raise argparse.ArgumentTypeError(f"expected x, y >= 0 and w, h >= 1, got {text!r}")
    return x, y, w, h


def add_json_arg(p) -> None:
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _images_in(directory: str) -> list[str]:
    """The image files under ``directory`` (recursively, sorted; hidden files and folders skipped)."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in sorted(files)
                     if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    return found


def class_folders(directory: str) -> dict[str, list[str]]:
    """``{label: image files}`` of a folder with one sub-folder per class (label = the folder's name), for
    ``--per-folder``; refused when it is not such a folder (images beside the sub-folders, a sub-folder
    without images, a folder name that is not a valid label)."""
    from metaedge.runtime.gallery import check_label
    if not os.path.isdir(directory):
        raise CliError(f"--per-folder {directory}: not a directory", EXIT_USAGE)
    entries = sorted(e for e in os.listdir(directory) if not e.startswith("."))
    loose = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(directory, e))]
    if loose:
        raise CliError(f"--per-folder {directory}: {len(loose)} image file(s) outside the class sub-folders (e.g. "
                       f"{loose[0]}); put each class's images in a sub-folder named after it", EXIT_USAGE)
    classes: dict[str, list[str]] = {}
    for name in entries:
        sub = os.path.join(directory, name)
        if not os.path.isdir(sub):
            continue
        try:
            label = check_label(name, "label")
        except ValueError as exc:
            raise CliError(f"--per-folder {directory}: sub-folder {name!r} is not a valid label: "
                           f"{str(exc).split(': ', 1)[-1]}", EXIT_USAGE) from None
        images = _images_in(sub)
        if not images:
            raise CliError(f"--per-folder {directory}: sub-folder {name!r} has no image files; remove it or add "
                           f"images (nothing was enrolled)", EXIT_USAGE)
        classes[label] = images
    if not classes:
        raise CliError(f"--per-folder {directory}: no sub-folders (expected one sub-folder of images per class)",
                       EXIT_USAGE)
    return classes


def refuse_class_tree(paths: list[str], label: str) -> None:
    """Refuse a directory whose images sit in several sub-folders and none beside them - a folder of classes
    given as the images of one class - with the flags that say what was meant."""
    for p in paths:
        if not os.path.isdir(p):
            continue
        entries = [e for e in os.listdir(p) if not e.startswith(".")]
        if any(e.lower().endswith(IMAGE_EXTENSIONS) for e in entries):
            continue
        holding = [e for e in sorted(entries) if os.path.isdir(os.path.join(p, e)) and _images_in(os.path.join(p, e))]
        if len(holding) >= 2:
            raise CliError(f"{p}: holds {len(holding)} sub-folders of images ({', '.join(holding[:3])}"
                           f"{', ...' if len(holding) > 3 else ''}) - one class per folder? Use --per-folder {p} to "
                           f"enroll each as its own class, or --recursive to enroll all of them as {label!r}",
                           EXIT_USAGE)


def expand_images(paths: list[str], recursive: bool = True) -> list[str]:
    """Files as given; directories expanded to the image files inside them (sorted, recursively)."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            if recursive:
                found = _images_in(p)
            else:
                found = [os.path.join(p, f) for f in sorted(os.listdir(p))
                         if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
            if not found:
                raise CliError(f"{p}: a directory with no image files ({', '.join(IMAGE_EXTENSIONS)})", EXIT_USAGE)
            out.extend(found)
        elif not os.path.exists(p):
            raise CliError(f"{p}: no such file or directory", EXIT_USAGE)
        else:
            out.append(p)
    if not out:
        raise CliError("no images given", EXIT_USAGE)
    return out


def cli_message(message: str, flags: Mapping[str, str]) -> str:
    """A library message in the command's words: the Python parameters it names (`steps`, images_of_known) as the
    flags or arguments that set them (--steps, --known), and library function prefixes ("adapt(): ") dropped."""
    message = re.sub(r"(?<![\w.])[a-z_]+\(\): ", "", message)
    message = re.sub(r"`([A-Za-z_][A-Za-z0-9_]*)`", lambda m: flags.get(m.group(1), m.group(0)), message)
    for name, flag in flags.items():
        if "_" in name:  # bare identifiers; one-word names (k, label) only when quoted as above
            message = re.sub(rf"(?<![\w.-]){re.escape(name)}(?!\w)", flag, message)
    return message


@contextlib.contextmanager
def errors_to_exit_codes(flags: Mapping[str, str] | None = None):
    """Library exceptions -> CliError with the documented exit code and the library's message, its parameter
    names turned into the command's ``flags`` ({parameter: flag}, see cli_message)."""
    try:
        yield
    except CliError:
        raise
    except Exception as exc:
        mapped = _map_error(exc)
        if mapped is None:
            raise
        raise CliError(cli_message(str(mapped), flags or {}), mapped.code) from None


def _map_error(exc: Exception) -> CliError | None:
    """The CliError (message, exit code) of a library exception, None for anything else (a bug)."""
    from metaedge._optional import MissingDependencyError
    from metaedge.runtime.backends.base import BackendUnavailable
    from metaedge.runtime.bundle import BundleError
    from metaedge.runtime.engine_cache import EngineCacheError
    from metaedge.runtime.fileio import WriteError
    from metaedge.runtime.gallery import GalleryError, UnknownLabelError
    from metaedge.runtime.spec import SpecError
    from metaedge.runtime.video import VideoSourceError
    if isinstance(exc, (MissingDependencyError, BackendUnavailable)):
        return CliError(str(exc), EXIT_DEPENDENCY)
    if isinstance(exc, (GalleryError, SpecError, BundleError, EngineCacheError)):
        return CliError(str(exc), EXIT_DATA)
    if isinstance(exc, WriteError):
        return CliError(str(exc), EXIT_IO)
    # an unknown class, an unreadable file, an unreachable camera or stream, a bad value
    if isinstance(exc, (UnknownLabelError, VideoSourceError, ValueError, TypeError)):
        return CliError(str(exc), EXIT_USAGE)
    if isinstance(exc, OSError):  # reading an input failed (missing, permission, I/O): writes are WriteErrors
        what = f"{exc.filename}: " if exc.filename else ""
        return CliError(f"cannot read {what}{exc.strerror or exc}", EXIT_USAGE)
    return None


def cli_actor(args) -> str:
    """Who a command's changes are attributed to in the gallery's audit trail."""
    from metaedge.runtime.gallery import default_actor
    command = " ".join(str(x) for x in (getattr(args, "command", None), getattr(args, "action", None)) if x)
    base = default_actor()
    return (base[:base.index(" (")] if " (" in base else base) + f" (metaedge {command}, pid {os.getpid()})"


def open_classifier(args, gallery: str | None, must_exist: bool, autosave: bool = True):
    """An EdgeClassifier on ``args.bundle`` with ``args.backend`` and the gallery file (hook for tests)."""
    from metaedge.runtime.classifier import EdgeClassifier
    if gallery is not None and must_exist and not os.path.lexists(gallery):
        raise CliError(f"{gallery}: no such gallery (enroll some classes first: metaedge enroll BUNDLE {gallery} "
                       f"LABEL IMAGES...)", EXIT_DATA)
    if not os.path.isdir(args.bundle):
        raise CliError(f"{args.bundle}: not a bundle directory (make one with `metaedge export`)", EXIT_DATA)
    frames = {"resize_mode": getattr(args, "resize_mode", None), "yuv_matrix": getattr(args, "yuv_matrix", "bt601")}
    clf = EdgeClassifier(args.bundle, gallery=gallery, backend=args.backend, autosave=autosave, **frames)
    clf.gallery.actor = cli_actor(args)
    return clf


def open_gallery(path: str, args, *, must_exist: bool = True):
    """The gallery at ``path`` (store or old-format file) for the `classes` commands, changes attributed to
    this command."""
    from metaedge.runtime.gallery import Gallery
    if must_exist and not os.path.lexists(path):
        raise CliError(f"{path}: no such gallery", EXIT_DATA)
    g = Gallery.load(path)
    g.actor = cli_actor(args)
    return g


def timings_line(t) -> str:
    """One line of a call's Timings (milliseconds)."""
    return "" if t is None else str(t)


def progress_bar(total: int, desc: str, unit: str, enabled: bool):
    """-> (update(done, postfix=None), close) of a progress bar on stderr that appears only once the work has
    taken PROGRESS_DELAY_S (so sub-second work draws nothing); no-ops when disabled or without tqdm."""
    if not enabled:
        return (lambda done, postfix=None: None), (lambda: None)
    try:
        from tqdm import tqdm
    except ImportError:
        return (lambda done, postfix=None: None), (lambda: None)
    try:
        delay = float(os.environ.get("METAEDGE_PROGRESS_DELAY", PROGRESS_DELAY_S))
    except ValueError:
        delay = PROGRESS_DELAY_S
    bars = []  # made at the first update: refused work (bad arguments) prints no bar

    def update(done, postfix=None):
        if not bars:
            bars.append(tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, delay=delay))
        bar = bars[0]
        if postfix:
            bar.set_postfix_str(postfix, refresh=False)
        bar.update(done - bar.n)  # (draws only after `delay`, unlike refresh())

    def close():
        for bar in bars:
            bar.close()
    return update, close
