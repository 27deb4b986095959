"""torch ``EmbeddingModel`` -> verified ONNX bundle (``metaedge.export.export_bundle``).

ONNX choices, made for the devices that consume the file:

* **opset 18.** TensorRT's ONNX parser accepts opsets 9-20 in 10.x (onnx-tensorrt ``docs/operators.md``:
  "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20"; 10.3 on JetPack 6 ships
  the parser built with ONNX 1.16) and 9-25 in 11.x. torch's dynamo exporter emits opset 18 natively; asking
  it for 17 runs the ONNX version converter, which fails on resnet18 with only a printed traceback. So 18 it
  is, and the written file's opset is checked afterwards: anything else fails the export.
* **IR version <= 10** (the newest that ONNX 1.16, i.e. TensorRT 10.3's parser, knows).
* Only standard-domain operators, no ONNX functions (TensorRT and every ONNX Runtime build can run it).
* Dynamic batch axis named ``batch``, fixed C/H/W from the spec; constant folding (the exporter's optimizer
  also folds BatchNorm into the convolutions); input/output names from ``spec.input_name/output_name``.
* Optional ``model.fp16.onnx``: the same network with fp16 weights and maths but float32 input/output (casts at
  the edges) - what TensorRT 11's strongly typed builder needs for an fp16 engine.

A bundle is written to a temporary directory next to the target and renamed into place only after every
check passed, so a failed export never leaves a half-written bundle behind.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from metaedge._optional import require
from metaedge.export import verify
from metaedge.runtime.bundle import (BATCH_DIM, BUNDLE_FORMAT, FORMAT_VERSION, FP16_ONNX_NAME, MANIFEST_NAME,
                                     ONNX_NAME, Bundle, model_entry, write_manifest)
from metaedge.runtime.fileio import sha256_file
from metaedge.runtime.spec import ModelSpec

ONNX_OPSET = 18
TENSORRT10_OPSETS = (9, 20)     # onnx-tensorrt docs/operators.md (10.x); TensorRT 11.x: 9-25
MAX_IR_VERSION = 10             # ONNX 1.16 (the parser of TensorRT 10.3 / JetPack 6)
FP32_TOLERANCE_ABS = 1e-4       # issue 5: fp32 ONNX vs torch, conv4 and resnet18
FP16_MIN_COSINE = 0.999         # fp16 rounding moves embeddings a little; their direction must stay put
EXAMPLE_BATCH = 2               # torch.export specialises batch sizes 0 and 1; 2 keeps the axis symbolic

log = logging.getLogger("metaedge.export")


class ExportError(RuntimeError):
    """The model could not be exported, or the exported file failed a check (the message has the numbers)."""


# ------------------------------------------------------------------------------------------------ model
def _resolve_model(model) -> tuple[Any, str | None]:
    """An EmbeddingModel (any torch module with a ``.spec: ModelSpec``); with the checkpoint it came from."""
    if isinstance(model, (str, os.PathLike)):
        # Checkpoints are a training format and export sits below train in the layering, so loading one is
        # the caller's step (`metaedge export` does it).
        raise TypeError(f"model: expected an EmbeddingModel, got the path {os.fspath(model)!r}; load it first: "
                        "export_bundle(metaedge.train.load_checkpoint(path), out_dir)")
    torch = require("torch", "exporting a model")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected an EmbeddingModel (torch.nn.Module with .spec) or a checkpoint path, "
                        f"got {type(model).__name__}")
    if not isinstance(getattr(model, "spec", None), ModelSpec):
        raise TypeError("model: has no `.spec` (metaedge.runtime.spec.ModelSpec) saying what input it takes and "
                        "how images are pre-processed; build it with metaedge.train.build_backbone or attach one")
    return model, getattr(model, "checkpoint_path", None)


def _fp16_edges(module):
    """The network in fp16 with fp32 I/O: what TensorRT 11 builds an fp16 engine from (strong typing)."""
    torch = require("torch", "exporting a model")

    class Fp16Edges(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.half()).float()

    return Fp16Edges(copy.deepcopy(module).half()).eval()


# -------------------------------------------------------------------------------------------- export
@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's passes log every rewrite at INFO; keep a user's INFO log about the export itself."""
    names = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo", "torch.fx")
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _torch_export(module, spec: ModelSpec, path: Path, opset: int) -> str:
    """Write ``module`` to ``path``; returns which exporter produced it."""
    with _quiet_exporter():
        return _torch_export_inner(module, spec, path, opset)


def _torch_export_inner(module, spec: ModelSpec, path: Path, opset: int) -> str:
    torch = require("torch", "exporting a model")
    require("onnxscript", "exporting a model to ONNX")
    example = torch.zeros(EXAMPLE_BATCH, *spec.input_shape)
    batch = torch.export.Dim(BATCH_DIM, min=1)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (example,), None, input_names=[spec.input_name],
                                        output_names=[spec.output_name], opset_version=opset, dynamo=True,
                                        dynamic_shapes=({0: batch},), external_data=False, optimize=True,
                                        verbose=False)
            program.save(str(path), external_data=False)
        return f"torch.onnx dynamo (torch {torch.__version__})"
    except Exception as exc:  # the exporter raises many types; the fallback keeps its reason in the log
        dynamo_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    log.warning("dynamo ONNX export failed (%s); retrying with the TorchScript exporter", dynamo_error)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), input_names=[spec.input_name],
                              output_names=[spec.output_name], opset_version=opset, dynamo=False,
                              dynamic_axes={spec.input_name: {0: BATCH_DIM}, spec.output_name: {0: BATCH_DIM}},
                              do_constant_folding=True)
    except Exception as exc:
        raise ExportError(f"ONNX export failed with both torch exporters: dynamo: {dynamo_error}; TorchScript: "
                          f"{type(exc).__name__}: {exc}") from exc
    return f"torch.onnx TorchScript (torch {torch.__version__}); dynamo failed: {dynamo_error}"


def _dims(value_info) -> list:
    return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
            for d in value_info.type.tensor_type.shape.dim]


def check_onnx(path: str | os.PathLike, spec: ModelSpec, *, opset: int = ONNX_OPSET,
               io_dtype: str = "float32") -> dict:
    """Fail loudly unless the file is what devices expect; normalise the batch axis name and stamp metadata.

    Checks: default-domain opset == ``opset`` and within TensorRT 10's range, IR version, standard operators
    only, ``onnx.checker`` (full check), strict shape inference, one input ``[batch, C, H, W]`` and one output
    ``[batch, embedding_dim]``, both ``io_dtype``.
    """
    onnx = require("onnx", "checking an exported ONNX file")
    path = Path(path)
    model = onnx.load(str(path))
    opsets = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
    written = opsets.get("ai.onnx")
    if written != opset:
        raise ExportError(f"{path.name}: the exporter wrote ONNX opset {written}, not the requested {opset} "
                          f"(TensorRT 10.x parses opsets {TENSORRT10_OPSETS[0]}-{TENSORRT10_OPSETS[1]}); "
                          "refusing to ship it")
    if not TENSORRT10_OPSETS[0] <= written <= TENSORRT10_OPSETS[1]:
        raise ExportError(f"{path.name}: opset {written} is outside TensorRT 10's range {TENSORRT10_OPSETS}")
    if model.ir_version > MAX_IR_VERSION:
        raise ExportError(f"{path.name}: ONNX IR version {model.ir_version} is newer than TensorRT 10.3's parser "
                          f"reads ({MAX_IR_VERSION})")
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign or len(model.functions):
        raise ExportError(f"{path.name}: non-standard operators {foreign} / {len(model.functions)} ONNX functions; "
                          "TensorRT's parser would reject them")
    try:
        onnx.checker.check_model(str(path), full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ExportError(f"{path.name}: onnx checker / shape inference failed: {exc}") from exc
    initializers = {i.name for i in inferred.graph.initializer}
    inputs = [i for i in inferred.graph.input if i.name not in initializers]
    outputs = list(inferred.graph.output)
    elem = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16}[io_dtype]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"{path.name}: expected one input and one output, got {[i.name for i in inputs]} -> "
                          f"{[o.name for o in outputs]}")
    (inp,), (out,) = inputs, outputs
    in_dims, out_dims = _dims(inp), _dims(out)
    problems = []
    if inp.name != spec.input_name or out.name != spec.output_name:
        problems.append(f"names {inp.name!r} -> {out.name!r}, expected {spec.input_name!r} -> {spec.output_name!r}")
    if len(in_dims) != 4 or isinstance(in_dims[0], int) or in_dims[1:] != list(spec.input_shape):
        problems.append(f"input shape {in_dims}, expected [batch, {', '.join(map(str, spec.input_shape))}]")
    if len(out_dims) != 2 or isinstance(out_dims[0], int) or out_dims[1] != spec.embedding_dim:
        problems.append(f"output shape {out_dims}, expected [batch, {spec.embedding_dim}]")
    for v in (inp, out):
        if v.type.tensor_type.elem_type != elem:
            problems.append(f"{v.name} has element type {onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)}"
                            f", expected {io_dtype}")
    if problems:
        raise ExportError(f"{path.name}: " + "; ".join(problems))
    for v in (model.graph.input[[i.name for i in model.graph.input].index(inp.name)], model.graph.output[0]):
        v.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    from metaedge import __version__
    del model.metadata_props[:]
    for key, value in (("metaedge_version", __version__), ("backbone", spec.backbone),
                       ("embedding_dim", str(spec.embedding_dim)), ("metric", spec.metric)):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    model.producer_name = "metaedge"
    onnx.save(model, str(path))
    return {"opset": written, "ir_version": int(model.ir_version), "nodes": len(model.graph.node),
            "operators": sorted({n.op_type for n in model.graph.node})}


# --------------------------------------------------------------------------------------------- bundle
def _torch_runner(module) -> Callable[[np.ndarray], np.ndarray]:
    torch = require("torch", "exporting a model")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()
    return run


def _ort_runner(path: Path, spec: ModelSpec) -> Callable[[np.ndarray], np.ndarray]:
    session = verify.ort_cpu_session(path)

    def run(x: np.ndarray) -> np.ndarray:
        return session.run([spec.output_name], {spec.input_name: x})[0]
    return run


def _prepare_target(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a directory")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise ExportError(f"{out_dir} exists and is not empty; pass overwrite=True (CLI: --force) to replace it")
    if not (out_dir / MANIFEST_NAME).exists():
        raise ExportError(f"{out_dir} is not a bundle (no {MANIFEST_NAME}); refusing to replace it")


def _install(staging: Path, out_dir: Path) -> None:
    """Swap the finished bundle into place; the old one (if any) is removed only after the swap."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_bundle(model, out_dir: str | os.PathLike, *, fp16_onnx: bool = False, images=None,
                  num_images: int = 32, tolerance: float = FP32_TOLERANCE_ABS, seed: int = 0,
                  overwrite: bool = False, progress: Callable[[str], None] | None = None) -> Bundle:
    """Export ``model`` (an ``EmbeddingModel``, e.g. from ``metaedge.train.load_checkpoint``) to a verified
    bundle in ``out_dir``.

    ``images``: real images for the parity check (a directory, a .zip, files or uint8 arrays; at most
    ``num_images`` are used), pre-processed by the spec exactly as on the device. The fp32 ONNX must match
    torch within ``tolerance`` (max abs) on every input set, else ``ExportError`` with the numbers.
    ``fp16_onnx``: also write ``model.fp16.onnx`` (fp32 I/O) for TensorRT 11 fp16 engines; its embeddings must
    keep cosine >= 0.999 with torch's. Returns the loaded ``Bundle``.
    """
    say = progress or log.info
    torch = require("torch", "exporting a model")
    onnx = require("onnx", "exporting a model to ONNX")
    ort = require("onnxruntime", "verifying an exported model")
    out_dir = Path(out_dir)
    _prepare_target(out_dir, overwrite)
    module, checkpoint = _resolve_model(model)
    spec = module.spec.validate()
    was_training = module.training
    module.eval()
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with torch.no_grad():
            probe = module(torch.zeros(EXAMPLE_BATCH, *spec.input_shape))
        if tuple(probe.shape) != (EXAMPLE_BATCH, spec.embedding_dim):
            raise ExportError(f"the model maps [{EXAMPLE_BATCH}, {', '.join(map(str, spec.input_shape))}] to "
                              f"{list(probe.shape)}, but its spec says embedding_dim {spec.embedding_dim}")
        real = verify.preprocess_images(spec, verify.load_images(images, num_images)) if images is not None else None
        reference = _torch_runner(module)

        start = time.perf_counter()
        say(f"exporting {spec.backbone} to ONNX opset {ONNX_OPSET} ...")
        onnx_path = staging / ONNX_NAME
        exporter = _torch_export(module, spec, onnx_path, ONNX_OPSET)
        info = check_onnx(onnx_path, spec)
        say(f"  {ONNX_NAME}: {info['nodes']} nodes ({', '.join(info['operators'])}), "
            f"{onnx_path.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s")
        results = verify.check_parity(reference, _ort_runner(onnx_path, spec), spec, images=real, seed=seed)
        for r in results:
            say(f"  parity fp32 {r}")
        if real is None:
            say("  (no real images given: parity on seeded random inputs only; pass images= / --images DIR|ZIP)")
        fp32 = verify.summarize(results, tolerance_abs=tolerance)
        if not fp32["passed"]:
            raise ExportError(f"fp32 ONNX does not match torch: max abs error {fp32['max_abs']:.3e} > tolerance "
                              f"{tolerance:.1e} (min cosine {fp32['min_cosine']:.7f}); per input set:\n  "
                              + "\n  ".join(str(r) for r in results))
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION,
            "metaedge_version": __import__("metaedge").__version__,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "spec": spec.to_dict(),
            "model": model_entry(ONNX_NAME, sha256_file(onnx_path), onnx_path.stat().st_size, opset=info["opset"],
                                 ir_version=info["ir_version"], precision="fp32", spec=spec),
            "verification": {"fp32": fp32, "seed": seed},
        }
        if fp16_onnx:
            fp16_path = staging / FP16_ONNX_NAME
            say("exporting the fp16 ONNX (fp32 input/output) ...")
            _torch_export(_fp16_edges(module), spec, fp16_path, ONNX_OPSET)
            info16 = check_onnx(fp16_path, spec)
            results16 = verify.check_parity(reference, _ort_runner(fp16_path, spec), spec, images=real, seed=seed)
            for r in results16:
                say(f"  parity fp16 {r}")
            fp16 = verify.summarize(results16, min_cosine=FP16_MIN_COSINE)
            if not fp16["passed"]:
                raise ExportError(f"fp16 ONNX drifts from torch: min cosine {fp16['min_cosine']:.6f} < "
                                  f"{FP16_MIN_COSINE} (max abs {fp16['max_abs']:.3e}); export without fp16_onnx")
            manifest["fp16_model"] = model_entry(FP16_ONNX_NAME, sha256_file(fp16_path), fp16_path.stat().st_size,
                                                 opset=info16["opset"], ir_version=info16["ir_version"],
                                                 precision="fp16", spec=spec)
            manifest["verification"]["fp16"] = fp16
        meta = getattr(module, "checkpoint_meta", None) or {}
        manifest["source"] = {
            "checkpoint": checkpoint, "exporter": exporter, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "training": meta.get("training") or None, "metrics": meta.get("metrics") or None,
            "checkpoint_weights_sha256": ((meta.get("files") or {}).get("model.safetensors") or {}).get("sha256"),
        }
        write_manifest(staging, manifest)
        Bundle.load(staging)  # the same checks a device runs, before the bundle replaces anything
        _install(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        module.train(was_training)
    bundle = Bundle.load(out_dir)
    say(f"bundle written to {out_dir} (fingerprint {bundle.fingerprint[:16]})")
    return bundle
