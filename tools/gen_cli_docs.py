"""Regenerate docs/cli.md from the commands' own --help (tests/test_cli_help.py checks it is current).

    python tools/gen_cli_docs.py
"""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def help_text(argv: list[str]) -> str:
    from metaedge.cli.main import main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        main(argv + ["--help"])
    return buf.getvalue().rstrip()


def render() -> str:
    import os
    os.environ["COLUMNS"] = "100"  # stable wrapping whatever the terminal
    from metaedge.cli.main import COMMAND_MODULES, build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    parts = ["# `metaedge` command reference", "",
             "Generated from each command's `--help` by `python tools/gen_cli_docs.py`; do not edit by hand.", "",
             "```", help_text([]), "```", ""]
    for name, command in sub.choices.items():
        parts += [f"## metaedge {name}", "", "```", help_text([name]), "```", ""]
        actions = [a for a in command._actions if a.__class__.__name__ == "_SubParsersAction"]
        for action in actions[0].choices if actions else ():  # e.g. metaedge classes history
            parts += [f"### metaedge {name} {action}", "", "```", help_text([name, action]), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    (ROOT / "docs" / "cli.md").write_text(render())
    print(f"wrote {ROOT / 'docs' / 'cli.md'}")
