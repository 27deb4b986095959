"""Entry point of the `metaedge` command. Each command group lives in its own module in this package and
exposes ``register(subparsers)``; commands whose module or dependencies are missing say so when run."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# (module, commands it registers) - the order is the order of `metaedge --help`.
COMMAND_MODULES = ("demo", "pretrain", "train", "evaluate", "compress", "export", "build", "enroll", "predict", "adapt",
                   "classes", "serve", "token", "info", "bench")


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (exit 2): the message and where to read more, not the usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from metaedge import __version__
    parser = _Parser(
        prog="metaedge",
        description="Few-shot visual recognition for edge GPUs: meta-train a backbone, export it, and enroll "
                    "new classes on the device from a handful of images.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"metaedge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"metaedge.cli.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name != f"metaedge.cli.{name}_cmd":
                raise
            continue
        module.register(sub)
    return parser


def one_line(exc: BaseException) -> str:
    """A message on one line (a multi-line one, e.g. a backend selection log, joined with '; ')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    return lines[0] + " " + "; ".join(lines[1:])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except CliError as exc:
        print(f"metaedge {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return exc.code
    except ImportError as exc:  # a missing optional dependency: the message says what to install
        print(f"metaedge {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"metaedge {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, unless asked for the traceback
        if os.environ.get("METAEDGE_DEBUG"):
            raise
        print(f"metaedge {args.command}: internal error: {type(exc).__name__}: {one_line(exc)} (a bug in "
              f"metaedge: run again with METAEDGE_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
