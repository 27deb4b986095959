"""The Jetson recipe (docker/jetson/) checked as far as a machine without docker and without a Jetson allows:
the Dockerfile's instructions and variables, the build context that build.sh really makes (the sdist the image
compiles), the profiles' archs against setup.py and this machine's nvcc, and the image's build-time check
(check_image.py) on passing and failing `metaedge info` outputs. The image itself is NOT built here."""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "docker" / "jetson"
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "CMD", "WORKDIR", "LABEL", "ENTRYPOINT", "USER"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (RECIPE / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word, rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = [[]]
    for ins in dockerfile_instructions():
        if ins[0] == "FROM":
            result.append([])
        result[-1].append(ins)
    return result


def profiles() -> dict[str, dict[str, str]]:
    """The jp6/jp7 defaults of build.sh (its `: "${VAR:=value}"` lines per case branch)."""
    text = (RECIPE / "build.sh").read_text()
    out = {}
    for name, body in re.findall(r"^\s*(jp\d)\)(.*?);;", text, re.S | re.M):
        out[name] = dict(re.findall(r'"\$\{(\w+):=([^}]*)\}"', body))
    return out


def test_dockerfile_uses_only_known_instructions_and_declared_variables():
    global_args = {a.split("=")[0] for w, a in stages()[0] if w == "ARG"}
    assert "BASE_IMAGE" in global_args
    for stage in stages()[1:]:
        assert stage[0] == ("FROM", "${BASE_IMAGE}" + (" AS build" if "AS build" in stage[0][1] else ""))
        declared = {"PATH"}
        for word, args in stage:
            assert word in INSTRUCTIONS, word
            if word in ("ARG", "ENV"):
                declared |= {re.split(r"[= ]", part)[0] for part in re.findall(r"(\w+=(?:\"[^\"]*\"|\S+)|\w+)", args)}
            if word != "FROM":
                used = set(re.findall(r"\$\{(\w+)\}", args))
                assert used <= declared, f"{word} {args}: {sorted(used - declared)} not declared in this stage"


def test_the_build_context_holds_what_the_dockerfile_copies(tmp_path):
    if importlib.util.find_spec("build") is None:
        pytest.skip("python -m build is not installed")
    context = tmp_path / "context"
    proc = subprocess.run(["bash", str(RECIPE / "build.sh"), "jp6", "--context-only", str(context)],
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for word, args in dockerfile_instructions():
        if word == "COPY" and not args.startswith("--from"):
            source = args.split()[0]
            assert list(context.glob(source)), f"COPY {source}: nothing in the build context"
    sdist = next(context.glob("metaedge-*.tar.gz"))
    listing = subprocess.run(["tar", "tzf", str(sdist)], capture_output=True, text=True, check=True).stdout
    assert "/csrc/cuda/topk.cu" in listing and "/csrc/cuda/cuda_kernels.h" in listing  # what the CUDA build needs


def test_profiles_name_archs_that_setup_py_and_nvcc_support():
    spec = importlib.util.spec_from_file_location("metaedge_setup_for_recipe", ROOT / "setup.py")
    setup_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_module)
    found = profiles()
    assert found["jp6"]["CUDA_ARCHS"] == "87" and found["jp7"]["CUDA_ARCHS"] == "110"
    assert found["jp6"]["NUMPY_SPEC"] == "numpy>=1.26,<2"   # the same pin as the [jetson] extra
    assert "l4t-jetpack:r36" in found["jp6"]["BASE_IMAGE"]
    for profile in found.values():
        assert profile["CUDA_ARCHS"] in setup_module.WANTED_ARCHS
    nvcc = setup_module.find_nvcc()
    if nvcc is None:
        pytest.skip("no nvcc here to ask which archs it compiles")
    supported = setup_module.nvcc_supported_archs(nvcc)
    major, _ = setup_module.nvcc_version(nvcc)
    # JetPack 7's CUDA 13 compiles for Thor and Orin; JetPack 6's CUDA 12.6 is on the device, not here.
    if major >= 13:
        assert {"87", "110"} <= set(supported)


def test_build_script_parses_and_refuses_unknown_profiles():
    assert subprocess.run(["bash", "-n", str(RECIPE / "build.sh")]).returncode == 0
    proc = subprocess.run(["bash", str(RECIPE / "build.sh"), "jp5"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


def run_check(tmp_path, info: dict, arch: str) -> subprocess.CompletedProcess:
    path = tmp_path / "info.json"
    path.write_text(json.dumps(info))
    return subprocess.run([sys.executable, str(RECIPE / "check_image.py"), "--arch", arch, "--info-json", str(path)],
                          capture_output=True, text=True)


def test_image_check_passes_a_good_image_and_names_what_a_bad_one_lacks(tmp_path):
    good = {"cuda": {"built": True, "archs": ["87"]}, "packages": {"tensorrt": "10.3.0"},
            "jetson": {"summary": "JetPack 6.1 (L4T R36.4.0)"}, "install": {}}
    proc = run_check(tmp_path, good, "87")
    assert proc.returncode == 0 and "image check passed: CUDA kernels for sm_87, TensorRT 10.3.0" in proc.stdout
    wrong_arch = {**good, "cuda": {"built": True, "archs": ["90"]}}
    assert "built for sm_90, not sm_87" in run_check(tmp_path, wrong_arch, "87").stderr
    no_trt = {**good, "packages": {"tensorrt": None},
              "install": {"tensorrt": ["sudo apt-get install -y python3-libnvinfer"]}}
    proc = run_check(tmp_path, no_trt, "87")
    assert proc.returncode == 1 and "sudo apt-get install -y python3-libnvinfer" in proc.stderr


def test_image_check_fails_on_this_machine_s_cpu_build(tmp_path):
    """This machine's real `metaedge info` (no TensorRT, no JetPack) is what a broken image looks like."""
    proc = subprocess.run([sys.executable, "-m", "metaedge", "info", "--json"], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    info = json.loads(proc.stdout)
    if info["packages"]["tensorrt"]:
        pytest.skip("TensorRT is installed here")
    check = run_check(tmp_path, info, "87")
    assert check.returncode == 1 and "TensorRT's Python package does not import" in check.stderr
    assert "no JetPack detected" in check.stderr
