"""Training checkpoints (DESIGN section 6): ``model.safetensors`` + ``model.json``, no pickle anywhere.

A checkpoint directory holds
- ``model.safetensors``: the model's state dict (weights and BN buffers, float32 as trained);
- ``model.json``: ``format``, ``schema_version``, metaedge version, ``spec`` (``ModelSpec.to_dict()``), the
  backbone name and options (enough to rebuild the architecture), the training config, metrics, and the
  sha256 + size of ``model.safetensors``;
- optionally ``resume.safetensors`` + ``resume.json``: what an exact resume needs (optimizer state,
  scheduler, RNG states, episode counter, ...). Any nested dict/list of tensors and JSON scalars is stored:
  tensors go into the safetensors file under their path, the structure into JSON (tuples, non-string keys
  and non-finite floats are tagged so they round-trip exactly).

Every file is written atomically (temp file in the same directory, fsync, rename, fsync of the directory);
``model.json`` is written last, so a crash leaves either the old checkpoint or a checksum mismatch that
``load_checkpoint`` reports, never a silently mixed one.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from typing import Any

import torch

FORMAT = "metaedge-checkpoint"
SCHEMA_VERSION = 1
MODEL_WEIGHTS, MODEL_JSON = "model.safetensors", "model.json"
RESUME_TENSORS, RESUME_JSON = "resume.safetensors", "resume.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, from an unknown schema, or does not match its model."""


# Atomic, fsynced writes and checksums: the same helpers as bundles and galleries.
from metaedge.runtime.fileio import (atomic_write_bytes, atomic_write_json, read_file, read_json,  # noqa: E402,F401
                                     sha256_file)

MAX_WEIGHTS_BYTES = 64 * 1024 ** 3  # bounds a read when the recorded size is missing


# ------------------------------------------------------------------------- nested state <-> JSON + tensors
def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "_"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{path}.{k}" if path else k, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, f"{path}.k{i}", tensors), _encode(v, f"{path}.{i}", tensors)]
                              for i, (k, v) in enumerate(obj.items())]}
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalars
        return _encode(obj.item(), path, tensors)
    raise CheckpointError(f"cannot store a {type(obj).__name__} at {path!r} (only tensors, numbers, strings, "
                          f"lists, tuples and dicts; never pickle)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            try:
                return tensors[obj["__tensor__"]]
            except KeyError:
                raise CheckpointError(f"resume state refers to a missing tensor {obj['__tensor__']!r}") from None
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def encode_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state into a JSON-able skeleton and a flat name -> tensor dict."""
    tensors: dict[str, torch.Tensor] = {}
    return _encode(state, "", tensors), tensors


def decode_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    return _decode(skeleton, tensors)


# ------------------------------------------------------------------------------------------- save/load
def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save
    # safetensors refuses tensors that share memory; clone only those (keeps the common case copy-free)
    seen: dict[int, str] = {}
    out = {}
    for k, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen[ptr] = k
        out[k] = t
    return save(out, metadata={"format": FORMAT, "schema_version": str(SCHEMA_VERSION)})


def _json_safe(obj: Any, what: str) -> Any:
    skeleton, tensors = encode_state(obj)
    if tensors:
        raise CheckpointError(f"{what}: expected JSON values (numbers, strings, lists, dicts), found tensors "
                              f"at {sorted(tensors)[:3]}")
    try:
        json.dumps(skeleton, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{what}: not JSON-serialisable: {exc}") from None
    return skeleton


def save_checkpoint(model, directory: str, training: dict | None = None, metrics: dict | None = None,
                    optimizer_state: dict | None = None, resume_state: dict | None = None) -> str:
    """Write ``model`` (an ``EmbeddingModel``) to ``directory``; returns the path of ``model.json``.

    ``training``: the training config; ``metrics``: e.g. validation accuracy (JSON values).
    ``optimizer_state`` (``optimizer.state_dict()``) and ``resume_state`` (scheduler, RNG states, episode
    counter, ... any nested tensors/JSON values) go to ``resume.safetensors`` + ``resume.json``; when both are
    None, an existing resume state in the directory is removed, so it can never describe other weights.
    """
    from metaedge import __version__
    os.makedirs(directory, exist_ok=True)
    weights_path = os.path.join(directory, MODEL_WEIGHTS)
    atomic_write_bytes(weights_path, _safetensors_bytes(dict(model.state_dict())))
    files = {MODEL_WEIGHTS: {"sha256": sha256_file(weights_path), "bytes": os.path.getsize(weights_path)}}
    resume_json = os.path.join(directory, RESUME_JSON)
    if optimizer_state is not None or resume_state is not None:
        skeleton, tensors = encode_state({"optimizer": optimizer_state, "state": resume_state})
        resume_path = os.path.join(directory, RESUME_TENSORS)
        atomic_write_bytes(resume_path, _safetensors_bytes(tensors))
        atomic_write_json(resume_json, {
            "format": FORMAT + "-resume", "schema_version": SCHEMA_VERSION,
            "model_sha256": files[MODEL_WEIGHTS]["sha256"],
            "files": {RESUME_TENSORS: {"sha256": sha256_file(resume_path), "bytes": os.path.getsize(resume_path)}},
            "skeleton": skeleton})
    else:
        for stale in (resume_json, os.path.join(directory, RESUME_TENSORS)):
            if os.path.exists(stale):
                os.unlink(stale)
    meta = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "metaedge_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "spec": model.spec.to_dict(),
        "backbone": {"name": model.backbone_name, "options": _json_safe(model.backbone_options, "backbone options")},
        "training": _json_safe(training or {}, "training"),
        "metrics": _json_safe(metrics or {}, "metrics"),
        "files": files,
    }
    json_path = os.path.join(directory, MODEL_JSON)
    atomic_write_json(json_path, meta)
    return json_path


def _checkpoint_dir(path: str) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        return path
    if os.path.basename(path) in (MODEL_JSON, MODEL_WEIGHTS):
        return os.path.dirname(path) or "."
    raise CheckpointError(f"checkpoint not found: {path!r} (expected a directory with {MODEL_JSON} and "
                          f"{MODEL_WEIGHTS}, or one of those files)")


def find_checkpoint(path: str) -> str:
    """The checkpoint directory that ``path`` names: a checkpoint itself, one of its files, or a run directory
    (its ``best/``, else its ``last/``)."""
    path = os.fspath(path)
    for candidate in (path, os.path.join(path, "best"), os.path.join(path, "last")):
        if os.path.isfile(os.path.join(candidate, MODEL_JSON)):
            return candidate
    if os.path.basename(path) in (MODEL_JSON, MODEL_WEIGHTS) and os.path.isfile(path):
        return os.path.dirname(path) or "."
    raise CheckpointError(f"{path!r}: no {MODEL_JSON} here nor in best/ or last/ (expected a checkpoint or a run "
                          f"directory)")


def _read_json(path: str, what: str) -> dict:
    if not os.path.lexists(path):
        raise CheckpointError(f"{what}: {path} is missing")
    try:
        data = read_json(path, f"{what} file")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{what}: {path} is unreadable or not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what}: {path} is not a JSON object")
    return data


def _verified_bytes(directory: str, name: str, entry: dict, what: str) -> bytes:
    path = os.path.join(directory, name)
    if not os.path.lexists(path):
        raise CheckpointError(f"{what}: {path} is missing")
    size = entry.get("bytes") if isinstance(entry, dict) else None
    bound = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else MAX_WEIGHTS_BYTES
    try:
        data = read_file(path, min(bound, MAX_WEIGHTS_BYTES), f"{what} file")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{what}: {path}: {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.get("sha256"):
        raise CheckpointError(f"{what}: {path} is corrupt or was replaced: sha256 {digest} does not match the "
                              f"recorded {entry.get('sha256')}")
    return data


def read_checkpoint_meta(path: str) -> dict:
    """``model.json`` of a checkpoint, its format and schema version checked."""
    directory = _checkpoint_dir(path)
    meta = _read_json(os.path.join(directory, MODEL_JSON), "checkpoint")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {directory} is not a metaedge checkpoint (format "
                              f"{meta.get('format')!r}, expected {FORMAT!r})")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CheckpointError(f"checkpoint: schema version {version!r} in {directory} is not supported by this "
                              f"metaedge (which reads version {SCHEMA_VERSION}); use a matching metaedge release")
    return meta


def load_checkpoint(path: str, map_location: str | torch.device = "cpu"):
    """Rebuild the ``EmbeddingModel`` saved in a checkpoint directory (or its model.json/model.safetensors).

    Verifies the format, schema version and sha256; the returned model is in eval mode and carries the
    parsed ``model.json`` as ``model.checkpoint_meta``.
    """
    from safetensors.torch import load as load_bytes

    from metaedge.runtime.spec import ModelSpec
    from metaedge.train.backbones import build_backbone
    directory = _checkpoint_dir(path)
    meta = read_checkpoint_meta(directory)
    data = _verified_bytes(directory, MODEL_WEIGHTS, meta.get("files", {}).get(MODEL_WEIGHTS, {}), "checkpoint")
    try:
        state = load_bytes(data)
    except Exception as exc:
        raise CheckpointError(f"checkpoint: cannot read {MODEL_WEIGHTS} in {directory}: {exc}") from None
    backbone = meta.get("backbone") or {}
    model = build_backbone(backbone.get("name", ""), **decode_state(backbone.get("options", {}), {}))
    spec = ModelSpec.from_dict(meta["spec"])
    if spec.embedding_dim != model.spec.embedding_dim or spec.input_shape != model.spec.input_shape:
        raise CheckpointError(f"checkpoint: the rebuilt {backbone.get('name')!r} gives input {model.spec.input_shape}"
                              f" / dim {model.spec.embedding_dim}, the checkpoint says {spec.input_shape} / "
                              f"{spec.embedding_dim}")
    model.spec = spec
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint: weights in {directory} do not fit the architecture: {exc}") from None
    model.checkpoint_meta = meta
    model.checkpoint_path = directory
    return model.to(map_location).eval()


def load_resume_state(path: str) -> tuple[dict | None, dict | None]:
    """``(optimizer_state, resume_state)`` saved with a checkpoint; verified against its checksums and against
    the model weights it was saved with."""
    from safetensors.torch import load as load_bytes
    directory = _checkpoint_dir(path)
    meta = read_checkpoint_meta(directory)
    info = _read_json(os.path.join(directory, RESUME_JSON), "resume state")
    if info.get("format") != FORMAT + "-resume" or info.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(f"resume state in {directory}: unsupported format/schema "
                              f"{info.get('format')!r}/{info.get('schema_version')!r}")
    if info.get("model_sha256") != meta["files"][MODEL_WEIGHTS]["sha256"]:
        raise CheckpointError(f"resume state in {directory} belongs to other weights than {MODEL_WEIGHTS}")
    data = _verified_bytes(directory, RESUME_TENSORS, info.get("files", {}).get(RESUME_TENSORS, {}), "resume state")
    state = decode_state(info["skeleton"], load_bytes(data))
    return state.get("optimizer"), state.get("state")


def has_resume_state(path: str) -> bool:
    try:
        directory = _checkpoint_dir(path)
    except CheckpointError:
        return False
    return os.path.isfile(os.path.join(directory, RESUME_JSON))
