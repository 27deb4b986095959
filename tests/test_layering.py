"""DESIGN.md section 2: layers import only those to their left
(kernels <- runtime <- export <- train <- cli), and the device side works with no torch installed."""
import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "metaedge"

# Layer rank of each top-level part of the package; an import may only go to an equal or lower rank.
LAYERS = {"kernels": 0, "compact": 0, "_compact_storage": 0, "cuda": 0, "_native": 0, "_optional": 0,
          "_build_info": 0, "__init__": 0, "_version": 0, "_jetson": 0, "_backend_probe": 0, "_lazy": 0,
          "_plotting": 0,
          "runtime": 1, "video": 1, "export": 2, "train": 3, "bench": 4, "cli": 4, "__main__": 4}
# torch may be imported only by these layers (and, lazily, by the development torch backend).
TORCH_ALLOWED = {"export", "train", "bench", "cli"}
EXCEPTIONS = {
    # The development backend runs a training checkpoint with torch; it is never picked on a device
    # without torch and imports train only inside the function that loads the checkpoint.
    ("runtime/backends/torch.py", "train"),
    ("runtime/backends/torch.py", "torch"),
}


def _layer_of(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None) if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (declarations for type checkers, never executed)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if not _is_type_checking_block(child))


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            if node.module == "metaedge":
                for alias in node.names:
                    yield f"metaedge.{alias.name}"


def test_layers_import_only_to_their_left():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer_of(path)
        rel = str(path.relative_to(PACKAGE))
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "torch" or parts[0] == "torchvision":
                if layer not in TORCH_ALLOWED and (rel, "torch") not in EXCEPTIONS:
                    violations.append(f"{rel} imports {name}")
            elif parts[0] == "metaedge" and len(parts) > 1 and parts[1] in LAYERS:
                target = parts[1]
                if LAYERS[target] > LAYERS[layer] and (rel, target) not in EXCEPTIONS:
                    violations.append(f"{rel} ({layer}) imports {name} ({target})")
    assert not violations, "layering violations:\n" + "\n".join(violations)


BLOCK_TORCH = textwrap.dedent("""
    import sys
    for name in ("torch", "torchvision"):
        sys.modules[name] = None  # any import of it now raises ImportError
""")


@pytest.mark.parametrize("module", ["metaedge", "metaedge.kernels", "metaedge.cuda", "metaedge.runtime",
                                    "metaedge.runtime.spec", "metaedge.cli.main"])
def test_device_side_imports_without_torch(module):
    code = BLOCK_TORCH + f"import importlib; importlib.import_module({module!r})\n"
    code += "import metaedge; metaedge.build_info()\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_cli_info_runs_without_torch():
    code = BLOCK_TORCH + "from metaedge.cli.main import main; raise SystemExit(main(['info', '--json']))\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert '"version"' in proc.stdout


def test_asking_for_training_without_torch_says_what_to_install():
    code = BLOCK_TORCH + textwrap.dedent("""
        import metaedge
        try:
            metaedge.train.fit
        except ImportError as exc:
            print("ERR", exc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "ERR" in proc.stdout and "pip install" in proc.stdout
