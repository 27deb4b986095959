"""The README's Python tour is executed as written (in a temporary directory), so it never rots; the quick
start's commands exist in the Makefile and .ci/run calls the same test command."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_python_tour_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", _section("Python tour"), re.S)
    assert len(blocks) == 1
    proc = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "5-way 1-shot:" in proc.stdout
    assert (tmp_path / "tour_bundle" / "manifest.json").exists()
    assert (tmp_path / "tour_classes.metaedge").exists()


def test_quick_start_is_two_make_targets_and_ci_runs_the_test_one():
    commands = re.findall(r"^(make \w+)", _section("Quick start"), re.M)
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_has_no_unfilled_placeholders():
    assert "PLACEHOLDER" not in README
