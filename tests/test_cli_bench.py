"""metaedge bench: the suites ship in the package (metaedge.bench) and run from a copy of it outside the source
tree; suite discovery, each suite's flags, the developer entry points in tools/bench, and the combined ratio
table (the suites themselves are benchmarks, not tests; kernels --quick runs once, on its smallest section, and
serve for one short phase per mode, checking it loses no request and no enrollment)."""
import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from metaedge.bench import SUITES
from metaedge.cli import bench_cmd

ROOT = Path(__file__).resolve().parents[1]


def _flags_of(module_path: Path) -> set[str]:
    """Every option string a module passes to add_argument (read from its source: no import, no torch)."""
    flags = set()
    for node in ast.walk(ast.parse(module_path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return flags


@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_suite_ships_in_the_package_with_the_flags_the_runner_passes(name):
    suite = SUITES[name]
    module = ROOT / "metaedge" / "bench" / f"{name}.py"
    assert module.is_file(), module
    flags = _flags_of(module)
    assert suite.json_flag in flags, f"{name}: no {suite.json_flag} option"
    if suite.quick_flag:
        assert suite.quick_flag in flags, f"{name}: no {suite.quick_flag} option"
    # the developer entry point of the docs and README: python tools/bench/<suite>.py
    assert f"from metaedge.bench.{name} import main" in (ROOT / "tools" / "bench" / f"{name}.py").read_text()


def test_the_suite_modules_do_not_reach_into_the_source_tree():
    for path in (ROOT / "metaedge" / "bench").glob("*.py"):
        text = path.read_text()
        for forbidden in ("from tools", "import tools", "from tests", "import tests", "sys.path.insert"):
            assert forbidden not in text, f"{path.name}: {forbidden}"


def test_developer_entry_point_runs_the_packaged_suite(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench" / "gallery.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout and "Gallery benchmark" in proc.stdout


def test_ratio_rows_finds_nested_ratios_and_labels_them():
    payload = {"environment": {"x_ignored": 9.0},
               "sections": {"topk": {"rows": [{"case": "C=1000", "batch": 1, "method": "numpy", "ms": 2.0,
                                               "x_metaedge": 3.5}]}},
               "summary": {"speedup": 1.7, "name": "adapt"}}
    rows = bench_cmd.ratio_rows("kernels", payload)
    assert {"suite": "kernels", "row": "C=1000 1 numpy", "x_metaedge": 3.5} in rows
    assert {"suite": "kernels", "row": "adapt", "speedup": 1.7} in rows
    assert all("x_ignored" not in r for r in rows)


def test_gpu_suite_is_skipped_with_a_reason_here():
    from metaedge import cuda
    ok, why = bench_cmd.applicable("kernels_gpu")
    assert ok == cuda.is_available()
    if not ok:
        assert why


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory):
    """The package as an install has it: metaedge/ alone (compiled module included), no tools/ or tests/ beside
    it, imported from there by a process whose working directory is elsewhere."""
    site = tmp_path_factory.mktemp("site-packages")
    shutil.copytree(ROOT / "metaedge", site / "metaedge", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(site)}
    return site, env


def test_bench_runs_from_an_installed_package_and_writes_json(package_copy, tmp_path):
    site, env = package_copy
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-c", "import sys, metaedge; from metaedge.cli.main import main; "
           "print('imported', metaedge.__file__, flush=True); sys.exit(main(sys.argv[1:]))",
           "bench", "--suites", "kernels", "--quick", "--json", str(out), "--suite-args", "--only preprocess"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"imported {site / 'metaedge' / '__init__.py'}" in proc.stdout
    assert "== kernels: -m metaedge.bench.kernels" in proc.stdout and "== ratios" in proc.stdout
    data = json.loads(out.read_text())
    assert data["results"]["kernels"] and data["skipped"].keys() <= {"kernels_gpu"}


def test_bench_list_says_what_applies(package_copy, tmp_path):
    _, env = package_copy
    proc = subprocess.run([sys.executable, "-m", "metaedge", "bench", "--list"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert set(lines) == set(SUITES)
    assert "applies" in lines["kernels"] and "applies" in lines["gallery"]


def test_serve_suite_runs_briefly_from_an_installed_package(package_copy, tmp_path):
    """The load test of `metaedge serve`, cut to one short phase per mode: it starts the server of the package it
    ships in, and the run it reports has no failed request and no lost enrollment."""
    for module in ("torch", "onnxruntime", "fastapi", "uvicorn", "prometheus_client", "PIL"):
        pytest.importorskip(module)
    _, env = package_copy
    out = tmp_path / "serve.json"
    cmd = [sys.executable, "-m", "metaedge.bench.serve", "--json", str(out), "--duration", "0.5", "--warmup", "0.2",
           "--concurrency", "1", "2", "--workers", "1", "--images", "png28", "--enroll-share", "0.3"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert [(r["mode"], r["concurrency"]) for r in data["results"]] == [
        ("predict only", 1), ("predict only", 2), ("mixed", 1), ("mixed", 2)]
    assert all(r["errors"] == 0 and r["lost_enrollments"] == 0 and r["requests"] > 0 for r in data["results"])
    assert data["results"][3]["enrolls"] > 0 and data["results"][0]["blocks"] >= 1
    overhead = data["overhead_c1"]["png28"]   # the alternating rounds of HTTP and in-process predicts
    assert overhead["rounds"] >= 1 and 0 < overhead["in_process_p50_ms"] < overhead["http_p50_ms"]


def test_preprocess_block_timings_cover_every_format_with_their_checks(monkeypatch):
    """The brief's case in blocks (a warm loop and frames in rotation), on small frames here: every format has both
    modes for metaedge and OpenCV, its cost relative to RGB, and the absolute and ratio checks of the target."""
    pytest.importorskip("cv2")
    import argparse

    import numpy as np

    from metaedge.bench import preprocess as bench_preprocess
    monkeypatch.setitem(bench_preprocess.FRAMES, "1080p", (48, 64))
    rows, checks = bench_preprocess.loop_rows(argparse.Namespace(quick=True), np.random.default_rng(0))
    modes = ("warm loop", "8 frames in rotation")
    for fmt in bench_preprocess.FORMATS:
        for method in ("metaedge", "opencv"):
            got = {r["mode"]: r for r in rows if r["format"] == fmt and r["method"] == method}
            assert set(got) == set(modes) and all(r["ms"] > 0 for r in got.values())
        ours = [r for r in rows if r["format"] == fmt and r["method"] == "metaedge"]
        assert all(r["x_metaedge"] == 1.0 and r["format_vs_rgb"] > 0 for r in ours)
        absolute = [c for c in checks if c["check"].startswith(f"1080p {fmt} ") and c["target"] == "<= 0.5 ms"]
        assert len(absolute) == 1 and absolute[0]["ok"] == (absolute[0]["value"] <= 0.5)
        assert any(f"opencv / metaedge, {fmt} " in c["check"] for c in checks)
    assert all(r["format_vs_rgb"] == 1.0 for r in rows if r["format"] == "rgb" and r["method"] == "metaedge")
