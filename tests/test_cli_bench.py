"""metaedge bench: suite discovery and the combined ratio table (the suites themselves are benchmarks, not
tests; tools/bench/kernels.py --quick is exercised once, on its smallest section)."""
import json
import subprocess
import sys
from pathlib import Path

from metaedge.cli import bench_cmd

ROOT = Path(__file__).resolve().parents[1]


def test_every_suite_script_exists():
    for script, *_ in bench_cmd.SUITES.values():
        assert (ROOT / "tools" / "bench" / script).exists(), script


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


def test_bench_command_runs_a_suite_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "metaedge", "bench", "--suites", "kernels", "--quick", "--json",
                           str(out), "--suite-args", "--only preprocess"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "== ratios" in proc.stdout
    data = json.loads(out.read_text())
    assert "kernels" in data["results"]
