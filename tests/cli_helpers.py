"""Running `metaedge` commands in-process as a user would, for the CLI tests of the workstation commands."""
import contextlib
import io

from metaedge.cli.main import main

# a small synthetic data set that trains in seconds
SYNTHETIC = ["--data", "synthetic", "--synthetic-classes", "40", "--synthetic-samples", "12"]


def run(argv) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``metaedge ARGV`` (argparse's own refusals included)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()
