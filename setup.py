"""Build of metaedge._C: C++17 CPU kernels always, CUDA kernels when nvcc is found.

Environment switches (all optional):
  METAEDGE_CUDA=auto|0|1     auto (default): build the .cu sources when nvcc is found through CUDA_HOME,
                             CUDA_PATH or PATH; 0: CPU-only; 1: CUDA required (fail if nvcc is missing).
  METAEDGE_CUDA_ARCHS        e.g. "87" or "80;86;90". Default: the Jetson and desktop archs that the found
                             nvcc supports, plus PTX for the newest of them.
  METAEDGE_NATIVE=1          add -march=native (x86) / -mcpu=native (arm) - only for builds that never leave
                             the machine they were built on.
  MAX_JOBS                   parallel compile jobs (default: number of CPUs).
The CUDA runtime is linked statically, so importing metaedge never needs libcudart at run time; the driver
(libcuda.so) is looked up only when a CUDA function is first called.
"""
from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.extension import Extension

ROOT = os.path.dirname(os.path.abspath(__file__))
# Jetson Xavier is 72 but nvcc 13 dropped it; 87 = Orin (JetPack 6), 110 = Thor (JetPack 7).
WANTED_ARCHS = ["72", "75", "80", "86", "87", "89", "90", "100", "110", "120"]


def _log(msg: str) -> None:
    print(f"[metaedge build] {msg}", flush=True)


def find_nvcc() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            candidate = os.path.join(home, "bin", "nvcc")
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    return shutil.which("nvcc")


def cuda_home_of(nvcc: str) -> str:
    """The toolkit root. nvcc on PATH may be a wrapper script, so ask nvcc itself (its TOP variable)."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True).stderr
        m = re.search(r"^#\$ TOP=(.+)$", out, re.MULTILINE)
        if m:
            return os.path.normpath(m.group(1).strip())
    except OSError:
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def nvcc_version(nvcc: str) -> tuple[int, int]:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    if not m:
        raise RuntimeError(f"cannot read the CUDA version from `{nvcc} --version`:\n{out}")
    return int(m.group(1)), int(m.group(2))


def nvcc_supported_archs(nvcc: str) -> list[str]:
    try:
        out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted({m.group(1) for m in re.finditer(r"compute_(\d+)", out)}, key=int)


def choose_cuda_archs(nvcc: str) -> list[str]:
    requested = os.environ.get("METAEDGE_CUDA_ARCHS", "").replace(",", ";").strip()
    supported = nvcc_supported_archs(nvcc)
    if requested:
        archs = [a.strip().replace(".", "") for a in requested.split(";") if a.strip()]
        bad = [a for a in archs if supported and a not in supported]
        if bad:
            raise SystemExit(f"METAEDGE_CUDA_ARCHS asks for {bad}, which {nvcc} does not support "
                             f"(it supports {supported})")
        return archs
    archs = [a for a in WANTED_ARCHS if a in supported] if supported else ["75", "80", "86", "87", "89", "90"]
    if not archs:
        raise SystemExit(f"{nvcc} supports none of the default archs {WANTED_ARCHS}; set METAEDGE_CUDA_ARCHS")
    return archs


def cuda_config() -> dict:
    mode = os.environ.get("METAEDGE_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"METAEDGE_CUDA must be auto, 0 or 1; got {mode!r}")
    if mode == "0":
        return {"enabled": False, "reason": "METAEDGE_CUDA=0"}
    nvcc = find_nvcc()
    if nvcc is None:
        if mode == "1":
            raise SystemExit("METAEDGE_CUDA=1 but nvcc was not found via CUDA_HOME, CUDA_PATH or PATH")
        return {"enabled": False, "reason": "nvcc not found via CUDA_HOME, CUDA_PATH or PATH"}
    home = cuda_home_of(nvcc)
    major, minor = nvcc_version(nvcc)
    archs = choose_cuda_archs(nvcc)
    libdir = next((d for d in (os.path.join(home, "lib64"), os.path.join(home, "lib"),
                               os.path.join(home, "targets", f"{platform.machine()}-linux", "lib"))
                   if os.path.exists(os.path.join(d, "libcudart_static.a"))), None)
    if libdir is None:
        if mode == "1":
            raise SystemExit(f"METAEDGE_CUDA=1 but libcudart_static.a was not found under {home}")
        return {"enabled": False, "reason": f"libcudart_static.a not found under {home}"}
    return {"enabled": True, "nvcc": nvcc, "home": home, "version": f"{major}.{minor}", "archs": archs,
            "libdir": libdir, "include": os.path.join(home, "include")}


def cxx_flags() -> list[str]:
    flags = ["-std=c++17", "-O3", "-fopenmp", "-fvisibility=hidden", "-ffp-contract=fast", "-Wall", "-Wextra",
             "-Wno-unused-parameter"]
    if os.environ.get("METAEDGE_NATIVE", "0") == "1":
        flags.append("-mcpu=native" if platform.machine() in ("aarch64", "arm64") else "-march=native")
    return flags


def nvcc_flags(cfg: dict) -> list[str]:
    archs = cfg["archs"]
    # No --use_fast_math: it flushes denormals and approximates division/sqrt, so the GPU kernels would stop
    # matching the CPU kernels (cosine scores, softmax, tiny rows in l2_normalize). The hot loops are plain
    # FMAs; the exact division/sqrt runs once per score, not per element.
    flags = ["-std=c++17", "-O3", "-Xcompiler", "-fPIC,-fvisibility=hidden",
             "--expt-relaxed-constexpr", "-lineinfo", "--threads", "0"]
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    newest = max(archs, key=int)
    flags += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]
    return flags


class BuildExt(build_ext):
    """Compiles .cpp with the C++ compiler and .cu with nvcc, in parallel (MAX_JOBS), and incrementally: an
    object is rebuilt only when its source, a header it includes (from the compiler's -MMD/-MD dependency
    file), or its command line changed; the module is relinked only when an object changed."""

    def finalize_options(self):
        super().finalize_options()
        # Imported here, not at module level: `setup.py sdist` and egg_info need neither numpy nor pybind11.
        import numpy
        import pybind11
        self.include_dirs = list(self.include_dirs or []) + [pybind11.get_include(), numpy.get_include()]

    def run(self):
        cfg = cuda_config()
        self.metaedge_cuda = cfg
        for ext in self.extensions:
            ext.define_macros = [m for m in ext.define_macros if m[0] != "METAEDGE_WITH_CUDA"]
            ext.define_macros.append(("METAEDGE_WITH_CUDA", "1" if cfg["enabled"] else "0"))
        _log(f"C++: {' '.join(cxx_flags())}")
        if cfg["enabled"]:
            _log(f"CUDA {cfg['version']} via {cfg['nvcc']}: archs {';'.join(cfg['archs'])} "
                 f"+ PTX compute_{max(cfg['archs'], key=int)}")
        else:
            _log(f"CUDA: not built ({cfg['reason']})")
        super().run()  # builds into build_lib, then (--inplace, editable) copies the module into the source tree
        if self.inplace:
            write_build_config(os.path.join(ROOT, "metaedge", BUILD_CONFIG_NAME), cfg)

    def object_dir(self, cfg: dict) -> str:
        # pip's editable install builds in a fresh temporary build_temp each time; keep the objects in the
        # source tree instead so that `pip install -e .` after a one-file edit recompiles that file only.
        base = (os.path.join(ROOT, "build", f"editable-{sys.implementation.cache_tag}") if self.editable_mode
                else os.path.abspath(self.build_temp))
        # CPU-only and CUDA objects differ (METAEDGE_WITH_CUDA): separate folders, so switching does not thrash.
        return os.path.join(base, "cuda" if cfg["enabled"] else "cpu")

    def build_extension(self, ext):
        cfg = self.metaedge_cuda
        include_dirs = list(ext.include_dirs) + list(self.include_dirs or [])
        sources = [s for s in ext.sources if not s.endswith(".cu")]
        cu_sources = [s for s in ext.sources if s.endswith(".cu")] if cfg["enabled"] else []
        obj_dir = self.object_dir(cfg)
        os.makedirs(obj_dir, exist_ok=True)
        jobs = int(os.environ.get("MAX_JOBS", os.cpu_count() or 1))
        defines = [f"-D{k}={v}" if v is not None else f"-D{k}" for k, v in ext.define_macros]
        incs = [f"-I{d}" for d in include_dirs]

        def obj_path(src: str) -> str:
            rel = os.path.relpath(os.path.abspath(src), ROOT).replace(os.sep, "_")
            return os.path.join(obj_dir, rel + ".o")

        def cpp_command(src: str, obj: str) -> list[str]:
            return (self.compiler.compiler_so + defines + incs + cxx_flags()
                    + ["-MMD", "-MF", obj + ".d", "-c", src, "-o", obj])

        def cu_command(src: str, obj: str) -> list[str]:
            return ([cfg["nvcc"]] + nvcc_flags(cfg) + defines + incs + [f"-I{cfg['include']}"]
                    + ["-MD", "-MF", obj + ".d", "-c", src, "-o", obj])

        jobs_todo = []
        objects = []
        for src in cu_sources + sources:
            obj = obj_path(src)
            cmd = (cu_command if src.endswith(".cu") else cpp_command)(src, obj)
            objects.append(obj)
            reason = stale_reason(obj, cmd)
            if reason:
                jobs_todo.append((src, obj, cmd, reason))
        _log(f"compiler: {' '.join(self.compiler.compiler_so[:1])}; {len(sources)} C++ and {len(cu_sources)} CUDA "
             f"sources, {len(jobs_todo)} to compile; MAX_JOBS={jobs}; objects in {obj_dir}")
        for src, _, _, reason in jobs_todo:
            if reason != "no object yet":
                _log(f"recompiling {src}: {reason}")

        def compile_one(job):
            src, obj, cmd, _ = job
            self._run(cmd, src)
            write_command(obj, cmd)

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(compile_one, jobs_todo))  # list(): re-raises the first failure

        ext_path = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(ext_path), exist_ok=True)
        write_build_config(os.path.join(os.path.dirname(ext_path), BUILD_CONFIG_NAME), cfg)
        link_extra = list(ext.extra_link_args)
        if cfg["enabled"]:
            link_extra += [f"-L{cfg['libdir']}", "-lcudart_static", "-lrt", "-lpthread", "-ldl"]
        link_record = os.path.join(obj_dir, "link.cmd")  # not beside the module: build_lib goes into the wheel
        link_cmd = [*self.compiler.linker_so, *objects, *link_extra, "-o", ext_path]
        # The record also names the module it produced (size, mtime): a module relinked since by another
        # configuration (a CUDA build after this CPU one) is not taken for ours.
        if not jobs_todo and stale_reason(ext_path, link_cmd + [file_identity(ext_path)], deps=objects,
                                          cmd_file=link_record) is None:
            _log(f"{os.path.basename(ext_path)} is up to date")
            return
        if os.path.exists(ext_path):
            os.remove(ext_path)  # else distutils skips the link when the module is newer than the objects
        self.compiler.link_shared_object(objects, ext_path, libraries=[], extra_postargs=link_extra,
                                         target_lang="c++")
        write_command(link_record, link_cmd + [file_identity(ext_path)], suffix="")

    @staticmethod
    def _run(cmd, src):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(f"\n[metaedge build] FAILED: {src}\n$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
            raise SystemExit(f"compilation of {src} failed")
        noisy = (proc.stdout + proc.stderr).strip()
        if noisy:
            sys.stderr.write(f"[metaedge build] {src}:\n{noisy}\n")


def read_depfile(path: str) -> list[str] | None:
    """The prerequisites in a make-style dependency file (gcc -MMD, nvcc -MD): 'obj: src hdr1 hdr2 \\'.
    None when the file is missing or unreadable (then the object is rebuilt)."""
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return None
    text = text.replace("\\\n", " ")
    deps: list[str] = []
    for line in text.splitlines():
        _, sep, rest = line.partition(": ")
        if sep:
            # Escaped spaces in paths ('\\ ') are kept together.
            deps += [d.replace("\\ ", " ") for d in re.split(r"(?<!\\) +", rest.strip()) if d]
    return deps


def file_identity(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "# output missing"
    return f"# output {st.st_size} bytes, mtime_ns {st.st_mtime_ns}"


def write_command(target: str, cmd: list[str], suffix: str = ".cmd") -> None:
    with open(target + suffix, "w") as fh:
        fh.write("\n".join(cmd))


def stale_reason(target: str, cmd: list[str], deps: list[str] | None = None, cmd_file: str | None = None
                 ) -> str | None:
    """Why `target` must be rebuilt (None: it is up to date). `deps` default to its dependency file's list."""
    if not os.path.exists(target):
        return "no object yet"
    try:
        with open(cmd_file or target + ".cmd") as fh:
            if fh.read() != "\n".join(cmd):
                return "the command line changed"
    except OSError:
        return "no record of its command line"
    if deps is None:
        deps = read_depfile(target + ".d")
        if deps is None:
            return "no dependency file"
    built = os.path.getmtime(target)
    for dep in deps:
        try:
            if os.path.getmtime(dep) > built:
                return f"{os.path.relpath(dep, ROOT)} changed"
        except OSError:
            return f"{dep} is gone"
    return None


BUILD_CONFIG_NAME = "_build_config.json"


def write_build_config(path: str, cfg: dict) -> None:
    """Recorded at build time, next to the built module, so build_info() can say how this binary was made."""
    import json
    compiler = os.environ.get("CXX", "c++")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        version = compiler
    info = {"compiler": version, "cxx_flags": cxx_flags(), "machine": platform.machine(),
            "cuda_built": cfg["enabled"], "cuda_reason": cfg.get("reason"),
            "cuda_version": cfg.get("version"), "cuda_archs": cfg.get("archs", []),
            "cuda_ptx": max(cfg["archs"], key=int) if cfg["enabled"] else None}
    with open(path, "w") as fh:
        json.dump(info, fh, indent=1)


def make_extension() -> Extension:
    # Relative paths: setuptools puts them into the sdist (headers come through MANIFEST.in). Whether the .cu
    # sources are compiled is decided when building (BuildExt.run), not here, so one sdist serves both builds.
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True)) + sorted(glob.glob("csrc/cuda/*.cu"))
    return Extension("metaedge._C", sources=sources, include_dirs=["csrc/include"],
                     define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                     extra_link_args=["-fopenmp"], language="c++")


if __name__ == "__main__":
    setup(ext_modules=[make_extension()], cmdclass={"build_ext": BuildExt})
