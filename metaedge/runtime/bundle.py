"""A bundle: the self-describing directory that carries a trained backbone to a device (DESIGN §6).

::

    bundle/
      manifest.json      what the device needs: ModelSpec (input, every pre-processing step, embedding dim,
                         metric), the ONNX files with their sha256, verification numbers, metaedge version
      model.onnx         fp32, dynamic batch
      model.fp16.onnx    optional: fp16 weights and maths, fp32 I/O (TensorRT 11 builds fp16 from it)
      engines/           TensorRT plans built on the device (see engine_cache.py)

``Bundle.load`` checks the manifest's schema and version, that the ONNX files are byte-for-byte what was
exported (sha256), that the ONNX model's declared input and output match the manifest, and the manifest's
``fingerprint``: a digest of everything that decides what an embedding means - the ONNX files' sha256 and
every field of ``spec`` (input, every pre-processing step, embedding dimension, metric) but its informative
``extra`` - with a short digest per field, so an edited manifest is refused with a message naming the field
(an integrity check against accidents and edits, not a signature). Galleries record the fingerprint and refuse
to load against another bundle.

Bundles exported before the fingerprint existed (metaedge 0.1) have none: their fingerprint is computed when
they are opened (edits made to them cannot be detected; re-export to record one), and galleries of that time,
which recorded the ONNX sha256, stay usable - see ``Gallery.check_compatible(legacy_fingerprints=...)``.
No torch here.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaedge.runtime.fileio import UnreadableFileError, atomic_write_json, read_json, sha256_file
from metaedge.runtime.spec import ModelSpec, SpecError

BUNDLE_FORMAT = "metaedge-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENGINES_DIRNAME = "engines"
ONNX_NAME = "model.onnx"
FP16_ONNX_NAME = "model.fp16.onnx"
BATCH_DIM = "batch"
FINGERPRINT_VERSION = 1
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_ONNX_BYTES = 1 << 31  # protobuf's own limit for one message


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


def _leaves(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key in sorted(value):
            _leaves(value[key], f"{prefix}.{key}", out)
    else:
        out[prefix] = value


def fingerprint_fields(manifest: dict) -> dict[str, Any]:
    """The manifest fields the fingerprint covers, flattened to ``{"spec.preprocess.mean": [..], ...}``: every
    field of ``spec`` except ``spec.extra`` (informative), and of each ONNX file's entry its file, sha256,
    precision, input and output."""
    out: dict[str, Any] = {}
    spec = {k: v for k, v in (manifest.get("spec") or {}).items() if k != "extra"}
    _leaves(spec, "spec", out)
    for key in ("model", "fp16_model"):
        entry = manifest.get(key)
        if isinstance(entry, dict):
            _leaves({k: entry.get(k) for k in ("file", "sha256", "precision", "input", "output")}, key, out)
    return out


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def compute_fingerprint(manifest: dict) -> dict:
    """The ``fingerprint`` object of a manifest: ``{"version", "sha256", "fields": {path: digest}}``."""
    fields = fingerprint_fields(manifest)
    digest = hashlib.sha256(_canonical({"version": FINGERPRINT_VERSION, "fields": fields})).hexdigest()
    return {"version": FINGERPRINT_VERSION, "sha256": digest,
            "fields": {k: hashlib.sha256(_canonical(v)).hexdigest()[:16] for k, v in fields.items()}}


def _edited_fields(stored: dict, actual: dict) -> list[tuple[str, str]]:
    """``[(field, " (added)" | " (removed)" | "")]``; a whole object added or removed is named once."""
    def whole(prefix: str, present: dict, absent: dict) -> bool:
        return not any(k == prefix or k.startswith(prefix + ".") for k in absent) and \
            all(k not in absent for k in present if k == prefix or k.startswith(prefix + "."))
    out: list[tuple[str, str]] = []
    for key in sorted(set(stored) | set(actual)):
        if stored.get(key) == actual.get(key):
            continue
        if key in stored and key in actual:
            out.append((key, ""))
            continue
        present, absent, how = (stored, actual, " (removed)") if key in stored else (actual, stored, " (added)")
        parts = key.split(".")
        prefix = next(".".join(parts[:n]) for n in range(1, len(parts) + 1) if whole(".".join(parts[:n]), present,
                                                                                        absent))
        if (prefix, how) not in out:
            out.append((prefix, how))
    return out


def check_fingerprint(manifest: dict, where: Path | str) -> str:
    """The bundle's fingerprint: the recorded one, verified (an edited field is a BundleError naming it), or -
    for bundles exported before it existed - computed now."""
    where = Path(where)
    actual = compute_fingerprint(manifest)
    recorded = manifest.get("fingerprint")
    if recorded is None:
        return actual["sha256"]
    if (not isinstance(recorded, dict) or recorded.get("version") != FINGERPRINT_VERSION
            or not isinstance(recorded.get("fields"), dict) or not _is_sha256(recorded.get("sha256"))):
        _fail(where, f"manifest field 'fingerprint': expected {{'version': {FINGERPRINT_VERSION}, 'sha256', "
                     f"'fields'}} as export writes it, got {str(recorded)[:120]}")
    stored = recorded["fields"]
    edited = _edited_fields(stored, actual["fields"])
    if edited:
        names = ", ".join(f"'{k}'{how}" for k, how in edited[:8])
        _fail(where, f"manifest field{'s' if len(edited) > 1 else ''} {names}{' ...' if len(edited) > 8 else ''} "
                     f"changed after export: the manifest no longer matches the bundle's fingerprint, so embeddings "
                     f"would not mean what the galleries made with it expect. Re-export the bundle; never edit it "
                     f"in place.")
    if recorded["sha256"] != actual["sha256"]:
        _fail(where, "manifest field 'fingerprint.sha256' was edited (it does not match the fields it covers); "
                     "re-export the bundle")
    return actual["sha256"]


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
    """Validate, record the fingerprint (``manifest["fingerprint"]``), then write ``manifest.json`` atomically."""
    bundle_dir = Path(bundle_dir)
    validate_manifest(manifest, bundle_dir)
    manifest["fingerprint"] = compute_fingerprint(manifest)
    path = bundle_dir / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


def _check_onnx_io(where: Path, key: str, file: Path, spec: ModelSpec) -> None:
    """The ONNX model must declare the input and output the manifest describes (a manifest claiming another input
    size is refused here, before anything is sized from it)."""
    from metaedge.runtime.onnx_graph import FLOAT, OnnxFormatError, graph_io
    try:
        inputs, outputs = graph_io(file, MAX_ONNX_BYTES)
    except OnnxFormatError as exc:
        _fail(where, f"{file.name} ('{key}') is not a readable ONNX model: {exc}")
    by_name = {d.name: d for d in inputs}
    decl = by_name.get(spec.input_name)
    if decl is None:
        _fail(where, f"manifest field 'spec.input_name': {file.name} has no input {spec.input_name!r} (its inputs: "
                     f"{sorted(by_name)[:5]})")
    want = tuple(spec.input_shape)
    dims = tuple(decl.shape[1:])
    if (len(decl.shape) != 4 or any(isinstance(d, int) and d != w for d, w in zip(dims, want))
            or decl.elem_type != FLOAT):
        _fail(where, f"manifest field 'spec.preprocess' (input [batch, {', '.join(map(str, want))}] float32) "
                     f"does not match {file.name}, which takes {spec.input_name!r} as "
                     f"{list(decl.shape)} of element type {decl.elem_type}")
    out = {d.name: d for d in outputs}.get(spec.output_name)
    if out is None:
        _fail(where, f"manifest field 'spec.output_name': {file.name} has no output {spec.output_name!r}")
    if len(out.shape) != 2 or (isinstance(out.shape[1], int) and out.shape[1] != spec.embedding_dim):
        _fail(where, f"manifest field 'spec.embedding_dim' ({spec.embedding_dim}) does not match {file.name}, whose "
                     f"output {spec.output_name!r} is {list(out.shape)}")


@dataclass
class Bundle:
    """A loaded, verified bundle. ``fingerprint`` identifies what its embeddings mean (network bytes and every
    manifest field that changes them); ``fingerprint_recorded`` is False for bundles exported before metaedge
    recorded one (then it was computed at open)."""
    path: Path
    manifest: dict
    spec: ModelSpec
    onnx_path: Path
    onnx_sha256: str
    fingerprint: str = ""
    fingerprint_recorded: bool = True
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
            manifest = read_json(manifest_path, "bundle manifest", MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            _fail(path, f"{MANIFEST_NAME} is missing (export one with `metaedge export`)")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            _fail(path, f"{MANIFEST_NAME} is unreadable or not JSON: {exc}")
        spec = validate_manifest(manifest, path)
        fingerprint = check_fingerprint(manifest, path)
        files = {}
        for key in ("model", "fp16_model"):
            entry = manifest.get(key)
            if entry is None:
                continue
            file = path / entry["file"]
            if not file.exists():
                _fail(path, f"{entry['file']} is missing (listed in the manifest as '{key}')")
            try:
                if verify:
                    actual = sha256_file(file, MAX_ONNX_BYTES, "ONNX model")
                    if actual != entry["sha256"]:
                        _fail(path, f"{entry['file']} was modified after export: its sha256 is {actual}, the "
                                    f"manifest says {entry['sha256']}. Re-export the bundle; never edit it in place.")
                _check_onnx_io(path, key, file, spec)
            except (UnreadableFileError, OSError) as exc:
                _fail(path, f"{entry['file']}: {exc}")
            files[key] = file
        return cls(path=path, manifest=manifest, spec=spec, onnx_path=files["model"],
                   onnx_sha256=manifest["model"]["sha256"], fp16_onnx_path=files.get("fp16_model"),
                   fp16_onnx_sha256=(manifest.get("fp16_model") or {}).get("sha256"), fingerprint=fingerprint,
                   fingerprint_recorded="fingerprint" in manifest)

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
            "fingerprint": f"{self.fingerprint[:16]}..." + ("" if self.fingerprint_recorded else
                                                             " (computed at open: exported before metaedge recorded "
                                                             "one, so manifest edits cannot be detected; re-export)"),
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
