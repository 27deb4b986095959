"""Engine cache keys and lookup (docs/architecture.md section 3), without TensorRT."""
import json
import logging
from dataclasses import replace

import pytest

from metaedge.runtime.engine_cache import (EngineCacheError, EngineKey, ensure_engine, find_engine, list_engines,
                                           plan_path, sidecar_path, write_engine)

KEY = EngineKey(onnx_sha256="ab" * 32, tensorrt_version="10.3.0", cuda_version="12.6", gpu_name="Orin",
                compute_capability="8.7", precision="fp16", max_batch=32)


def test_key_round_trip_digest_and_name():
    assert EngineKey.from_dict(json.loads(json.dumps(KEY.to_dict()))) == KEY
    assert KEY.file_stem.startswith("fp16-b32-sm87-trt10.3.0-") and len(KEY.digest()) == 16
    stems = {replace(KEY, **{f: v}).file_stem for f, v in [
        ("onnx_sha256", "cd" * 32), ("tensorrt_version", "10.7.0"), ("cuda_version", "12.8"),
        ("gpu_name", "Thor"), ("compute_capability", "11.0"), ("precision", "fp32"), ("precision", "int8"), ("max_batch", 8),
        ("opt_batch", 4)]}
    assert len(stems | {KEY.file_stem}) == 10  # every field changes the file name


@pytest.mark.parametrize("field,value,words", [
    ("onnx_sha256", "xyz", "onnx_sha256"), ("tensorrt_version", "", "tensorrt_version"),
    ("gpu_name", None, "gpu_name"), ("precision", "int4", "precision"), ("max_batch", 0, "max_batch"),
    ("max_batch", True, "max_batch"), ("opt_batch", 33, "opt_batch"), ("opt_batch", 0, "opt_batch")])
def test_key_validation(field, value, words):
    with pytest.raises(EngineCacheError, match=words):
        replace(KEY, **{field: value})
    with pytest.raises(EngineCacheError, match="missing"):
        EngineKey.from_dict({"precision": "fp16"})


def test_differences_say_what_changed():
    other = replace(KEY, tensorrt_version="10.7.0", gpu_name="RTX 4090", compute_capability="8.9")
    reasons = KEY.differences(other)
    assert reasons == ["TensorRT version 10.7.0 (here: 10.3.0)", "GPU RTX 4090 (here: Orin)",
                       "compute capability 8.9 (here: 8.7)"]
    assert KEY.differences(KEY) == []


def test_hit_after_write(tmp_path):
    path = write_engine(tmp_path, KEY, b"PLAN-BYTES", build_seconds=1.0)
    assert path == plan_path(tmp_path, KEY) and path.read_bytes() == b"PLAN-BYTES"
    hit = find_engine(tmp_path, KEY)
    assert hit.path == path and hit.sidecar["key"] == KEY.to_dict() and hit.rebuild_reasons == []


@pytest.mark.parametrize("field,value,reason", [
    ("tensorrt_version", "10.7.0", "TensorRT version 10.7.0 (here: 10.3.0)"),
    ("cuda_version", "12.2", "CUDA version 12.2 (here: 12.6)"),
    ("gpu_name", "Xavier", "GPU Xavier (here: Orin)"),
    ("compute_capability", "7.2", "compute capability 7.2 (here: 8.7)"),
    ("onnx_sha256", "cd" * 32, "ONNX sha256 cdcdcdcdcdcd (here: abababababab)"),
])
def test_stale_or_foreign_engine_is_not_used_and_says_why(tmp_path, field, value, reason):
    foreign = replace(KEY, **{field: value})
    write_engine(tmp_path, foreign, b"OLD")
    lookup = find_engine(tmp_path, KEY)
    assert lookup.path is None
    assert len(lookup.rebuild_reasons) == 1 and reason in lookup.rebuild_reasons[0]
    assert foreign.file_stem in lookup.rebuild_reasons[0]


def test_other_precision_or_batch_is_a_different_engine_not_a_stale_one(tmp_path):
    write_engine(tmp_path, replace(KEY, precision="fp32"), b"A")
    write_engine(tmp_path, replace(KEY, max_batch=8), b"B")
    lookup = find_engine(tmp_path, KEY)
    assert lookup.path is None and lookup.rebuild_reasons == ["no fp16 engine with max batch 32 cached yet"]
    assert find_engine(tmp_path / "absent", KEY).rebuild_reasons == ["no engine cached yet"]


def test_damaged_or_orphaned_plans_are_rebuilt(tmp_path):
    path = write_engine(tmp_path, KEY, b"GOOD-PLAN")
    path.write_bytes(b"GOOD-PLAM")
    assert "damaged" in find_engine(tmp_path, KEY).rebuild_reasons[0]
    assert find_engine(tmp_path, KEY, verify_plan=False).path == path
    path.unlink()
    assert "is missing" in find_engine(tmp_path, KEY).rebuild_reasons[0]
    # a plan without a sidecar (crash between the two writes) is never loaded
    path.write_bytes(b"GOOD-PLAN")
    sidecar_path(tmp_path, KEY).unlink()
    assert find_engine(tmp_path, KEY).path is None


def test_unreadable_or_newer_sidecar(tmp_path):
    write_engine(tmp_path, KEY, b"P")
    side = sidecar_path(tmp_path, KEY)
    side.write_text("{")
    assert "unreadable engine sidecar" in find_engine(tmp_path, KEY).rebuild_reasons[0]
    data = {"schema": 99, "key": KEY.to_dict(), "plan_sha256": "0" * 64}
    side.write_text(json.dumps(data))
    assert "newer than this metaedge reads" in find_engine(tmp_path, KEY).rebuild_reasons[0]
    listed = list_engines(tmp_path)
    assert listed[0]["file"] == plan_path(tmp_path, KEY).name and "newer" in listed[0]["error"]


def test_ensure_engine_builds_once_then_reuses(tmp_path, caplog):
    calls = []

    def build():
        calls.append(1)
        return b"PLAN" * 10

    with caplog.at_level(logging.INFO, logger="metaedge.engine"):
        first = ensure_engine(tmp_path, KEY, build)
        second = ensure_engine(tmp_path, KEY, build)
    assert first == second and len(calls) == 1
    assert "building fp16, max batch 32, for Orin (sm 8.7), TensorRT 10.3.0" in caplog.text
    assert "using cached" in caplog.text
    ensure_engine(tmp_path, KEY, build, force=True)
    assert len(calls) == 2
    entries = list_engines(tmp_path)
    assert len(entries) == 1 and entries[0]["key"] == KEY.to_dict() and entries[0]["plan_bytes"] == 40


def test_upgrade_rebuilds_with_a_log_line_saying_why(tmp_path, caplog):
    ensure_engine(tmp_path, KEY, lambda: b"v1")
    newer = replace(KEY, tensorrt_version="10.7.0")
    with caplog.at_level(logging.WARNING, logger="metaedge.engine"):
        path = ensure_engine(tmp_path, newer, lambda: b"v2")
    assert path.read_bytes() == b"v2"
    assert "TensorRT version 10.3.0 (here: 10.7.0)" in caplog.text


def test_empty_plan_is_refused(tmp_path):
    with pytest.raises(EngineCacheError, match="empty"):
        write_engine(tmp_path, KEY, b"")
