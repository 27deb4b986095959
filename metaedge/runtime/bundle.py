"""A bundle: the self-describing directory that carries a trained backbone to a device (DESIGN §6).

::

    bundle/
      manifest.json      what the device needs: ModelSpec (input, every pre-processing step, embedding dim,
                         metric), the ONNX files with their sha256, verification numbers, metaedge version
      model.onnx         fp32, dynamic batch
      model.fp16.onnx    optional: fp16 weights and maths, fp32 I/O (TensorRT 11 builds fp16 from it)
      engines/           TensorRT plans built on the device (see engine_cache.py)

``Bundle.load`` checks the manifest's schema and version and that the ONNX files are byte-for-byte what was
exported (sha256), so an edited or truncated model is a clear error instead of wrong embeddings. The ONNX
sha256 is the bundle's fingerprint: galleries record it and refuse to load against another model.
No torch here.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaedge.runtime.fileio import atomic_write_json, sha256_file
from metaedge.runtime.spec import ModelSpec, SpecError

BUNDLE_FORMAT = "metaedge-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENGINES_DIRNAME = "engines"
ONNX_NAME = "model.onnx"
FP16_ONNX_NAME = "model.fp16.onnx"
BATCH_DIM = "batch"


class BundleError(ValueError):
    """A bundle is missing, malformed, from a newer metaedge, or was modified after export."""


def _fail(where: Path, message: str):
    raise BundleError(f"bundle {where}: {message}")


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def model_entry(file: str, sha256: str, size: int, *, opset: int, ir_version: int, precision: str,
                spec: ModelSpec) -> dict:
    """The manifest's description of one ONNX file of a bundle."""
    return {"file": file, "sha256": sha256, "bytes": size, "opset": opset, "ir_version": ir_version,
            "precision": precision,
            "input": {"name": spec.input_name, "shape": [BATCH_DIM, *spec.input_shape], "dtype": "float32",
                      "layout": "NCHW"},
            "output": {"name": spec.output_name, "shape": [BATCH_DIM, spec.embedding_dim], "dtype": "float32"}}


def _check_model_entry(where: Path, key: str, entry: Any, spec: ModelSpec) -> None:
    if not isinstance(entry, dict):
        _fail(where, f"manifest field '{key}': expected an object, got {type(entry).__name__}")
    for name, kind in (("file", str), ("sha256", str), ("bytes", int), ("opset", int), ("ir_version", int),
                       ("precision", str), ("input", dict), ("output", dict)):
        if not isinstance(entry.get(name), kind):
            _fail(where, f"manifest field '{key}.{name}': expected {kind.__name__}, got {entry.get(name)!r}")
    file = entry["file"]
    if Path(file).name != file or file in ("", ".", ".."):
        _fail(where, f"manifest field '{key}.file': expected a plain file name inside the bundle, got {file!r}")
    if not _is_sha256(entry["sha256"]):
        _fail(where, f"manifest field '{key}.sha256': expected 64 lowercase hex digits, got {entry['sha256']!r}")
    inp, out = entry["input"], entry["output"]
    expected_in = [BATCH_DIM, *spec.input_shape]
    if inp.get("name") != spec.input_name or list(inp.get("shape", [])) != expected_in:
        _fail(where, f"manifest field '{key}.input': expected name {spec.input_name!r} shape {expected_in} "
                     f"(from spec), got name {inp.get('name')!r} shape {inp.get('shape')}")
    expected_out = [BATCH_DIM, spec.embedding_dim]
    if out.get("name") != spec.output_name or list(out.get("shape", [])) != expected_out:
        _fail(where, f"manifest field '{key}.output': expected name {spec.output_name!r} shape {expected_out} "
                     f"(from spec), got name {out.get('name')!r} shape {out.get('shape')}")
    if inp.get("dtype") != "float32" or out.get("dtype") != "float32":
        _fail(where, f"manifest field '{key}': input and output must be float32, got {inp.get('dtype')!r} -> "
                     f"{out.get('dtype')!r}")


def validate_manifest(manifest: Any, where: Path | str = "<manifest>") -> ModelSpec:
    """Schema and version check; returns the ModelSpec. Raises BundleError naming the offending field."""
    where = Path(where)
    if not isinstance(manifest, dict):
        _fail(where, f"manifest: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != BUNDLE_FORMAT:
        _fail(where, f"manifest field 'format': expected {BUNDLE_FORMAT!r}, got {manifest.get('format')!r} "
                     "(not a metaedge bundle?)")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        _fail(where, f"manifest field 'format_version': expected a positive int, got {version!r}")
    if version > FORMAT_VERSION:
        from metaedge import __version__
        _fail(where, f"format version {version} was written by a newer metaedge "
                     f"({manifest.get('metaedge_version', '?')}); this metaedge {__version__} reads up to version "
                     f"{FORMAT_VERSION}. Upgrade metaedge on this device.")
    if not isinstance(manifest.get("metaedge_version"), str):
        _fail(where, "manifest field 'metaedge_version': expected a string")
    try:
        spec = ModelSpec.from_dict(manifest.get("spec") if isinstance(manifest.get("spec"), dict) else {})
    except SpecError as exc:
        _fail(where, f"manifest field 'spec': {exc}")
    if list(manifest["spec"].get("input_shape", spec.input_shape)) != list(spec.input_shape):
        _fail(where, f"manifest field 'spec.input_shape': {manifest['spec'].get('input_shape')} disagrees with "
                     f"spec.preprocess (channels, size) = {list(spec.input_shape)}")
    _check_model_entry(where, "model", manifest.get("model"), spec)
    if manifest.get("fp16_model") is not None:
        _check_model_entry(where, "fp16_model", manifest["fp16_model"], spec)
    for optional in ("verification", "source"):
        if optional in manifest and not isinstance(manifest[optional], dict):
            _fail(where, f"manifest field '{optional}': expected an object")
    return spec


def write_manifest(bundle_dir: str | Path, manifest: dict) -> Path:
    """Validate, then write ``manifest.json`` atomically."""
    bundle_dir = Path(bundle_dir)
    validate_manifest(manifest, bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


@dataclass
class Bundle:
    """A loaded, verified bundle. ``onnx_sha256`` is its fingerprint."""
    path: Path
    manifest: dict
    spec: ModelSpec
    onnx_path: Path
    onnx_sha256: str
    fp16_onnx_path: Path | None = None
    fp16_onnx_sha256: str | None = None
    extras: dict = field(default_factory=dict)

    @property
    def engines_dir(self) -> Path:
        return self.path / ENGINES_DIRNAME

    @property
    def format_version(self) -> int:
        return self.manifest["format_version"]

    @property
    def metaedge_version(self) -> str:
        return self.manifest["metaedge_version"]

    @classmethod
    def load(cls, path: "str | Path | Bundle", *, verify: bool = True) -> "Bundle":
        """Read and check ``path/manifest.json``; with ``verify`` (default) also the ONNX files' sha256."""
        if isinstance(path, Bundle):
            return path
        path = Path(path)
        if not path.is_dir():
            _fail(path, "no such directory" if not path.exists() else "not a directory")
        manifest_path = path / MANIFEST_NAME
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            _fail(path, f"{MANIFEST_NAME} is missing (export one with `metaedge export`)")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            _fail(path, f"{MANIFEST_NAME} is unreadable or not JSON: {exc}")
        spec = validate_manifest(manifest, path)
        files = {}
        for key in ("model", "fp16_model"):
            entry = manifest.get(key)
            if entry is None:
                continue
            file = path / entry["file"]
            if not file.is_file():
                _fail(path, f"{entry['file']} is missing (listed in the manifest as '{key}')")
            if verify:
                actual = sha256_file(file)
                if actual != entry["sha256"]:
                    _fail(path, f"{entry['file']} was modified after export: its sha256 is {actual}, the manifest "
                                f"says {entry['sha256']}. Re-export the bundle; never edit it in place.")
            files[key] = file
        return cls(path=path, manifest=manifest, spec=spec, onnx_path=files["model"],
                   onnx_sha256=manifest["model"]["sha256"], fp16_onnx_path=files.get("fp16_model"),
                   fp16_onnx_sha256=(manifest.get("fp16_model") or {}).get("sha256"))

    def summary(self) -> dict:
        """A flat, printable view for `metaedge info --bundle`."""
        spec, pre = self.spec, self.spec.preprocess
        model = self.manifest["model"]
        out = {
            "path": str(self.path),
            "format": f"{self.format_version} (metaedge {self.metaedge_version})",
            "backbone": spec.backbone,
            "input": f"{spec.input_name} [batch, {', '.join(map(str, spec.input_shape))}] float32 NCHW",
            "preprocess": (f"resize {pre.resize} to {pre.size[0]}x{pre.size[1]}, {pre.color}"
                           f"{', inverted' if pre.invert else ''}, mean {list(pre.mean)}, std {list(pre.std)}"),
            "embedding": f"{spec.output_name} [batch, {spec.embedding_dim}], metric {spec.metric}",
            "onnx": f"{model['file']} opset {model['opset']}, {model['bytes'] / 2**20:.1f} MiB, "
                    f"sha256 {self.onnx_sha256[:16]}...",
            "fp16 onnx": (f"{self.manifest['fp16_model']['file']}" if self.fp16_onnx_path else "no"),
        }
        parity = (self.manifest.get("verification") or {}).get("fp32")
        if isinstance(parity, dict) and "max_abs" in parity:
            cosine = parity.get("min_cosine", float("nan"))
            out["parity fp32"] = f"max abs {parity['max_abs']:.2e}, min cosine {cosine:.6f}"
        return out

    def engines(self) -> list[dict]:
        from metaedge.runtime.engine_cache import list_engines
        return list_engines(self.engines_dir)
