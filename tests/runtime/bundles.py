"""A real bundle in a second, without torch: a tiny embedding network written with ``onnx.helper`` (resize-free
linear projection of the pre-processed pixels), its manifest written by ``metaedge.runtime.bundle.write_manifest``
exactly as an export writes it. ONNX Runtime runs it like any exported bundle; the CLI and the multi-process
tests use it where a subprocess needs a bundle directory."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from metaedge.runtime.bundle import BUNDLE_FORMAT, FORMAT_VERSION, ONNX_NAME, model_entry, write_manifest
from metaedge.runtime.spec import ModelSpec, PreprocessSpec

SIZE = 16
DIM = 32


def tiny_spec(size: int = SIZE, dim: int = DIM) -> ModelSpec:
    return ModelSpec(backbone="linear-test", embedding_dim=dim, metric="cosine",
                     preprocess=PreprocessSpec(size=(size, size), color="gray", mean=(0.5,), std=(0.25,))).validate()


def make_bundle(directory: str | Path, size: int = SIZE, dim: int = DIM, seed: int = 0,
                onnx_input_size: int | None = None) -> Path:
    """A bundle directory whose network projects [b, 1, size, size] to [b, dim] (``onnx_input_size`` makes the
    ONNX model declare another input size than the manifest, for the mismatch test)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = tiny_spec(size, dim)
    n = onnx_input_size or size
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((n * n, dim)) / n).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["flat"]), helper.make_node("MatMul", ["flat", "W"], ["embeddings"])],
        "linear", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, n, n])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = directory / ONNX_NAME
    onnx.save(model, str(path))
    data = path.read_bytes()
    manifest = {"format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, "metaedge_version": "0.1.0",
                "spec": spec.to_dict(),
                "model": model_entry(ONNX_NAME, hashlib.sha256(data).hexdigest(), len(data), opset=18, ir_version=9,
                                     precision="fp32", spec=spec)}
    write_manifest(directory, manifest)
    return directory
