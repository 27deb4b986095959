"""ONNX Runtime / torch backends, backend selection (with fakes for what this machine lacks), and the device
side working with torch blocked."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from metaedge.runtime import backends  # noqa: E402
from metaedge.runtime.backends import BackendUnavailable, open_backend, probe_backends  # noqa: E402
from metaedge.runtime.backends.base import Backend, InputSpec  # noqa: E402
from metaedge.runtime.backends.onnxruntime import OnnxRuntimeBackend, usable_cores  # noqa: E402
from metaedge.runtime.backends.torch import TorchBackend  # noqa: E402
from metaedge.runtime.bundle import Bundle  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _x(n, rng=None):
    rng = rng or np.random.default_rng(0)
    return rng.standard_normal((n, 1, 12, 12)).astype(np.float32)


def _torch(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_ort_cpu_matches_torch_and_reports_threads(tiny_bundle_dir, tiny_model):
    with OnnxRuntimeBackend(tiny_bundle_dir, intra_op_threads=1) as b:
        assert b.name == "ort-cpu" and b.output_device == "cpu"
        assert b.input_spec == InputSpec("images", (1, 12, 12)) and b.embedding_dim == 8
        x = _x(6)
        np.testing.assert_allclose(b.embed(x), _torch(tiny_model, x), atol=1e-5)
        assert "1 intra-op threads" in b.describe() and "CPU" in b.describe()
        b.warmup(3)
    default = OnnxRuntimeBackend(tiny_bundle_dir)
    assert f"{usable_cores()} intra-op threads" in default.describe()


def test_ort_input_coercion_and_errors(tiny_bundle_dir, tiny_model):
    b = OnnxRuntimeBackend(tiny_bundle_dir)
    x = _x(4)
    ref = _torch(tiny_model, x)
    np.testing.assert_allclose(b.embed(x.astype(np.float64)), ref, atol=1e-5)          # converted
    np.testing.assert_allclose(b.embed(np.asfortranarray(x)), ref, atol=1e-5)          # made contiguous
    np.testing.assert_allclose(b.embed(x[::-1][::-1]), ref, atol=1e-5)
    np.testing.assert_allclose(b.embed(x[0]), ref[:1], atol=1e-5)                      # one CHW image
    assert b.embed(np.zeros((0, 1, 12, 12), np.float32)).shape == (0, 8)
    with pytest.raises(ValueError, match=r"expected \[b, 1, 12, 12\].*\[4, 12, 12, 1\]"):
        b.embed(x.transpose(0, 2, 3, 1))
    with pytest.raises(TypeError, match="float32 values.*uint8"):
        b.embed(x.astype(np.uint8))

    class FakeCuda:
        __cuda_array_interface__ = {"shape": (1, 1, 12, 12), "typestr": "<f4", "data": (0, False), "version": 3}
    with pytest.raises(TypeError, match="host"):
        b.embed(FakeCuda())
    b.close()
    b.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        b.embed(x)


def test_ort_cuda_unavailable_here_says_why(tiny_bundle_dir):
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    with pytest.raises(BackendUnavailable, match="no CUDA execution provider.*onnxruntime-gpu"):
        OnnxRuntimeBackend(tiny_bundle_dir, device="cuda")


def test_torch_backend(tiny_bundle_dir, tiny_model):
    with TorchBackend(tiny_model) as b:
        x = _x(3)
        np.testing.assert_allclose(b.embed(x), _torch(tiny_model, x), atol=1e-6)
        assert b.describe().startswith("torch: torch ")
    with pytest.raises(BackendUnavailable, match="no torch model"):
        TorchBackend(None)
    with pytest.raises(TypeError, match="no .spec"):
        TorchBackend(torch.nn.Linear(1, 1))


def test_auto_picks_the_best_available_and_logs_why(tiny_bundle_dir, monkeypatch):
    """On this machine: no TensorRT, no CUDA provider -> ORT CPU, with the reasons recorded."""
    b = open_backend(tiny_bundle_dir)
    names = [n for n, _ in b.selection_log]
    assert b.name == "ort-cpu" and names == ["tensorrt", "ort-cuda", "ort-cpu"]
    assert all(why.startswith("skipped: ") for _, why in b.selection_log[:2])
    assert b.selection_log[2][1].startswith("selected: ort-cpu: onnxruntime")


class _Fake(Backend):
    def __init__(self, name):
        self.name = name

    @property
    def input_spec(self):
        return InputSpec("images", (1, 12, 12))

    @property
    def embedding_dim(self):
        return 8

    def embed(self, batch):
        return np.zeros((len(batch), 8), np.float32)


def _fake_openers(monkeypatch, working):
    def make(name):
        def opener(bundle, opts):
            if name not in working:
                raise BackendUnavailable(f"{name} is not here")
            return _Fake(name)
        return opener
    monkeypatch.setattr(backends, "_OPENERS", {n: make(n) for n in backends.BACKENDS})


@pytest.mark.parametrize("working,expected", [
    ({"tensorrt", "ort-cuda", "ort-cpu", "torch"}, "tensorrt"),
    ({"ort-cuda", "ort-cpu", "torch"}, "ort-cuda"),
    ({"ort-cpu", "torch"}, "ort-cpu"),
    ({"torch"}, "torch"),
])
def test_auto_order_is_tensorrt_ortcuda_ortcpu_torch(tiny_bundle_dir, monkeypatch, working, expected):
    _fake_openers(monkeypatch, working)
    b = open_backend(tiny_bundle_dir)
    assert b.name == expected
    skipped = [n for n, why in b.selection_log if why.startswith("skipped")]
    assert skipped == list(backends.BACKENDS[:backends.BACKENDS.index(expected)])
    assert all(f"{n} is not here" in why for n, why in b.selection_log if n in skipped)


def test_nothing_available_lists_every_reason(tiny_bundle_dir, monkeypatch):
    _fake_openers(monkeypatch, set())
    with pytest.raises(BackendUnavailable) as info:
        open_backend(tiny_bundle_dir)
    for name in backends.BACKENDS:
        assert f"{name}: skipped: {name} is not here" in str(info.value)


def test_named_backend_is_the_only_one_tried(tiny_bundle_dir, monkeypatch):
    _fake_openers(monkeypatch, {"ort-cpu"})
    assert open_backend(tiny_bundle_dir, "ort-cpu").name == "ort-cpu"
    with pytest.raises(BackendUnavailable, match="backend 'tensorrt' cannot run.*tensorrt is not here"):
        open_backend(tiny_bundle_dir, "tensorrt")
    with pytest.raises(ValueError, match="expected 'auto' or one of"):
        open_backend(tiny_bundle_dir, "openvino")


def test_real_openers_without_packages_say_what_is_missing(tiny_bundle_dir, monkeypatch, tiny_model):
    monkeypatch.setattr(backends, "available", lambda name: False)
    b = Bundle.load(tiny_bundle_dir)
    for name, words in [("tensorrt", "tensorrt package is not installed"),
                        ("ort-cpu", "onnxruntime package is not installed"),
                        ("torch", "torch is not installed")]:
        with pytest.raises(BackendUnavailable, match=words):
            backends._OPENERS[name](b, {"model": tiny_model})


def test_torch_is_last_and_needs_the_model(tiny_bundle_dir, tiny_model):
    b = open_backend(tiny_bundle_dir, "torch", model=tiny_model)
    assert b.name == "torch" and b.selection_log == [("torch", "selected: " + b.describe())]
    with pytest.raises(BackendUnavailable, match="no torch model given"):
        open_backend(tiny_bundle_dir, "torch")


def test_probe_backends_reports_versions():
    import onnxruntime
    probe = probe_backends()
    assert set(probe) == set(backends.BACKENDS)
    assert probe["ort-cpu"] == f"yes (onnxruntime {onnxruntime.__version__})"
    from importlib.metadata import version
    assert probe["torch"].startswith(f"yes (torch {version('torch')}")
    assert probe["tensorrt"].startswith("yes (TensorRT ") or probe["tensorrt"].startswith("no (")


def test_backend_modules_import_nothing_heavy_at_import_time():
    code = textwrap.dedent("""
        import sys
        import metaedge.runtime.backends, metaedge.runtime.backends.onnxruntime
        import metaedge.runtime.backends.tensorrt, metaedge.runtime.backends.torch
        import metaedge.runtime.bundle, metaedge.runtime.engine_cache, metaedge.runtime.tensorrt_engine
        heavy = sorted(m for m in ("torch", "onnxruntime", "tensorrt", "onnx") if m in sys.modules)
        print(heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_device_side_runs_with_torch_blocked(tiny_bundle_dir, tiny_model):
    """The runtime layer must import and embed with no torch: block it and run a bundle on ORT."""
    x = _x(2)
    expected = _torch(tiny_model, x)
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None          # any `import torch` now raises ImportError
        import numpy as np
        import metaedge
        from metaedge.runtime.bundle import Bundle
        from metaedge.runtime.backends import open_backend
        from metaedge.runtime.backends.onnxruntime import OnnxRuntimeBackend
        bundle = Bundle.load({str(tiny_bundle_dir)!r})
        backend = open_backend(bundle)
        assert backend.name == "ort-cpu", backend.selection_log
        x = np.frombuffer(bytes.fromhex({x.tobytes().hex()!r}), np.float32).reshape(2, 1, 12, 12)
        np.save(sys.stdout.buffer, backend.embed(x))
        try:
            open_backend(bundle, "torch", model=object())
        except Exception as exc:
            sys.stderr.write("torch backend: " + str(exc))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, check=True)
    import io
    got = np.load(io.BytesIO(out.stdout))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert b"torch is not installed" in out.stderr or b"import of torch halted" in out.stderr


def _fake_ort(available, active=None):
    import types
    seen = {}

    class Session:
        def __init__(self, path, sess_options=None, providers=None):
            seen["providers"], seen["options"] = providers, sess_options

        def run(self, names, feeds):  # pragma: no cover - not called here
            raise AssertionError

        def get_providers(self):
            return active if active is not None else [p if isinstance(p, str) else p[0] for p in seen["providers"]]

    ort = types.SimpleNamespace(
        __version__="9.9.9", get_available_providers=lambda: list(available), InferenceSession=Session,
        SessionOptions=lambda: types.SimpleNamespace(),
        GraphOptimizationLevel=types.SimpleNamespace(ORT_ENABLE_ALL="all"),
        ExecutionMode=types.SimpleNamespace(ORT_SEQUENTIAL="seq"))
    return ort, seen


def test_ort_cuda_provider_list_with_fake_onnxruntime(bundle_copy, monkeypatch):
    tiny_bundle_dir = bundle_copy  # the TensorRT provider creates engines/ort-trt inside the bundle
    from metaedge.runtime.backends import onnxruntime as ort_backend
    all_eps = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    fake, seen = _fake_ort(all_eps)
    monkeypatch.setattr(ort_backend, "require", lambda module, feature: fake)
    b = OnnxRuntimeBackend(tiny_bundle_dir, device="cuda", tensorrt_ep=True, fp16=True)
    names = [p if isinstance(p, str) else p[0] for p in seen["providers"]]
    assert names == all_eps and b.name == "ort-cuda"
    trt_opts = seen["providers"][0][1]
    assert trt_opts["trt_engine_cache_enable"] and trt_opts["trt_fp16_enable"]
    assert trt_opts["trt_engine_cache_path"].endswith("engines/ort-trt")
    assert "Tensorrt, CUDA, CPU" in b.describe()
    OnnxRuntimeBackend(tiny_bundle_dir, device="cuda", tensorrt_ep=False)
    assert [p if isinstance(p, str) else p[0] for p in seen["providers"]] == all_eps[1:]
    # onnxruntime falls back to the CPU silently when the CUDA provider cannot load: we say so instead
    fake, _ = _fake_ort(all_eps, active=["CPUExecutionProvider"])
    monkeypatch.setattr(ort_backend, "require", lambda module, feature: fake)
    with pytest.raises(BackendUnavailable, match="CUDA execution provider failed to initialise"):
        OnnxRuntimeBackend(tiny_bundle_dir, device="cuda")
