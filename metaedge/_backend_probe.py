"""For `metaedge info`: whether each inference backend can run here, what is missing, and the exact command that
installs it on this kind of machine: a Jetson (JetPack brings TensorRT through apt; NVIDIA builds onnxruntime-gpu
for it), an x86-64 box with or without an NVIDIA GPU, or another ARM machine. Also the traps found on the way
(two ONNX Runtime builds overwriting each other, PyPI's TensorRT shadowing JetPack's, NumPy 2 under JetPack 6's
NumPy-1 wheels, a venv that cannot see JetPack's Python packages).

Cheap: no engine is built, no session is opened; onnxruntime is imported for its provider list only. The system
side is read through ``metaedge._jetson`` (files under an injectable root); the Python side is this interpreter.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import sys
from dataclasses import dataclass, field

from metaedge._jetson import JetsonInfo, detect_jetson, nvidia_driver_loaded
from metaedge._optional import version_of
from metaedge._version import __version__

# NVIDIA's pip indexes of Jetson builds (onnxruntime-gpu, torch) per JetPack major. They have moved before:
# check NVIDIA's Jetson AI Lab pages if one stops answering.
JETSON_PIP_INDEX = {6: "https://pypi.jetson-ai-lab.io/jp6/cu126", 7: "https://pypi.jetson-ai-lab.io/sbsa/cu130"}
# Distributions that install the importable `onnxruntime` package (they overwrite each other's files).
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
                     "onnxruntime-training", "onnxruntime-qnn", "onnxruntime-rocm", "onnxruntime-migraphx")
SYSTEM_SITE_PREFIXES = ("/usr/lib/python3", "/usr/local/lib/python3")
NO_GPU = "an NVIDIA GPU (no NVIDIA driver loaded, not a Jetson)"


@dataclass
class BackendStatus:
    """``ok``: it can run here; ``detail``: its version, or what is missing; ``install``: the commands that add
    the missing pieces on this machine, in order (empty when ok, or when nothing installable is missing)."""
    name: str
    ok: bool
    detail: str
    install: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{'yes' if self.ok else 'no'} ({self.detail})"


@dataclass
class Environment:
    """The facts the advice depends on, gathered once (``gather``) so that tests can state them directly."""
    machine: str
    jetson: JetsonInfo | None
    nvidia_driver: bool
    cuda_ok: bool
    cuda_why: str
    cuda_built: bool
    in_venv: bool
    venv_sees_system: bool
    ort_distributions: dict[str, str] = field(default_factory=dict)
    ort_providers: list[str] = field(default_factory=list)
    ort_version: str | None = None
    ort_error: str | None = None
    tensorrt_version: str | None = None
    tensorrt_location: str | None = None
    tensorrt_pip_distributions: dict[str, str] = field(default_factory=dict)
    torch_version: str | None = None
    numpy_version: str | None = None

    @property
    def gpu_expected(self) -> bool:
        """An NVIDIA GPU should be usable here: a Jetson, a loaded NVIDIA driver, or CUDA already works."""
        return self.jetson is not None or self.nvidia_driver or self.cuda_ok

    def cuda_gaps(self) -> tuple[list[str], list[str]]:
        """What the GPU backends miss on the CUDA side (a GPU, metaedge's CUDA kernels, a usable device), and
        the commands for the installable part."""
        missing, commands = [], []
        if not self.gpu_expected:
            missing.append(NO_GPU)
        if not self.cuda_built:
            missing.append("metaedge's CUDA kernels (this build is CPU-only)")
            commands.append(metaedge_cuda_build_line(self))
        elif not self.cuda_ok and self.gpu_expected:
            missing.append(f"a usable CUDA device ({self.cuda_why})")
        return missing, commands


def _distributions_providing(module: str) -> dict[str, str]:
    from importlib.metadata import packages_distributions, version
    out = {}
    for dist in sorted(set(packages_distributions().get(module, []))):
        try:
            out[dist] = version(dist)
        except Exception:  # a half-removed distribution must not break `metaedge info`
            out[dist] = "unknown"
    return out


def _venv_sees_system_site_packages() -> bool:
    cfg = os.path.join(sys.prefix, "pyvenv.cfg")
    try:
        with open(cfg) as fh:
            for line in fh:
                key, _, value = line.partition("=")
                if key.strip() == "include-system-site-packages":
                    return value.strip().lower() == "true"
    except OSError:
        pass
    return False


def gather(cuda_status: dict, root: str | os.PathLike | None = None) -> Environment:
    """``cuda_status``: ``build_info()["cuda"]``; ``root``: the system root to read (default ``/`` or
    ``$METAEDGE_SYSROOT``)."""
    in_venv = sys.prefix != sys.base_prefix
    env = Environment(machine=platform.machine(), jetson=detect_jetson(root), nvidia_driver=nvidia_driver_loaded(root),
                      cuda_ok=bool(cuda_status.get("available")),
                      cuda_why=cuda_status.get("why_not") or "metaedge's CUDA kernels are not usable",
                      cuda_built=bool(cuda_status.get("built")), in_venv=in_venv,
                      venv_sees_system=not in_venv or _venv_sees_system_site_packages(),
                      torch_version=version_of("torch"), numpy_version=version_of("numpy"))
    env.ort_distributions = _distributions_providing("onnxruntime")
    if importlib.util.find_spec("onnxruntime") is not None:
        try:
            import onnxruntime
            env.ort_version = str(onnxruntime.__version__)
            env.ort_providers = list(onnxruntime.get_available_providers())
        except Exception as exc:  # a broken install must not break `metaedge info`
            env.ort_error = f"{type(exc).__name__}: {exc}"
    spec = importlib.util.find_spec("tensorrt")
    if spec is not None:
        env.tensorrt_version = version_of("tensorrt")
        env.tensorrt_location = os.path.dirname(spec.origin or "") or None
        env.tensorrt_pip_distributions = {d: v for d, v in _distributions_providing("tensorrt").items()
                                          if not _is_system_path(env.tensorrt_location)}
    return env


def _is_system_path(path: str | None) -> bool:
    return bool(path) and str(path).startswith(SYSTEM_SITE_PREFIXES)


def metaedge_cuda_build_line(env: Environment) -> str:
    archs = env.jetson.cuda_arch if env.jetson and env.jetson.cuda_arch else None
    arch_part = f" METAEDGE_CUDA_ARCHS={archs}" if archs else ""
    return (f"METAEDGE_CUDA=1{arch_part} pip install --no-build-isolation --force-reinstall --no-deps "
            f"--no-binary metaedge metaedge=={__version__}")


def ort_install_line(env: Environment, gpu: bool) -> str:
    """The ONNX Runtime build that fits this machine (a GPU build has the CPU provider too)."""
    if env.jetson is not None:
        index = JETSON_PIP_INDEX.get(env.jetson.jetpack_major or 0)
        return (f"pip install onnxruntime-gpu --index-url {index}" if index
                else "pip install onnxruntime-gpu   (NVIDIA's Jetson build for your JetPack)")
    if env.machine == "x86_64":
        return "pip install 'metaedge[onnx-gpu]'" if gpu else "pip install 'metaedge[onnx]'"
    if gpu:
        return "build ONNX Runtime with CUDA from source (PyPI has no CUDA ONNX Runtime for this machine)"
    return "pip install 'metaedge[onnx-cpu]'"


def _replacing(remove: list[str], line: str) -> str:
    """The CPU and GPU builds of ONNX Runtime install the same package: the installed one goes first."""
    return f"pip uninstall -y {' '.join(remove)} && {line}" if remove else line


def _missing(name: str, missing: list[str], commands: list[str]) -> BackendStatus:
    return BackendStatus(name, False, "missing: " + "; ".join(missing), commands)


def _jetson_tensorrt_gap(env: Environment) -> tuple[str, str]:
    assert env.jetson is not None
    packages = env.jetson.packages
    if "python3-libnvinfer" in packages and env.in_venv and not env.venv_sees_system:
        return ("a venv that sees JetPack's TensorRT (python3-libnvinfer is installed; this venv hides system "
                "packages)", f"python3 -m venv --system-site-packages {sys.prefix}")
    if "python3-libnvinfer" in packages:
        return (f"TensorRT's Python bindings for this Python {platform.python_version()} (python3-libnvinfer is "
                "installed for the system python3)", "sudo apt-get install --reinstall -y python3-libnvinfer")
    if env.jetson.tensorrt_libraries:
        return (f"TensorRT's Python bindings (the TensorRT {env.jetson.tensorrt_libraries} libraries are installed)",
                "sudo apt-get install -y python3-libnvinfer")
    return "TensorRT (it comes with JetPack)", "sudo apt-get update && sudo apt-get install -y nvidia-jetpack"


def tensorrt_status(env: Environment) -> BackendStatus:
    missing, commands = [], []
    if env.tensorrt_version is None:
        if env.jetson is not None:
            what, line = _jetson_tensorrt_gap(env)
        else:
            what = "the tensorrt package"
            line = "pip install 'metaedge[tensorrt]'" if env.machine != "aarch64" else "pip install tensorrt"
        missing.append(what)
        commands.append(line)
    cuda_missing, cuda_commands = env.cuda_gaps()
    gpu = [m for m in cuda_missing if m == NO_GPU]   # the GPU first: it matters most
    missing = gpu + missing + [m for m in cuda_missing if m != NO_GPU]
    commands += cuda_commands
    if missing:
        return _missing("tensorrt", missing, commands)
    where = "JetPack/apt" if _is_system_path(env.tensorrt_location) else "pip"
    return BackendStatus("tensorrt", True, f"TensorRT {env.tensorrt_version}, {where}")


def ort_cuda_status(env: Environment) -> BackendStatus:
    if env.ort_error:
        return _missing("ort-cuda", [f"a working onnxruntime ({env.ort_error})"],
                        [_replacing(list(env.ort_distributions), ort_install_line(env, gpu=True))])
    if "CUDAExecutionProvider" in env.ort_providers:
        eps = ", ".join(p.replace("ExecutionProvider", "") for p in env.ort_providers)
        return BackendStatus("ort-cuda", True, f"onnxruntime {env.ort_version}: {eps}")
    missing = [] if env.gpu_expected else [NO_GPU]
    missing.append(f"a CUDA build of ONNX Runtime (onnxruntime {env.ort_version} has no CUDA provider)"
                   if env.ort_version else "a CUDA build of ONNX Runtime (onnxruntime is not installed)")
    return _missing("ort-cuda", missing, [_replacing(list(env.ort_distributions), ort_install_line(env, gpu=True))])


def ort_cpu_status(env: Environment) -> BackendStatus:
    if env.ort_error:
        return _missing("ort-cpu", [f"a working onnxruntime ({env.ort_error})"],
                        [_replacing(list(env.ort_distributions), ort_install_line(env, env.gpu_expected))])
    if "CPUExecutionProvider" in env.ort_providers:
        return BackendStatus("ort-cpu", True, f"onnxruntime {env.ort_version}")
    return _missing("ort-cpu", ["onnxruntime"], [ort_install_line(env, env.gpu_expected)])


def torch_status(env: Environment) -> BackendStatus:
    if env.torch_version:
        return BackendStatus("torch", True, f"torch {env.torch_version}; needs the model object")
    if env.jetson is not None:
        index = JETSON_PIP_INDEX.get(env.jetson.jetpack_major or 0)
        line = f"pip install torch --index-url {index}" if index else "pip install torch   (NVIDIA's Jetson wheel)"
        return _missing("torch", ["torch (only to run a training checkpoint)"], [line])
    return _missing("torch", ["torch (only to run a training checkpoint)"], ["pip install 'metaedge[train]'"])


def warnings_for(env: Environment) -> list[str]:
    out = []
    if len(env.ort_distributions) > 1:
        out.append(f"{' and '.join(env.ort_distributions)} are installed together and overwrite each other's "
                   f"`onnxruntime` package; keep one: "
                   + _replacing(list(env.ort_distributions), ort_install_line(env, env.gpu_expected)))
    if env.jetson is not None and env.tensorrt_pip_distributions:
        names = " ".join(env.tensorrt_pip_distributions)
        out.append(f"PyPI's TensorRT ({names}) is installed on a Jetson and shadows JetPack's: "
                   f"pip uninstall -y {names}")
    if (env.jetson is not None and env.jetson.jetpack_major == 6 and env.numpy_version
            and env.numpy_version.split(".")[0].isdigit() and int(env.numpy_version.split(".")[0]) >= 2):
        out.append(f"NumPy {env.numpy_version} on JetPack 6: NVIDIA's Jetson wheels (onnxruntime-gpu, torch) are built "
                   "against NumPy 1.x and fail to import: pip install 'numpy>=1.26,<2'")
    if env.jetson is not None and env.jetson.jetpack_major is not None and env.jetson.jetpack_major < 6:
        out.append(f"JetPack {env.jetson.jetpack_major} is not supported (metaedge needs JetPack 6 or 7: Python 3.10+)")
    return out


def probe(cuda_status: dict, root: str | os.PathLike | None = None) -> tuple[Environment, list[BackendStatus]]:
    """The environment and the status of every backend, in the order ``backend="auto"`` tries them."""
    env = gather(cuda_status, root)
    return env, [tensorrt_status(env), ort_cuda_status(env), ort_cpu_status(env), torch_status(env)]
