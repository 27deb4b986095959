"""Every command answers --help, and docs/cli.md is the current text of those helps."""
import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from metaedge.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(next(a for a in build_parser()._actions
                       if a.__class__.__name__ == "_SubParsersAction").choices)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_help(command):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert f"metaedge {command}" in buf.getvalue()


def test_the_expected_commands_exist():
    assert {"demo", "train", "eval", "export", "build", "enroll", "predict", "adapt", "classes", "info",
            "bench"} <= set(COMMANDS)


def test_cli_reference_is_up_to_date():
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'tools'); import gen_cli_docs; "
                           "print(gen_cli_docs.render())"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (ROOT / "docs" / "cli.md").read_text().rstrip("\n") == proc.stdout.rstrip("\n"), \
        "docs/cli.md is stale: run python tools/gen_cli_docs.py"


def test_no_command_prints_usage_error_without_arguments():
    assert main([]) == 2
