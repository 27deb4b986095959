"""What the device-side commands (enroll, predict, adapt, classes) share: exit codes, error mapping, image
path expansion, opening a classifier or a gallery. Two commands (or a command and an app) editing one gallery
at once need no lock of ours: every change is a transaction of the gallery store."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

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


def expand_images(paths: list[str], recursive: bool = True) -> list[str]:
    """Files as given; directories expanded to the image files inside them (sorted, recursively)."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for root, dirs, files in os.walk(p):
                dirs.sort()
                found.extend(os.path.join(root, f) for f in sorted(files)
                             if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
                if not recursive:
                    break
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


@contextlib.contextmanager
def errors_to_exit_codes():
    """Library exceptions -> CliError with the documented exit code and the library's message."""
    from metaedge._optional import MissingDependencyError
    from metaedge.runtime.backends.base import BackendUnavailable
    from metaedge.runtime.bundle import BundleError
    from metaedge.runtime.engine_cache import EngineCacheError
    from metaedge.runtime.fileio import WriteError
    from metaedge.runtime.gallery import GalleryError, UnknownLabelError
    from metaedge.runtime.spec import SpecError
    from metaedge.runtime.video import VideoSourceError
    try:
        yield
    except CliError:
        raise
    except (MissingDependencyError, BackendUnavailable) as exc:
        raise CliError(str(exc), EXIT_DEPENDENCY) from None
    except (GalleryError, SpecError, BundleError, EngineCacheError) as exc:
        raise CliError(str(exc), EXIT_DATA) from None
    except WriteError as exc:
        raise CliError(str(exc), EXIT_IO) from None
    except UnknownLabelError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except VideoSourceError as exc:  # an unreadable file, an unreachable camera or stream
        raise CliError(str(exc), EXIT_USAGE) from None
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except OSError as exc:  # reading an input failed (missing, permission, I/O): writes are WriteErrors
        what = f"{exc.filename}: " if exc.filename else ""
        raise CliError(f"cannot read {what}{exc.strerror or exc}", EXIT_USAGE) from None


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
    if t is None:
        return ""
    return (f"{t.images} image(s): pre-processing {1e3 * t.preprocessing:.1f} ms, backbone {1e3 * t.backbone:.1f} ms, "
            f"kernels {1e3 * t.kernels:.1f} ms, total {1e3 * t.total:.1f} ms")
