"""Does this CPU run INT8 convolutions fast? (``precision="auto"`` of the ONNX Runtime CPU backend asks.)

ONNX Runtime's quantised kernels (MLAS) gain most with 8-bit dot-product instructions: AVX512-VNNI or AVX-VNNI
(and AMX-INT8) on x86-64, the dot-product extension (``asimddp``; also ``i8mm``) on 64-bit ARM - Jetson Orin's
Cortex-A78AE has it. Without them uint8 x int8 products go through slower 16-bit multiply-adds and INT8 is
often no faster than fp32, so "auto" stays on fp32 there. ``METAEDGE_CPU_INT8=1|0`` overrides the detection.
Reads ``/proc/cpuinfo`` on Linux; on macOS every arm64 CPU (Apple M-series) has the dot product. No torch.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

X86_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
ARM_FLAGS = ("asimddp", "i8mm")
_ENV = "METAEDGE_CPU_INT8"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")[:1 << 20]
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def fast_int8() -> tuple[bool, str]:
    """``(has fast INT8, why)`` - the reason names the instruction found or missing (for selection logs)."""
    override = os.environ.get(_ENV, "").strip().lower()
    if override in ("1", "on", "yes", "true"):
        return True, f"{_ENV}={override}"
    if override in ("0", "off", "no", "false"):
        return False, f"{_ENV}={override}"
    machine = platform.machine().lower()
    if platform.system() == "Darwin" and machine in ("arm64", "aarch64"):
        return True, "Apple arm64 CPU (8-bit dot product)"
    flags = _cpu_flags()
    wanted = ARM_FLAGS if machine in ("aarch64", "arm64") else X86_FLAGS
    found = [f for f in wanted if f in flags]
    if found:
        return True, f"CPU has {'/'.join(found).upper().replace('_', '-')}"
    if not flags:
        return False, f"CPU features unknown on {platform.system()} {machine}"
    return False, f"CPU lacks {'/'.join(wanted).upper().replace('_', '-')} (INT8 would not be faster than fp32)"
