"""The source and binary packages: `python -m build` makes an sdist holding every source and header, builds the
wheel FROM that sdist (as pip and packagers do), and the wheel installs into a fresh venv - no torch, no source
tree on the path - where metaedge imports and enrolls/predicts a real bundle on ONNX Runtime CPU.

CPU-only (METAEDGE_CUDA=0) to stay within a couple of minutes on 2 cores; the CUDA sources are compiled by the
editable build of `make test` itself.
"""
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import venv
import zipfile
from pathlib import Path

import pytest

from metaedge._version import __version__

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow
# What the sdist must carry beside the package: the build inputs and what a packager runs (tests, tools, docs).
SDIST_TREES = ("csrc", "metaedge", "tests", "tools", "docs", "requirements", "docker")
SDIST_FILES = ("README.md", "LICENSE", "CHANGELOG.md", "Makefile", "setup.py", "pyproject.toml", "MANIFEST.in")
NEVER_SHIPPED = re.compile(r"(\.so|\.o|\.pyc)$|(^|/)_build_config\.json$|(^|/)\.built$|__pycache__")


def tracked_files() -> list[str]:
    """The repository's files (git ls-files); outside a git checkout (tests run from an unpacked sdist) the
    files on disk under the same roots."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
        return [f for f in out.stdout.split("\0") if f and (ROOT / f).is_file()]
    return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
            and not NEVER_SHIPPED.search(str(p.relative_to(ROOT))) and p.relative_to(ROOT).parts[0] in SDIST_TREES]


def required_in_sdist(files: list[str]) -> set[str]:
    return {f for f in files if f.split("/")[0] in SDIST_TREES or f in SDIST_FILES}


def unresolved_includes(names: set[str]) -> list[str]:
    """Every #include "..." of a native source in ``names`` must resolve to a file in ``names`` (relative to the
    including file or to csrc/include, as the build's -I says): a header missing from the sdist fails here."""
    problems = []
    for name in sorted(n for n in names if n.startswith("csrc/") and n.endswith((".cpp", ".cu", ".h", ".cuh"))):
        text = (ROOT / name).read_text(errors="replace") if (ROOT / name).exists() else ""
        for include in re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, re.M):
            candidates = {os.path.normpath(os.path.join(os.path.dirname(name), include)),
                          os.path.normpath(os.path.join("csrc/include", include)),
                          os.path.normpath(os.path.join("csrc", include))}
            if not candidates & names:
                problems.append(f"{name} includes {include!r}, which the sdist does not contain")
    return problems


def sdist_problems(sdist_names: set[str], tracked: list[str]) -> list[str]:
    missing = sorted(required_in_sdist(tracked) - sdist_names)
    shipped_products = sorted(n for n in sdist_names if NEVER_SHIPPED.search(n))
    return ([f"missing from the sdist: {m}" for m in missing] + unresolved_includes(sdist_names)
            + [f"build product in the sdist: {p}" for p in shipped_products])


def test_the_sdist_check_catches_a_missing_header():
    """The check below can fail: drop one header from a faithful listing and it is named."""
    tracked = tracked_files()
    listing = required_in_sdist(tracked)
    assert sdist_problems(listing, tracked) == []
    header = "csrc/cpu/cpu_kernels.h"
    problems = sdist_problems(listing - {header}, tracked)
    assert f"missing from the sdist: {header}" in problems
    assert any("cpu_kernels.h" in p and "does not contain" in p for p in problems)
    assert "build product in the sdist: metaedge/_C.cpython-311-x86_64-linux-gnu.so" in sdist_problems(
        listing | {"metaedge/_C.cpython-311-x86_64-linux-gnu.so"}, tracked)


@pytest.fixture(scope="module")
def packages():
    """sdist + wheel built by `python -m build` (the wheel from the unpacked sdist), CPU-only."""
    with tempfile.TemporaryDirectory(prefix="metaedge-pkg-") as tmp:
        out = Path(tmp) / "dist"
        env = {**os.environ, "METAEDGE_CUDA": "0", "CFLAGS": "-g0", "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
        env.pop("PYTHONPATH", None)
        # --no-isolation: build with this venv's pinned setuptools/pybind11/numpy instead of downloading them.
        proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                              cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
        sdists, wheels = list(out.glob("*.tar.gz")), list(out.glob("*.whl"))
        assert len(sdists) == 1 and len(wheels) == 1, os.listdir(out)
        yield sdists[0], wheels[0], Path(tmp)


def test_sdist_holds_every_source_and_header(packages):
    sdist, _, _ = packages
    assert sdist.name == f"metaedge-{__version__}.tar.gz"
    prefix = f"metaedge-{__version__}/"
    with tarfile.open(sdist) as tar:
        names = {m.name[len(prefix):] for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix)}
    assert sdist_problems(names, tracked_files()) == []


def test_wheel_holds_the_package_the_module_and_the_typing_files(packages):
    _, wheel, _ = packages
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"metaedge-{__version__}.dist-info/METADATA").decode()
        config = zf.read("metaedge/_build_config.json").decode()
    assert any(re.fullmatch(r"metaedge/_C\.[^/]+\.so", n) for n in names)
    assert {"metaedge/py.typed", "metaedge/_C.pyi", "metaedge/_version.py"} <= names
    python_sources = {f for f in tracked_files() if f.startswith("metaedge/") and f.endswith((".py", ".pyi"))}
    assert python_sources <= names, sorted(python_sources - names)
    page = {f for f in tracked_files() if f.startswith("metaedge/runtime/serve/static/")}
    assert page and page <= names, sorted(page - names)  # the operator page of `metaedge serve`
    assert not any(n.startswith(("csrc/", "tests/", "tools/")) for n in names)
    assert f"\nVersion: {__version__}\n" in metadata
    assert '"cuda_built": false' in config


def test_wheel_installs_in_a_fresh_venv_and_runs_the_device_side(packages, tmp_path):
    torch = pytest.importorskip("torch")
    from metaedge.export import export_bundle
    from tests.export.conftest import make_tiny
    del torch
    bundle = tmp_path / "bundle"
    export_bundle(make_tiny(), bundle)

    _, wheel, build_dir = packages
    env_dir = build_dir / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # The device side: the wheel, its dependencies and ONNX Runtime, at the versions the project pins.
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              str(wheel), "onnxruntime", "-c", str(ROOT / "requirements" / "runtime.txt")],
                             cwd=tmp_path, env=clean_env, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, (install.stdout + install.stderr)[-5000:]
    smoke = subprocess.run([str(python), str(ROOT / "tools" / "wheel_smoke.py"), "--bundle", str(bundle),
                            "--source-tree", str(ROOT)], cwd=tmp_path, env=clean_env, capture_output=True, text=True,
                           timeout=300)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert "wheel smoke test passed" in smoke.stdout
    assert "ok   enroll + predict on ort-cpu" in smoke.stdout


def test_cibuildwheel_builds_cpu_only_manylinux_wheels_for_both_architectures():
    """The manylinux story as far as a machine without docker can check it: the build matrix cibuildwheel
    derives from pyproject.toml, the CPU-only environment, and a test command that exists."""
    import tomllib
    if shutil.which("cibuildwheel", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("cibuildwheel is not installed (requirements/dev.txt pins it)")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "cibuildwheel"), "--print-build-identifiers",
                           "--platform", "linux", str(ROOT)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [f"cp3{v}-manylinux_{arch}" for arch in ("x86_64", "aarch64") for v in (10, 11, 12)]
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["cibuildwheel"]
    assert config["environment"]["METAEDGE_CUDA"] == "0"
    script = re.search(r"\{project\}/(\S+\.py)", config["test-command"]).group(1)
    assert (ROOT / script).is_file()


def extras_for(environment: dict[str, str]) -> dict[str, set[str]]:
    """Which distributions each extra installs in a given environment (PEP 508 markers evaluated)."""
    import tomllib

    from packaging.requirements import Requirement
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    out = {}
    for extra, requirements in extras.items():
        env = {"sys_platform": "linux", "platform_system": "Linux", **environment, "extra": extra}
        out[extra] = {str(r.name) + str(r.specifier) for r in map(Requirement, requirements)
                      if r.marker is None or r.marker.evaluate(env)}
    return out


def test_extras_are_safe_on_a_jetson():
    """[tensorrt] never pulls PyPI TensorRT over JetPack's and [onnx] never the CPU onnxruntime over NVIDIA's
    onnxruntime-gpu on a Jetson; [jetson] keeps NumPy 1.x on JetPack 6 only; elsewhere the extras install what
    their names say."""
    jetpack6 = extras_for({"platform_machine": "aarch64", "python_version": "3.10", "python_full_version": "3.10.12"})
    jetpack7 = extras_for({"platform_machine": "aarch64", "python_version": "3.12", "python_full_version": "3.12.3"})
    x86 = extras_for({"platform_machine": "x86_64", "python_version": "3.11", "python_full_version": "3.11.7"})
    for jetson in (jetpack6, jetpack7):
        assert jetson["tensorrt"] == set() and jetson["onnx"] == set() and jetson["onnx-gpu"] == set()
        assert not any(name.startswith(("tensorrt", "onnxruntime")) for name in set().union(
            *(deps for extra, deps in jetson.items() if extra != "onnx-cpu")))
    assert jetpack6["jetson"] == {"numpy<2,>=1.26"} and jetpack7["jetson"] == set()
    assert jetpack6["onnx-cpu"] == {"onnxruntime>=1.16"}   # asked for by name: ARM boards without a GPU
    assert x86["onnx"] == {"onnxruntime>=1.16"} and x86["onnx-gpu"] == {"onnxruntime-gpu>=1.16"}
    assert x86["tensorrt"] == {"tensorrt>=10.3"} and x86["jetson"] == set()
    # [video] leaves JetPack's OpenCV (with GStreamer) alone; [video-any] asks for PyPI's by name.
    assert jetpack6["video"] == jetpack7["video"] == set() and x86["video"] == {"opencv-python-headless>=4.6"}
    assert jetpack7["video-any"] == {"opencv-python-headless>=4.6"}
