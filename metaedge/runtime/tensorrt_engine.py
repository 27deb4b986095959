"""Building TensorRT engines from a bundle's ONNX, on the device (DESIGN §7). No torch.

This lives in the runtime layer because a device builds its engine on first start; ``metaedge.export.
build_engine`` and ``metaedge build`` are the public faces. Written against the TensorRT 10.x and 11.x
Python APIs (NVIDIA TensorRT Python API reference, samples/python/common_runtime.py and
samples/python/simple_progress_monitor, "Migrating from TensorRT 10.x to 11.x"):

* Builder -> ``create_network()`` (TensorRT 10: explicit batch is implied; 11: always strongly typed) ->
  ``OnnxParser.parse_from_file`` (every ``ParserError`` reported with node index, name and operator) ->
  BuilderConfig (``set_memory_pool_limit(WORKSPACE)``, one optimisation profile for the batch range,
  persistent timing cache, ``progress_monitor``) -> ``build_serialized_network``.
* Precision: TensorRT 10 uses ``BuilderFlag.FP16`` on the fp32 ONNX; TensorRT 11 removed every precision
  builder flag (strong typing), so fp16 comes from the bundle's fp16 ONNX and no flag is touched.
* No INT8 calibration (removed in 11; not used on 10 either).
Everything that does not need TensorRT itself (keys, cache, precision choice) is plain Python and tested.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from metaedge._optional import require
from metaedge.runtime.bundle import Bundle
from metaedge.runtime.engine_cache import MAX_PLAN_BYTES, EngineKey, ensure_engine
from metaedge.runtime.fileio import atomic_write_bytes, read_file

log = logging.getLogger("metaedge.tensorrt")

DEFAULT_MAX_BATCH = 32
DEFAULT_WORKSPACE_MIB = 1024


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX or build an engine; the message carries TensorRT's own errors."""


def tensorrt_module():
    return require("tensorrt", "building and running TensorRT engines")


def tensorrt_major(version: str) -> int:
    match = re.match(r"(\d+)", str(version))
    if not match:
        raise EngineBuildError(f"cannot read the TensorRT version {version!r}")
    return int(match.group(1))


@dataclass(frozen=True)
class DeviceIdentity:
    gpu_name: str
    compute_capability: str
    cuda_version: str


def current_device(index: int = 0) -> DeviceIdentity:
    """The GPU engines are built for, as metaedge's CUDA build sees it (engines are keyed by it)."""
    from metaedge._build_info import build_info
    cuda = build_info(backends=False).get("cuda", {})
    if not cuda.get("built"):
        raise EngineBuildError("TensorRT engines are keyed by the GPU, and this metaedge has no CUDA build to "
                               f"identify it ({cuda.get('why_not')}); rebuild metaedge with METAEDGE_CUDA=1")
    devices = cuda.get("devices") or []
    if index >= len(devices):
        raise EngineBuildError(f"no CUDA device {index}: {cuda.get('why_not') or f'{len(devices)} device(s) visible'}")
    dev = devices[index]
    return DeviceIdentity(gpu_name=str(dev["name"]), compute_capability=str(dev["compute_capability"]),
                          cuda_version=str(cuda.get("runtime") or "unknown"))


def choose_onnx(bundle: Bundle, precision: str, trt_major: int) -> tuple[Path, str, bool]:
    """``(onnx file, its sha256, set the FP16 builder flag?)`` for a precision on this TensorRT major."""
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision: expected 'fp16' or 'fp32', got {precision!r}")
    if precision == "fp32":
        return bundle.onnx_path, bundle.onnx_sha256, False
    if trt_major < 11:
        return bundle.onnx_path, bundle.onnx_sha256, True
    if bundle.fp16_onnx_path is None:
        raise EngineBuildError(f"TensorRT {trt_major}.x builds fp16 engines only from an fp16 ONNX (strong typing; "
                               "the FP16 builder flag is gone), and this bundle has none. Re-export with "
                               "`metaedge export --fp16-onnx` (export_bundle(..., fp16_onnx=True)) or use fp32.")
    return bundle.fp16_onnx_path, bundle.fp16_onnx_sha256, False


def resolve_precision(bundle: Bundle, precision: str, trt_major: int) -> str:
    """``"auto"``: fp16 wherever this TensorRT can build it from the bundle, else fp32."""
    if precision != "auto":
        return precision
    return "fp16" if trt_major < 11 or bundle.fp16_onnx_path is not None else "fp32"


def engine_key(bundle: Bundle, precision: str, max_batch: int, tensorrt_version: str,
               device: DeviceIdentity, opt_batch: int | None = None) -> EngineKey:
    _, sha, _ = choose_onnx(bundle, precision, tensorrt_major(tensorrt_version))
    return EngineKey(onnx_sha256=sha, tensorrt_version=str(tensorrt_version), cuda_version=device.cuda_version,
                     gpu_name=device.gpu_name, compute_capability=device.compute_capability, precision=precision,
                     max_batch=int(max_batch), opt_batch=int(opt_batch or default_opt_batch(max_batch)))


def default_opt_batch(max_batch: int) -> int:
    # Frame-by-frame classification (batch 1) is the latency-critical path on a device.
    return 1


def timing_cache_path(engines_dir: Path, tensorrt_version: str, device: DeviceIdentity) -> Path:
    gpu = re.sub(r"[^0-9A-Za-z]+", "-", device.gpu_name).strip("-").lower()
    cc = re.sub(r"[^0-9]", "", device.compute_capability)
    return Path(engines_dir) / f"timing-{gpu}-sm{cc}-trt{tensorrt_version}.cache"


# ------------------------------------------------------------------------------ thin TensorRT wrappers
def make_logger(trt, verbose: bool = False):
    """A ``trt.ILogger`` that forwards to Python logging and remembers the last errors for exceptions."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            sev = trt.ILogger.Severity
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors = (self.errors + [msg])[-20:]
                log.error("TensorRT: %s", msg)
            elif severity == sev.WARNING:
                log.warning("TensorRT: %s", msg)
            elif verbose:
                log.info("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return Logger()


def make_progress_monitor(trt, report: Callable[[str], None]):
    """A ``trt.IProgressMonitor`` (TensorRT >= 10) that reports top-level build phases, throttled, without
    terminal escape codes (the output often goes to a log file on a device)."""

    class Progress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._depth: dict[str, int] = {}
            self._start = time.perf_counter()
            self._last = 0.0

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = 0 if parent_phase is None else self._depth.get(parent_phase, 0) + 1
            self._depth[phase_name] = depth
            if depth <= 1:
                report(f"[{time.perf_counter() - self._start:6.1f} s] {'  ' * depth}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            now = time.perf_counter()
            if self._depth.get(phase_name, 9) == 0 and now - self._last > 5.0:
                self._last = now
                report(f"[{now - self._start:6.1f} s] {phase_name}: step {step + 1}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            self._depth.pop(phase_name, None)

    return Progress()


def _parser_error_text(error) -> str:
    node = error.node()
    where = f"node {node} ({error.node_name()!r}, {error.node_operator()})" if node >= 0 else "model"
    return f"{where}: {error.desc()} [{error.code()}]"


def build_serialized(onnx_path: Path, *, input_name: str, input_shape: tuple[int, int, int], fp16_flag: bool,
                     max_batch: int, opt_batch: int, workspace_bytes: int, timing_cache: Path | None,
                     progress: Callable[[str], None] | None = None, verbose: bool = False, trt=None) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine for batch 1..``max_batch`` (optimised for
    ``opt_batch``). ``fp16_flag`` sets ``BuilderFlag.FP16`` and is only legal before TensorRT 11."""
    trt = trt or tensorrt_module()
    major = tensorrt_major(trt.__version__)
    if fp16_flag and major >= 11:
        raise EngineBuildError("BuilderFlag.FP16 does not exist in TensorRT 11; build fp16 from the fp16 ONNX")
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"opt_batch: expected 1..max_batch ({max_batch}), got {opt_batch}")
    logger = make_logger(trt, verbose)
    builder = trt.Builder(logger)
    network = builder.create_network()
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error_text(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT {trt.__version__}'s ONNX parser rejected {onnx_path.name}:\n  "
                               + "\n  ".join(errors or logger.errors or ["(no error recorded)"]))
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if [t.name for t in inputs] != [input_name]:
        raise EngineBuildError(f"{onnx_path.name}: network inputs {[t.name for t in inputs]}, expected "
                               f"[{input_name!r}]")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, *input_shape), (opt_batch, *input_shape), (max_batch, *input_shape))
    config.add_optimization_profile(profile)
    cache = _attach_timing_cache(config, timing_cache)
    if progress is not None and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = make_progress_monitor(trt, progress)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} could not build an engine from {onnx_path.name}: "
                               + ("; ".join(logger.errors) or "no error text; rerun with verbose=True"))
    if cache is not None and timing_cache is not None:
        try:
            atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
        except OSError as exc:  # a read-only bundle still gets its engine; only later builds are slower
            log.warning("could not save the TensorRT timing cache %s: %s", timing_cache, exc)
    return bytes(memoryview(plan))


def _attach_timing_cache(config, path: Path | None):
    """Reuse measured tactic timings across builds (minutes saved on a Jetson); start empty when the file is
    missing, unreadable or from another GPU/TensorRT."""
    data = b""
    if path is not None and path.exists():
        try:
            data = read_file(path, MAX_PLAN_BYTES, "TensorRT timing cache")
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable TensorRT timing cache %s: %s", path, exc)
    cache = config.create_timing_cache(data) if data else None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        if data:
            log.warning("TensorRT timing cache %s does not fit this GPU/TensorRT; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def get_engine(bundle: Bundle | str | Path, *, precision: str = "fp16", max_batch: int = DEFAULT_MAX_BATCH,
               opt_batch: int | None = None, workspace_mib: int = DEFAULT_WORKSPACE_MIB, force: bool = False,
               progress: Callable[[str], None] | None = None, verbose: bool = False,
               device: DeviceIdentity | None = None, trt=None) -> tuple[Path, EngineKey]:
    """The cached engine for this bundle/precision/batch range on this GPU and TensorRT, built if needed."""
    bundle = Bundle.load(bundle)
    trt = trt or tensorrt_module()
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch: expected a positive int, got {max_batch!r}")
    device = device or current_device()
    major = tensorrt_major(trt.__version__)
    precision = resolve_precision(bundle, precision, major)
    onnx_path, _, fp16_flag = choose_onnx(bundle, precision, major)
    key = engine_key(bundle, precision, max_batch, trt.__version__, device, opt_batch)
    spec = bundle.spec

    def build() -> bytes:
        return build_serialized(onnx_path, input_name=spec.input_name, input_shape=tuple(spec.input_shape),
                                fp16_flag=fp16_flag, max_batch=key.max_batch, opt_batch=key.opt_batch,
                                workspace_bytes=int(workspace_mib) << 20,
                                timing_cache=timing_cache_path(bundle.engines_dir, trt.__version__, device),
                                progress=progress, verbose=verbose, trt=trt)

    return ensure_engine(bundle.engines_dir, key, build, force=force, logger=log), key
