"""Typing and versioning: mypy sees the public API through `import metaedge as me` (and reports misuse of
it), the stubs of the compiled module are current, the lazy exports and their type-checker declarations agree,
`import metaedge` stays cheap, and the version is written in one place."""
import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import gen_native_stubs  # noqa: E402

pytest.importorskip("mypy")


def run_mypy(*args: str) -> subprocess.CompletedProcess:
    # The configuration is pyproject.toml's [tool.mypy] (files, follow_imports, cache under build/).
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_mypy_accepts_the_public_api_and_metaedge_s_typed_modules():
    proc = run_mypy()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout


def test_mypy_reports_each_misuse_of_the_public_api():
    path = ROOT / "tests" / "typecheck" / "public_api_errors.py"
    expected = {i: m.group(1).strip() for i, line in enumerate(path.read_text().splitlines(), 1)
                if (m := re.search(r"# E: (.*)$", line))}
    proc = run_mypy(str(path.relative_to(ROOT)))
    errors: dict[int, str] = {}
    for m in re.finditer(r"^tests/typecheck/public_api_errors\.py:(\d+): error: (.*)$", proc.stdout, re.M):
        errors[int(m.group(1))] = errors.get(int(m.group(1)), "") + m.group(2)
    assert set(errors) == set(expected), proc.stdout
    for line, words in expected.items():
        assert words in errors[line], f"line {line}: expected {words!r}, mypy said {errors[line]!r}"


def test_native_stubs_are_current():
    """metaedge/_C.pyi is what tools/gen_native_stubs.py makes from the built module."""
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_native_stubs.py"), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stub_check_of_a_cpu_build_finds_changed_and_removed_bindings():
    committed = "def topk(q: int, k: int) -> None: ...\ndef gone() -> None: ...\ndef cuda_malloc() -> int: ...\n"
    assert gen_native_stubs.cpu_build_problems(committed, "def topk(q: int, k: int) -> None: ...\n"
                                               "def gone() -> None: ...\n") == []
    changed = gen_native_stubs.cpu_build_problems(committed, "def topk(q: int, k: int, metric: str) -> None: ...\n")
    assert any(p.startswith("topk: the module has") for p in changed)
    assert "gone: in the stubs but not in the module" in changed
    assert not any(p.startswith("cuda_malloc") for p in changed)   # CUDA-only: absent from a CPU build


@pytest.mark.parametrize("module", ["metaedge/__init__.py", "metaedge/export/__init__.py",
                                    "metaedge/train/__init__.py"])
def test_type_checker_declarations_match_the_lazy_exports(module):
    """The names under `if TYPE_CHECKING:` are exactly those that __getattr__ resolves at run time."""
    tree = ast.parse((ROOT / module).read_text())
    declared: set[str] = set()
    lazy: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom)
                declared |= {alias.asname or alias.name for alias in imp.names}
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and \
                node.targets[0].id in ("_LAZY", "_LAZY_ATTRS", "_LAZY_MODULES", "_SUBMODULES"):
            value = ast.literal_eval(node.value)
            lazy |= set(value)
    assert declared and declared == lazy, (sorted(declared - lazy), sorted(lazy - declared))


def test_import_metaedge_is_cheap_and_needs_no_optional_package():
    code = ("import sys\nfor name in ('torch', 'onnxruntime', 'tensorrt', 'onnx'):\n    sys.modules[name] = None\n"
            "import metaedge\nprint(sorted(m for m in sys.modules if m.startswith(('metaedge', 'numpy'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ("['metaedge', 'metaedge._build_info', 'metaedge._lazy', 'metaedge._optional', "
                                   "'metaedge._version']")


def test_the_version_is_written_once():
    from metaedge import __version__
    from metaedge._version import __version__ as written
    assert __version__ == written and re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+|\.dev\d+)?", written)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "metaedge._version.__version__"}
    hits = [str(p.relative_to(ROOT)) for p in (ROOT / "metaedge").rglob("*.py")
            if re.search(rf"""["']{re.escape(written)}["']""", p.read_text())]
    assert hits == ["metaedge/_version.py"], hits


def test_the_changelog_has_a_section_for_this_version():
    from metaedge import __version__
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(__version__)}\]", text, re.M)
    assert re.search(r"^## \[Unreleased\]", text, re.M)


def test_py_typed_ships_with_the_package():
    assert (ROOT / "metaedge" / "py.typed").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert {"py.typed", "*.pyi"} <= set(package_data["metaedge"])
