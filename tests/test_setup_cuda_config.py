"""The CUDA build configuration of setup.py: arch selection (env override, filtering by what nvcc supports),
the nvcc flags (SASS per arch + PTX for the newest, no fast-math), and METAEDGE_CUDA=auto|0|1."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NVCC13 = ["75", "80", "86", "87", "88", "89", "90", "100", "103", "110", "120", "121"]


@pytest.fixture
def setup_module(monkeypatch):
    spec = importlib.util.spec_from_file_location("metaedge_setup_under_test", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # guarded by __main__: defines functions, builds nothing
    monkeypatch.delenv("METAEDGE_CUDA_ARCHS", raising=False)
    monkeypatch.delenv("METAEDGE_CUDA", raising=False)
    return module


def test_default_archs_are_the_wanted_ones_that_nvcc_supports(setup_module, monkeypatch):
    monkeypatch.setattr(setup_module, "nvcc_supported_archs", lambda nvcc: NVCC13)
    assert setup_module.choose_cuda_archs("nvcc") == ["75", "80", "86", "87", "89", "90", "100", "110", "120"]
    # An older nvcc (CUDA 12.6 on JetPack 6): 72 kept, Thor/Blackwell archs dropped.
    monkeypatch.setattr(setup_module, "nvcc_supported_archs", lambda nvcc: ["72", "75", "80", "86", "87", "89", "90"])
    assert setup_module.choose_cuda_archs("nvcc") == ["72", "75", "80", "86", "87", "89", "90"]


def test_env_override_accepts_separators_and_dots(setup_module, monkeypatch):
    monkeypatch.setattr(setup_module, "nvcc_supported_archs", lambda nvcc: NVCC13)
    for value, want in [("90", ["90"]), ("8.7", ["87"]), ("80;90", ["80", "90"]), ("87, 110", ["87", "110"])]:
        monkeypatch.setenv("METAEDGE_CUDA_ARCHS", value)
        assert setup_module.choose_cuda_archs("nvcc") == want


def test_env_override_rejects_archs_nvcc_lacks(setup_module, monkeypatch):
    monkeypatch.setattr(setup_module, "nvcc_supported_archs", lambda nvcc: NVCC13)
    monkeypatch.setenv("METAEDGE_CUDA_ARCHS", "72;90")
    with pytest.raises(SystemExit, match="72"):
        setup_module.choose_cuda_archs("nvcc")


def test_unknown_nvcc_arch_list_falls_back_to_a_safe_default(setup_module, monkeypatch):
    monkeypatch.setattr(setup_module, "nvcc_supported_archs", lambda nvcc: [])
    archs = setup_module.choose_cuda_archs("nvcc")
    assert "87" in archs and "90" in archs


def test_nvcc_flags_embed_sass_per_arch_and_ptx_for_the_newest(setup_module):
    flags = setup_module.nvcc_flags({"archs": ["87", "90", "120"]})
    pairs = [flags[i + 1] for i, f in enumerate(flags) if f == "-gencode"]
    assert pairs == ["arch=compute_87,code=sm_87", "arch=compute_90,code=sm_90", "arch=compute_120,code=sm_120",
                     "arch=compute_120,code=compute_120"]
    assert "--use_fast_math" not in flags  # the GPU kernels must round like the CPU ones
    assert "-std=c++17" in flags


def test_cuda_modes(setup_module, monkeypatch):
    monkeypatch.setenv("METAEDGE_CUDA", "0")
    assert setup_module.cuda_config() == {"enabled": False, "reason": "METAEDGE_CUDA=0"}
    monkeypatch.setattr(setup_module, "find_nvcc", lambda: None)
    monkeypatch.setenv("METAEDGE_CUDA", "auto")
    cfg = setup_module.cuda_config()
    assert cfg["enabled"] is False and "nvcc not found" in cfg["reason"]
    monkeypatch.setenv("METAEDGE_CUDA", "1")
    with pytest.raises(SystemExit, match="nvcc was not found"):
        setup_module.cuda_config()
    monkeypatch.setenv("METAEDGE_CUDA", "yes")
    with pytest.raises(SystemExit, match="auto, 0 or 1"):
        setup_module.cuda_config()
