"""The benchmark suites: each compares metaedge with its baselines in the same run and writes JSON + a table.

They ship with the package, so ``metaedge bench`` works from an installed wheel; in a source checkout
``python tools/bench/<suite>.py`` runs the same module. Each suite is a module of this package with a
``main(argv)`` that takes the JSON path flag named in :data:`SUITES` (one line per suite: adding a suite is
adding its module and its line). Modules here that are not suites: ``common`` (timing, thread pinning, tables),
``projection`` (a numpy stand-in network), ``compact`` (a section of ``kernels``) and ``compact_recall``
(needs Omniglot and a training run: run it by hand).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Suite", "SUITES"]


@dataclass(frozen=True)
class Suite:
    """A benchmark suite: the module ``metaedge.bench.<name>``, the flag that takes its JSON output path, its
    flag for fewer repetitions (or None), the optional packages it needs, whether it needs a CUDA GPU, and
    what it measures (shown by ``metaedge bench --list``)."""
    name: str
    json_flag: str
    quick_flag: str | None
    needs: tuple[str, ...]
    gpu: bool
    about: str


SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("kernels", "--json", "--quick", (), False, "native kernels vs numpy / faiss / torch (top-k, adapt, ...)"),
    Suite("preprocess", "--json", "--quick", ("cv2",), False, "camera-frame pre-processing vs OpenCV / torchvision"),
    Suite("gallery", "--json", "--quick", (), False, "the gallery store vs the old single-file format"),
    Suite("backbones", "--out", None, ("torch", "onnxruntime"), False, "backends vs a bare ONNX Runtime session"),
    Suite("sdk", "--json", None, ("torch", "onnxruntime"), False, "EdgeClassifier latency split, enroll, store"),
    Suite("train", "--out", None, ("torch", "easyfsl"), False, "training throughput vs easyfsl"),
    Suite("kernels_gpu", "--json", "--quick", ("torch",), True, "CUDA kernels vs torch on the GPU"),
    Suite("serve", "--json", "--quick", ("torch", "onnxruntime", "PIL", "fastapi", "uvicorn", "prometheus_client"),
          False, "metaedge serve under load on 127.0.0.1 vs in-process predict; 1 vs 2 workers"),
)}
