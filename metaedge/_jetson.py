"""Which JetPack this machine runs, read from files under a root directory: ``/etc/nv_tegra_release`` (the L4T
release), dpkg's status database (``nvidia-l4t-core``, ``nvidia-jetpack``, TensorRT and CUDA packages) and the
device-tree model. No subprocess and no NVIDIA code is run, so it is cheap, safe on any machine, and testable
with a fake root: ``root=`` or the environment variable ``METAEDGE_SYSROOT`` (e.g. a mounted device image).
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

SYSROOT_ENV = "METAEDGE_SYSROOT"
TEGRA_RELEASE = "etc/nv_tegra_release"
DPKG_STATUS = "var/lib/dpkg/status"
DEVICE_MODEL = "proc/device-tree/model"
NVIDIA_DRIVER = "proc/driver/nvidia/version"   # present where a desktop/server NVIDIA driver is loaded
MAX_SMALL_FILE = 64 * 1024
MAX_DPKG_STATUS = 64 * 1024 * 1024

# The dpkg packages that say what the device has; a pattern so that versioned names (cuda-nvcc-12-6) match.
INTERESTING_PACKAGES = re.compile(r"^(nvidia-l4t-core|nvidia-jetpack|tensorrt|libnvinfer\d+|python3-libnvinfer"
                                  r"|cuda-nvcc-[\d-]+|cuda-toolkit-[\d-]+|libcudnn\d+)$")
# L4T major release -> JetPack major (R35: JetPack 5, Python 3.8, not supported by metaedge).
JETPACK_OF_L4T = {35: 5, 36: 6, 38: 7}
# The GPU's compute capability by module name (device-tree model), else by JetPack (6: Orin only; 7.0: Thor).
ARCH_OF_MODULE = (("thor", "110"), ("orin", "87"), ("xavier", "72"))
ARCH_OF_JETPACK = {5: "87", 6: "87", 7: "110"}


@dataclass(frozen=True)
class JetsonInfo:
    """What a Jetson's system files say. ``jetpack``: the ``nvidia-jetpack`` package's version when installed;
    ``jetpack_major`` also from the L4T release; ``cuda_arch``: the ``METAEDGE_CUDA_ARCHS`` value for its GPU;
    ``packages``: installed dpkg packages of interest -> version."""
    l4t: str | None
    jetpack: str | None
    jetpack_major: int | None
    model: str | None
    cuda_arch: str | None
    packages: dict[str, str] = field(default_factory=dict)

    @property
    def tensorrt_libraries(self) -> str | None:
        """The TensorRT version of the installed libnvinfer package, if any ("10.3.0.30")."""
        for name, version in sorted(self.packages.items()):
            if re.fullmatch(r"libnvinfer\d+|tensorrt", name):
                return version.split("-")[0]
        return None

    def describe(self) -> str:
        jp = f"JetPack {self.jetpack}" if self.jetpack else (
            f"JetPack {self.jetpack_major}" if self.jetpack_major else "JetPack (version unknown)")
        parts = [jp + (f" (L4T R{self.l4t})" if self.l4t else "")]
        if self.model:
            parts.append(self.model)
        if self.cuda_arch:
            parts.append(f"sm_{self.cuda_arch}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.describe()}


def system_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root if root is not None else os.environ.get(SYSROOT_ENV) or "/")


def read_small_text(path: Path, limit: int = MAX_SMALL_FILE) -> str | None:
    """The text of a regular file of at most ``limit`` bytes; None when it is absent, not a regular file
    (a FIFO or device must not block `metaedge info`), too large or unreadable."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError:
        return None
    if len(data) > limit:
        return None
    return data.decode("utf-8", errors="replace")


def parse_tegra_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.0, GCID: ..., BOARD: generic, ...' -> '36.4.0'."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return f"{m.group(1)}.{m.group(2)}.{m.group(3) or 0}"


def parse_dpkg_status(text: str, wanted: re.Pattern[str] = INTERESTING_PACKAGES) -> dict[str, str]:
    """Installed packages (Status '... installed') whose name matches ``wanted`` -> version."""
    found: dict[str, str] = {}
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line[:1].isspace():
                fields[key.strip()] = value.strip()
        name = fields.get("Package", "")
        if wanted.match(name) and fields.get("Status", "").endswith(" installed") and "Version" in fields:
            found[name] = fields["Version"]
    return found


def installed_packages(root: str | os.PathLike | None = None) -> dict[str, str]:
    text = read_small_text(system_root(root) / DPKG_STATUS, MAX_DPKG_STATUS)
    return parse_dpkg_status(text) if text else {}


def detect_jetson(root: str | os.PathLike | None = None) -> JetsonInfo | None:
    """The JetPack facts of this machine (or of the system image under ``root``); None if it is no Jetson."""
    base = system_root(root)
    release_text = read_small_text(base / TEGRA_RELEASE)
    packages = installed_packages(base)
    l4t = parse_tegra_release(release_text) if release_text else None
    if l4t is None and "nvidia-l4t-core" in packages:
        l4t = re.split(r"[-+~]", packages["nvidia-l4t-core"])[0]   # "36.4.0-20240912212859" -> "36.4.0"
    if l4t is None and "nvidia-jetpack" not in packages:
        return None
    jetpack = packages.get("nvidia-jetpack")
    jetpack = re.split(r"[-+~]", jetpack)[0] if jetpack else None  # "6.1+b123" -> "6.1"
    major = int(jetpack.split(".")[0]) if jetpack and jetpack.split(".")[0].isdigit() else None
    if major is None and l4t:
        major = JETPACK_OF_L4T.get(int(l4t.split(".")[0]))
    model_text = read_small_text(base / DEVICE_MODEL)
    model = model_text.replace("\x00", "").strip() if model_text else None
    arch = next((a for key, a in ARCH_OF_MODULE if model and key in model.lower()), None)
    if arch is None and major is not None:
        arch = ARCH_OF_JETPACK.get(major)
    return JetsonInfo(l4t=l4t, jetpack=jetpack, jetpack_major=major, model=model or None, cuda_arch=arch,
                      packages=packages)


def nvidia_driver_loaded(root: str | os.PathLike | None = None) -> bool:
    """A desktop/server NVIDIA kernel driver is loaded (a Jetson's integrated GPU has none of this file)."""
    return read_small_text(system_root(root) / NVIDIA_DRIVER) is not None
