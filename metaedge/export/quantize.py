"""INT8 post-training quantisation of a bundle's fp32 ONNX, with the per-layer precision policy.

Two explicitly quantised (Q/DQ) files come out of one calibration, because the two consumers want different
integer formats:

* ``model.int8.onnx`` - for CPUs through ONNX Runtime: **uint8 activations** (asymmetric, so a ReLU folds into
  the quantisation range) and int8 per-channel symmetric weights. ONNX Runtime fuses these Q/DQ pairs into
  QLinearConv/QLinearAdd (VNNI / ARM dot-product kernels). Symmetric int8 activations leave about half of a
  resnet18's convolutions in float on ONNX Runtime's CPU provider (measured: 1.2x instead of 3x+).
* ``model.int8.trt.onnx`` - for TensorRT: TensorRT quantises symmetrically only (signed int8, zero point 0),
  so activations and weights are symmetric int8. TensorRT 10 builds it in explicit-quantisation mode (INT8
  flag), TensorRT 11 as a strongly typed network (no flags).

The quantiser is ONNX Runtime's ``quantize_static`` (QDQ format, per-channel weights), calibrated once
(``calibration_cache_path``) on images pre-processed by the bundle's own ``PreprocessSpec`` - the device's
kernel - and re-run per precision policy. Why not NVIDIA ModelOpt's ONNX PTQ: see the README ("INT8").

**Precision policy** (recorded in the manifest): the sensitivity of every Conv/Gemm/MatMul is measured alone
(only that layer quantised, embedding cosine against fp32 on held-out images); the whole model is quantised,
and while its mean cosine stays below ``target_cosine`` the most sensitive remaining layer goes back to float,
up to ``max_float_layers``. Verification then compares fp32 and INT8 embeddings (cosine) and few-shot accuracy
on held-out classes (paired episodes, 95% CI) - ``export_bundle`` fails with the numbers past the tolerances.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from metaedge._optional import require
from metaedge.export import verify
from metaedge.runtime.bundle import INT8_ONNX_NAME, INT8_TRT_ONNX_NAME
from metaedge.runtime.spec import ModelSpec

log = logging.getLogger("metaedge.export")

TARGETS = {"cpu": INT8_ONNX_NAME, "tensorrt": INT8_TRT_ONNX_NAME}
MANIFEST_KEYS = {"cpu": "int8_model", "tensorrt": "int8_tensorrt_model"}
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
SENSITIVE_OPS = ("Conv", "Gemm", "MatMul")   # the layers whose precision the policy decides
CALIB_BATCH = 32


class QuantizationError(RuntimeError):
    """INT8 quantisation failed, or the INT8 model lost more than the tolerances allow (numbers in the message)."""


@dataclass
class Int8Options:
    """How ``export_bundle(..., int8=Int8Options(...))`` quantises and checks the INT8 models.

    ``calibration``: images the activation ranges are measured on (a directory, .zip, files or uint8 arrays),
    pre-processed by the bundle's spec exactly as on the device; at most ``calib_images`` of them, spread over
    the set. ``heldout``: labelled images of classes the model did not train on - a directory with one
    sub-folder per class, or ``(images, labels)`` - for the embedding-cosine and few-shot checks (without it
    only the cosine on calibration images is measured, and the manifest says so).
    Tolerances: the export fails when an INT8 model's mean embedding cosine against fp32 is below
    ``min_cosine`` or its ``ways``-way ``shots``-shot accuracy is more than ``max_loss_points`` below fp32's
    (mean of ``episodes`` paired episodes). Mixed precision: see the module docstring (``target_cosine``,
    ``max_float_layers``; ``sensitivity``: ``"auto"`` measures it only when the fully quantised model misses
    ``target_cosine``, ``True`` always (the table goes into the manifest), ``False`` never: every layer INT8).
    """
    calibration: Any = None
    calib_images: int = 512
    heldout: Any = None
    heldout_description: str | None = None
    targets: tuple[str, ...] = ("cpu", "tensorrt")
    calibrate_method: str = "minmax"
    min_cosine: float = 0.95
    max_loss_points: float = 1.0
    target_cosine: float = 0.99
    max_float_layers: int | None = None
    sensitivity: bool | str = "auto"
    sensitivity_images: int = 64
    max_heldout_images: int = 2000
    ways: int = 5
    shots: int = 1
    queries: int = 15
    episodes: int = 600
    seed: int = 0

    def validate(self) -> "Int8Options":
        problems = []
        if self.calibration is None:
            problems.append("calibration: images are needed to measure activation ranges (--calibrate DIR, or the "
                            "checkpoint's training data)")
        if not self.targets or any(t not in TARGETS for t in self.targets):
            problems.append(f"targets: expected some of {tuple(TARGETS)}, got {self.targets!r}")
        if self.calibrate_method not in CALIBRATION_METHODS:
            problems.append(f"calibrate_method: expected one of {CALIBRATION_METHODS}, got {self.calibrate_method!r}")
        if self.calib_images < 1 or self.sensitivity_images < 1 or self.max_heldout_images < 1:
            problems.append("calib_images, sensitivity_images and max_heldout_images must be >= 1")
        if not -1.0 <= self.min_cosine <= 1.0 or not -1.0 <= self.target_cosine <= 1.0:
            problems.append(f"min_cosine / target_cosine: expected values in [-1, 1], got {self.min_cosine} / "
                            f"{self.target_cosine}")
        if not self.max_loss_points >= 0:
            problems.append(f"max_loss_points: expected >= 0 (accuracy points), got {self.max_loss_points}")
        if self.sensitivity not in (True, False, "auto"):
            problems.append(f"sensitivity: expected True, False or 'auto', got {self.sensitivity!r}")
        if self.ways < 2 or self.shots < 1 or self.queries < 1 or self.episodes < 1:
            problems.append(f"ways >= 2, shots/queries/episodes >= 1 are needed, got {self.ways}/{self.shots}/"
                            f"{self.queries}/{self.episodes}")
        if problems:
            raise ValueError("int8: " + "; ".join(problems))
        return self

    def settings(self) -> dict:
        """What the manifest records (everything but the image sources themselves)."""
        return {k: v for k, v in asdict(self).items() if k not in ("calibration", "heldout")}


# ------------------------------------------------------------------------------------------ helpers
@contextlib.contextmanager
def _quiet_quantizer():
    """quantize_static logs a warning per call about pre-processing (done) and progress at INFO."""
    root = logging.getLogger()
    saved = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(saved)


def _strip_unused_domains(path: Path) -> None:
    """ONNX Runtime's optimiser declares every domain it knows; TensorRT's parser and our checks want only the
    ones the graph uses."""
    onnx = require("onnx", "INT8 quantisation")
    model = onnx.load(str(path))
    used = {n.domain or "" for n in model.graph.node}
    keep = [imp for imp in model.opset_import if (imp.domain or "") in used or (imp.domain or "") in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    onnx.save(model, str(path))


def _session(path: Path):
    return verify.ort_cpu_session(path)


def embed(path: Path, spec: ModelSpec, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Embeddings of pre-processed inputs ``x`` through ONNX Runtime CPU."""
    session = _session(path)
    out = [session.run([spec.output_name], {spec.input_name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, spec.embedding_dim), np.float32)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0), 0.0)


def cosine_stats(reference: np.ndarray, candidate: np.ndarray) -> dict:
    if not np.all(np.isfinite(candidate)):
        return {"mean": float("-inf"), "p05": float("-inf"), "min": float("-inf"), "samples": len(reference)}
    cos = cosine_rows(reference, candidate)
    return {"mean": round(float(cos.mean()), 6), "p05": round(float(np.percentile(cos, 5)), 6),
            "min": round(float(cos.min()), 6), "samples": int(len(cos))}


class _Reader:
    """``CalibrationDataReader`` over pre-processed images, ``CALIB_BATCH`` at a time."""

    def __init__(self, name: str, x: np.ndarray):
        self._name, self._x, self._i = name, x, 0

    def get_next(self):
        if self._i >= len(self._x):
            return None
        batch = self._x[self._i:self._i + CALIB_BATCH]
        self._i += CALIB_BATCH
        return {self._name: np.ascontiguousarray(batch, dtype=np.float32)}


@dataclass
class _Quantizer:
    """One pre-processed fp32 model, calibrated once, quantised as often as the policy needs."""
    source: Path
    spec: ModelSpec
    workdir: Path
    calibrate_method: str
    calibration: np.ndarray
    prepared: Path = field(init=False)
    cache: Path = field(init=False)
    layers: list[tuple[str, str]] = field(init=False)

    def __post_init__(self):
        onnx = require("onnx", "INT8 quantisation")
        from onnxruntime.quantization.shape_inference import quant_pre_process
        self.prepared = self.workdir / "prepared.onnx"
        self.cache = self.workdir / "calibration.json"
        with _quiet_quantizer():
            quant_pre_process(str(self.source), str(self.prepared), skip_symbolic_shape=False)
        model = onnx.load(str(self.prepared))
        names = [n.name for n in model.graph.node]
        if len(set(names)) != len(names) or not all(names):
            raise QuantizationError("the ONNX graph has unnamed or duplicate node names; per-layer precision needs "
                                    "unique names")
        self.layers = [(n.name, n.op_type) for n in model.graph.node if n.op_type in SENSITIVE_OPS]

    def quantize(self, out: Path, target: str, *, exclude: Sequence[str] = (), only: Sequence[str] | None = None):
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[self.calibrate_method]
        symmetric = target == "tensorrt"
        # TensorRT: biases stay float (it folds them itself; an int32 bias DequantizeLinear is not a TensorRT
        # quantisation); ONNX Runtime's CPU kernels take int32 biases.
        extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": not symmetric}
        reader = None if self.cache.exists() else _Reader(self.spec.input_name, self.calibration)
        with _quiet_quantizer():
            quantize_static(str(self.prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=False, activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                            nodes_to_quantize=list(only) if only is not None else None, calibrate_method=method,
                            extra_options=extra, calibration_cache_path=str(self.cache))
        _strip_unused_domains(out)
        return out


# ------------------------------------------------------------------------------------------- policy
def choose_float_layers(quantizer: _Quantizer, reference: np.ndarray, probe: np.ndarray, options: Int8Options,
                        say: Callable[[str], None]) -> dict:
    """Measure per-layer sensitivity and pick the layers that stay in float (see the module docstring)."""
    spec = quantizer.spec
    trial = quantizer.workdir / "trial.onnx"
    sensitivity: list[dict] = []
    measure = options.sensitivity is True
    if options.sensitivity == "auto":
        quantizer.quantize(trial, "cpu")
        full = float(cosine_rows(reference, embed(trial, spec, probe)).mean())
        measure = full < options.target_cosine
        say(f"  every layer INT8: mean cosine {full:.6f} on {len(probe)} images"
            + (f" < {options.target_cosine}: measuring per-layer sensitivity" if measure else ""))
    if measure:
        start = time.perf_counter()
        for name, op in quantizer.layers:
            quantizer.quantize(trial, "cpu", only=[name])
            cos = cosine_rows(reference, embed(trial, spec, probe))
            sensitivity.append({"layer": name, "op": op, "mean_cosine": round(float(cos.mean()), 6)})
        sensitivity.sort(key=lambda s: s["mean_cosine"])
        worst = ", ".join(f"{s['layer']} {s['mean_cosine']:.6f}" for s in sensitivity[:3])
        say(f"  sensitivity of {len(sensitivity)} layers measured alone ({time.perf_counter() - start:.0f} s); "
            f"most sensitive: {worst}")
    limit = len(sensitivity) if options.max_float_layers is None else min(options.max_float_layers, len(sensitivity))
    float_layers: list[str] = []
    steps = []
    while True:
        quantizer.quantize(trial, "cpu", exclude=float_layers)
        mean = float(cosine_rows(reference, embed(trial, spec, probe)).mean())
        steps.append({"float_layers": len(float_layers), "mean_cosine": round(mean, 6)})
        if mean >= options.target_cosine or len(float_layers) >= limit:
            break
        float_layers.append(sensitivity[len(float_layers)]["layer"])
    if float_layers:
        say(f"  kept in float (most sensitive first, until mean cosine >= {options.target_cosine}): "
            f"{', '.join(float_layers)}")
    rule = ("per-layer sensitivity = mean embedding cosine vs fp32 with only that layer quantised; every layer "
            f"quantised, then the most sensitive back to float while the model's mean cosine < "
            f"{options.target_cosine} (at most {limit} layers)") if measure else \
        (f"every layer quantised: the fully quantised model's mean cosine reached {options.target_cosine}, so "
         "sensitivity was not measured" if options.sensitivity == "auto" else
         "every layer quantised (sensitivity not measured)")
    return {"rule": rule, "quantizable_layers": len(quantizer.layers), "float_layers": float_layers,
            "steps": steps, "sensitivity": sensitivity, "probe_images": int(len(probe))}


def _onnx_ops(path: Path) -> dict[str, int]:
    onnx = require("onnx", "INT8 quantisation")
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# -------------------------------------------------------------------------------------------- entry
def quantize_bundle(fp32_path: Path, staging: Path, spec: ModelSpec, options: Int8Options, *,
                    check_file: Callable[[Path], dict], say: Callable[[str], None]) -> tuple[dict, dict]:
    """Write the INT8 files of ``options.targets`` into ``staging``; returns ``(manifest entries by key,
    verification record)``. Raises ``QuantizationError`` with the numbers when a tolerance is exceeded."""
    require("onnxruntime", "INT8 quantisation (onnxruntime.quantization)")
    options.validate()
    start = time.perf_counter()
    calib_u8 = verify.load_images(options.calibration, options.calib_images)
    if not calib_u8:
        raise QuantizationError("no calibration images")
    calibration = verify.preprocess_images(spec, calib_u8)
    heldout = verify.load_labelled(options.heldout, options.max_heldout_images, seed=options.seed) \
        if options.heldout is not None else None
    probe_source = heldout.images if heldout is not None else calib_u8
    probe_all = verify.preprocess_images(spec, probe_source)
    rng = np.random.default_rng(options.seed)
    probe = probe_all[np.sort(rng.permutation(len(probe_all))[:options.sensitivity_images])]
    say(f"INT8: calibrating on {len(calibration)} images ({options.calibrate_method}), pre-processed by the bundle "
        f"spec; checks on {len(probe_all)} {'held-out' if heldout is not None else 'calibration'} images")
    entries: dict[str, dict] = {}
    record: dict[str, Any] = {"settings": options.settings(),
                              "calibration": {"images": int(len(calibration)), "method": options.calibrate_method,
                                              "preprocess": "metaedge.kernels.preprocess with the bundle spec"},
                              "quantizer": _quantizer_name()}
    with tempfile.TemporaryDirectory(prefix="metaedge-int8-") as tmp:
        quantizer = _Quantizer(fp32_path, spec, Path(tmp), options.calibrate_method, calibration)
        reference_probe = embed(fp32_path, spec, probe)
        policy = choose_float_layers(quantizer, reference_probe, probe, options, say)
        record["policy"] = policy
        reference = embed(fp32_path, spec, probe_all)
        record["heldout"] = heldout.describe(options.heldout_description) if heldout is not None else None
        failures = []
        for target in options.targets:
            path = staging / TARGETS[target]
            quantizer.quantize(path, target, exclude=policy["float_layers"])
            info = check_file(path)
            got = embed(path, spec, probe_all)
            result: dict[str, Any] = {"file": path.name, "cosine": cosine_stats(reference, got),
                                      "operators": _onnx_ops(path)}
            if heldout is not None:
                result["accuracy"] = verify.paired_fewshot(reference, got, heldout.labels, metric=spec.metric,
                                                           ways=options.ways, shots=options.shots,
                                                           queries=options.queries, episodes=options.episodes,
                                                           seed=options.seed)
            else:
                result["accuracy"] = None
                result["accuracy_skipped"] = "no labelled held-out images given (heldout=, CLI --heldout DIR)"
            result["passed"], why = _judge(result, options)
            record[target] = result
            say(f"  {path.name} ({target}): {_describe_result(result)}")
            if not result["passed"]:
                failures.append(f"{path.name} ({target}): {why}")
            activations = "int8 symmetric" if target == "tensorrt" else "uint8 asymmetric"
            from metaedge.runtime.fileio import sha256_file
            from metaedge.runtime.bundle import model_entry
            entries[MANIFEST_KEYS[target]] = model_entry(
                path.name, sha256_file(path), path.stat().st_size, opset=info["opset"], ir_version=info["ir_version"],
                precision="int8", spec=spec,
                quantization={"format": "QDQ", "activations": activations, "weights": "int8 symmetric per-channel",
                              "target": target, "float_layers": list(policy["float_layers"])})
    record["seconds"] = round(time.perf_counter() - start, 1)
    record["passed"] = not failures
    if failures:
        raise QuantizationError("INT8 model(s) lose more than the tolerances allow (mean cosine >= "
                                f"{options.min_cosine}, accuracy loss <= {options.max_loss_points} points):\n  "
                                + "\n  ".join(failures)
                                + "\nKeep more layers in float (target_cosine / --int8-target-cosine), calibrate on "
                                  "more representative images, or loosen the tolerances (--int8-min-cosine, "
                                  "--int8-max-loss) if this loss is acceptable.")
    return entries, record


def _quantizer_name() -> str:
    import onnxruntime
    return f"onnxruntime.quantization.quantize_static (onnxruntime {onnxruntime.__version__}), QDQ, per-channel"


def _judge(result: dict, options: Int8Options) -> tuple[bool, str]:
    problems = []
    if not result["cosine"]["mean"] >= options.min_cosine:
        problems.append(f"mean embedding cosine {result['cosine']['mean']:.4f} < {options.min_cosine}")
    acc = result.get("accuracy")
    if acc is not None and 100 * acc["loss"] > options.max_loss_points:
        problems.append(f"{acc['ways']}-way {acc['shots']}-shot accuracy {100 * acc['int8']:.2f}% vs fp32 "
                        f"{100 * acc['fp32']:.2f}%: loss {100 * acc['loss']:.2f} +- {100 * acc['loss_ci95']:.2f} "
                        f"points > {options.max_loss_points}")
    return not problems, "; ".join(problems)


def _describe_result(result: dict) -> str:
    c = result["cosine"]
    text = f"cosine mean {c['mean']:.4f} p05 {c['p05']:.4f} min {c['min']:.4f}"
    acc = result.get("accuracy")
    if acc is not None:
        text += (f"; {acc['ways']}-way {acc['shots']}-shot fp32 {100 * acc['fp32']:.2f}% int8 {100 * acc['int8']:.2f}%"
                 f" (loss {100 * acc['loss']:+.2f} +- {100 * acc['loss_ci95']:.2f} points, {acc['episodes']} paired "
                 f"episodes)")
    return text + ("" if result.get("passed", True) else "  FAILED")
