"""`metaedge info` detects the JetPack, TensorRT and ONNX Runtime builds present and says, per backend, what is
missing and the exact install line. The machine is faked with files, not by patching the code: a system root
(METAEDGE_SYSROOT) holding /etc/nv_tegra_release, dpkg's status database, the device-tree model or the NVIDIA
driver file, and a site directory first on PYTHONPATH holding stand-in `tensorrt` / `onnxruntime` packages
with their dist-info (what pip would have installed)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metaedge._backend_probe import (JETSON_PIP_INDEX, Environment, ort_cpu_status, ort_cuda_status, tensorrt_status,
                                     warnings_for)
from metaedge._jetson import JetsonInfo, detect_jetson, parse_dpkg_status, parse_tegra_release

ROOT = Path(__file__).resolve().parents[1]
IN_VENV = sys.prefix != sys.base_prefix
ORIN_RELEASE = ("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, "
                "DATE: Fri Sep 13 04:36:44 UTC 2024\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n")
THOR_RELEASE = "# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64, DATE: x\n"


def dpkg_entry(name: str, version: str, status: str = "install ok installed") -> str:
    return (f"Package: {name}\nStatus: {status}\nPriority: standard\nArchitecture: arm64\nVersion: {version}\n"
            f"Description: {name}\n multi-line description\n .\n more\n")


def make_root(tmp_path: Path, release: str | None = None, packages: dict[str, str] | None = None,
              model: str | None = None, nvidia_driver: bool = False) -> Path:
    root = tmp_path / "sysroot"
    (root / "etc").mkdir(parents=True)
    if release is not None:
        (root / "etc" / "nv_tegra_release").write_text(release)
    if packages is not None:
        (root / "var/lib/dpkg").mkdir(parents=True)
        (root / "var/lib/dpkg/status").write_text("\n".join(dpkg_entry(n, v) for n, v in packages.items()))
    if model is not None:
        (root / "proc/device-tree").mkdir(parents=True)
        (root / "proc/device-tree/model").write_bytes(model.encode() + b"\x00")  # device-tree strings end in NUL
    if nvidia_driver:
        (root / "proc/driver/nvidia").mkdir(parents=True)
        (root / "proc/driver/nvidia/version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module 580.65\n")
    return root


def fake_distribution(site: Path, dist: str, version: str, module: str, body: str) -> None:
    """A package as pip leaves it: the importable module and a dist-info naming it in top_level.txt."""
    pkg = site / module
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(module + "\n")
    (info / "RECORD").write_text(f"{module}/__init__.py,,\n")


def run_info(root: Path, site: Path | None = None) -> tuple[dict, str]:
    env = {**os.environ, "METAEDGE_SYSROOT": str(root),
           "PYTHONPATH": os.pathsep.join([str(p) for p in (site, ROOT) if p])}
    out = {}
    for mode in ("--json", None):
        proc = subprocess.run([sys.executable, "-m", "metaedge", "info", *([mode] if mode else [])], cwd=root,
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        out[mode] = proc.stdout
    return json.loads(out["--json"]), out[None]


# --- the system files ---------------------------------------------------------------------------------------

def test_parse_tegra_release():
    assert parse_tegra_release(ORIN_RELEASE) == "36.4.0"
    assert parse_tegra_release(THOR_RELEASE) == "38.2.0"
    assert parse_tegra_release("# R35 (release), REVISION: 5.0, GCID: 1") == "35.5.0"
    assert parse_tegra_release("garbage") is None


def test_parse_dpkg_status_keeps_installed_packages_of_interest_only():
    text = "\n".join([dpkg_entry("nvidia-l4t-core", "36.4.0-20240912212859"),
                      dpkg_entry("libnvinfer10", "10.3.0.30-1+cuda12.5"),
                      dpkg_entry("python3-libnvinfer", "10.3.0.30-1+cuda12.5", status="deinstall ok config-files"),
                      dpkg_entry("cuda-nvcc-12-6", "12.6.68-1"), dpkg_entry("vim", "2:9.0")])
    assert parse_dpkg_status(text) == {"nvidia-l4t-core": "36.4.0-20240912212859",
                                       "libnvinfer10": "10.3.0.30-1+cuda12.5", "cuda-nvcc-12-6": "12.6.68-1"}


def test_orin_with_jetpack_package(tmp_path):
    root = make_root(tmp_path, ORIN_RELEASE, {"nvidia-jetpack": "6.1+b123", "nvidia-l4t-core": "36.4.0-2024",
                                              "libnvinfer10": "10.3.0.30-1+cuda12.5"},
                     model="NVIDIA Jetson AGX Orin Developer Kit")
    info = detect_jetson(root)
    assert info is not None
    assert (info.l4t, info.jetpack, info.jetpack_major, info.cuda_arch) == ("36.4.0", "6.1", 6, "87")
    assert info.model == "NVIDIA Jetson AGX Orin Developer Kit" and info.tensorrt_libraries == "10.3.0.30"
    assert info.describe() == "JetPack 6.1 (L4T R36.4.0), NVIDIA Jetson AGX Orin Developer Kit, sm_87"


def test_thor_from_the_release_file_alone(tmp_path):
    info = detect_jetson(make_root(tmp_path, THOR_RELEASE))
    assert info is not None and (info.l4t, info.jetpack, info.jetpack_major, info.cuda_arch) == ("38.2.0", None, 7,
                                                                                                "110")


def test_l4t_from_dpkg_when_the_release_file_is_missing(tmp_path):
    info = detect_jetson(make_root(tmp_path, None, {"nvidia-l4t-core": "36.3.0-20240506102626"}))
    assert info is not None and info.l4t == "36.3.0" and info.jetpack_major == 6 and info.cuda_arch == "87"


def test_not_a_jetson(tmp_path):
    assert detect_jetson(make_root(tmp_path, None, {"libnvinfer10": "10.13.0.35-1+cuda13.0"})) is None
    assert detect_jetson(make_root(tmp_path / "empty")) is None


def test_special_and_oversized_files_are_not_read(tmp_path):
    root = make_root(tmp_path)
    os.mkfifo(root / "etc" / "nv_tegra_release")   # reading a FIFO would block `metaedge info` forever
    assert detect_jetson(root) is None
    (root / "etc" / "nv_tegra_release").unlink()
    (root / "etc" / "nv_tegra_release").write_text(ORIN_RELEASE + "#" * 100_000)
    assert detect_jetson(root) is None


# --- the whole command on faked machines -------------------------------------------------------------------

def test_info_on_a_jetpack6_orin_whose_venv_hides_jetpack_tensorrt(tmp_path):
    root = make_root(tmp_path, ORIN_RELEASE, {"nvidia-jetpack": "6.1+b123", "nvidia-l4t-core": "36.4.0-2024",
                                              "libnvinfer10": "10.3.0.30-1+cuda12.5",
                                              "python3-libnvinfer": "10.3.0.30-1+cuda12.5"},
                     model="NVIDIA Jetson Orin NX Engine (16GB ram)")
    info, text = run_info(root)
    assert info["jetson"]["summary"] == "JetPack 6.1 (L4T R36.4.0), NVIDIA Jetson Orin NX Engine (16GB ram), sm_87"
    trt = info["install"]["tensorrt"]
    if IN_VENV:
        assert trt[0] == f"python3 -m venv --system-site-packages {sys.prefix}"
        assert info["backends"]["tensorrt"].startswith("no (missing: a venv that sees JetPack's TensorRT")
    else:
        assert trt[0] == "sudo apt-get install --reinstall -y python3-libnvinfer"
    if not info["cuda"]["built"]:
        assert any("METAEDGE_CUDA=1 METAEDGE_CUDA_ARCHS=87 pip install --no-build-isolation" in c for c in trt)
    # The CPU onnxruntime of this environment must make way for NVIDIA's Jetson build.
    index = JETSON_PIP_INDEX[6]
    assert info["install"]["ort-cuda"] == [f"pip uninstall -y onnxruntime && pip install onnxruntime-gpu "
                                           f"--index-url {index}"]
    assert info["backends"]["ort-cpu"].startswith("yes (onnxruntime ")
    import numpy
    if int(numpy.__version__.split(".")[0]) >= 2:
        assert any("NumPy" in w and "'numpy>=1.26,<2'" in w for w in info["warnings"])
    assert f"install: pip uninstall -y onnxruntime && pip install onnxruntime-gpu --index-url {index}" in text
    assert "Jetson       JetPack 6.1 (L4T R36.4.0)" in text


def test_info_on_a_thor_without_tensorrt(tmp_path):
    root = make_root(tmp_path, THOR_RELEASE, {"nvidia-l4t-core": "38.2.0-2025"},
                     model="NVIDIA Jetson AGX Thor Developer Kit")
    info, _ = run_info(root)
    assert info["jetson"]["cuda_arch"] == "110" and info["jetson"]["jetpack_major"] == 7
    assert info["install"]["tensorrt"][0] == "sudo apt-get update && sudo apt-get install -y nvidia-jetpack"
    assert JETSON_PIP_INDEX[7] in info["install"]["ort-cuda"][0]
    assert not any("NumPy" in w for w in info["warnings"])   # the NumPy-1 pin is JetPack 6's


def test_info_on_a_jetson_with_pypi_tensorrt_and_both_onnxruntime_builds(tmp_path):
    site = tmp_path / "site"
    fake_distribution(site, "tensorrt", "10.7.0", "tensorrt", '__version__ = "10.7.0"\n')
    fake_distribution(site, "onnxruntime-gpu", "1.19.0", "onnxruntime", """
        __version__ = "1.19.0"
        def get_available_providers():
            return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    """)
    root = make_root(tmp_path, ORIN_RELEASE, {"nvidia-l4t-core": "36.4.0-2024"})
    info, text = run_info(root, site)
    assert info["backends"]["ort-cuda"] == "yes (onnxruntime 1.19.0: Tensorrt, CUDA, CPU)"
    assert "ort-cuda" not in info["install"]
    warnings = "\n".join(info["warnings"])
    assert "PyPI's TensorRT (tensorrt) is installed on a Jetson and shadows JetPack's: pip uninstall -y tensorrt" \
        in warnings
    assert ("onnxruntime and onnxruntime-gpu are installed together and overwrite each other's `onnxruntime` package; "
            f"keep one: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu --index-url "
            f"{JETSON_PIP_INDEX[6]}") in warnings
    assert "WARNING: PyPI's TensorRT" in text
    if not info["cuda"]["available"]:   # TensorRT is importable; what it lacks is metaedge's CUDA side
        assert info["backends"]["tensorrt"].startswith("no (missing: ")
        assert "the tensorrt package" not in info["backends"]["tensorrt"]


def test_info_on_an_x86_box_with_an_nvidia_driver(tmp_path):
    if os.uname().machine != "x86_64":
        pytest.skip("the x86-64 install lines")
    info, _ = run_info(make_root(tmp_path, nvidia_driver=True))
    assert info["jetson"] is None
    if not info["cuda"]["built"]:
        assert info["install"]["tensorrt"] == [
            "pip install 'metaedge[tensorrt]'",
            "METAEDGE_CUDA=1 pip install --no-build-isolation --force-reinstall --no-deps --no-binary metaedge "
            f"metaedge=={info['version']}"]
    assert "an NVIDIA GPU" not in info["backends"]["tensorrt"]
    assert info["install"]["ort-cuda"] == ["pip uninstall -y onnxruntime && pip install 'metaedge[onnx-gpu]'"]


def test_info_on_a_machine_without_any_gpu(tmp_path):
    info, _ = run_info(make_root(tmp_path))
    if info["cuda"]["available"]:
        pytest.skip("this machine has a usable GPU")
    assert "missing: an NVIDIA GPU (no NVIDIA driver loaded, not a Jetson)" in info["backends"]["tensorrt"]
    assert "missing: an NVIDIA GPU" in info["backends"]["ort-cuda"]
    assert info["backends"]["ort-cpu"].startswith("yes (onnxruntime ")


# --- the advice for states no single machine here shows ------------------------------------------------------

def env_of(**kw) -> Environment:
    base = dict(machine="x86_64", jetson=None, nvidia_driver=False, cuda_ok=False, cuda_why="no CUDA device",
                cuda_built=True, in_venv=True, venv_sees_system=False)
    return Environment(**{**base, **kw})


def test_clean_gpu_onnxruntime_and_cpu_only_machines():
    gpu = env_of(nvidia_driver=True, cuda_ok=True, ort_distributions={"onnxruntime-gpu": "1.20.1"},
                 ort_version="1.20.1", ort_providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert ort_cuda_status(gpu).ok and ort_cpu_status(gpu).ok and warnings_for(gpu) == []
    bare = env_of()
    assert ort_cpu_status(bare).install == ["pip install 'metaedge[onnx]'"]
    assert ort_cuda_status(bare).install == ["pip install 'metaedge[onnx-gpu]'"]
    arm = env_of(machine="aarch64")
    assert ort_cpu_status(arm).install == ["pip install 'metaedge[onnx-cpu]'"]
    assert tensorrt_status(env_of(machine="aarch64", nvidia_driver=True)).install == ["pip install tensorrt"]


def test_jetson_tensorrt_advice_follows_what_is_installed():
    def jetson(packages):
        return JetsonInfo(l4t="36.4.0", jetpack="6.1", jetpack_major=6, model=None, cuda_arch="87", packages=packages)
    bindings = {"libnvinfer10": "10.3.0.30-1+cuda12.5", "python3-libnvinfer": "10.3.0.30-1+cuda12.5"}
    assert tensorrt_status(env_of(jetson=jetson({}))).install == [
        "sudo apt-get update && sudo apt-get install -y nvidia-jetpack"]
    assert tensorrt_status(env_of(jetson=jetson({"libnvinfer10": "10.3.0.30-1+cuda12.5"}))).install == [
        "sudo apt-get install -y python3-libnvinfer"]
    assert tensorrt_status(env_of(jetson=jetson(bindings), in_venv=False, venv_sees_system=True)).install == [
        "sudo apt-get install --reinstall -y python3-libnvinfer"]
    ok = env_of(jetson=jetson(bindings), cuda_ok=True, tensorrt_version="10.3.0",
                tensorrt_location="/usr/lib/python3.10/dist-packages/tensorrt")
    assert tensorrt_status(ok).summary() == "yes (TensorRT 10.3.0, JetPack/apt)"
    old = env_of(jetson=JetsonInfo("35.5.0", None, 5, None, "87", {}))
    assert any("JetPack 5 is not supported" in w for w in warnings_for(old))
