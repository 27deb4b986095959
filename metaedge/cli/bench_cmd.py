"""`metaedge bench`: run the benchmark suites (metaedge.bench, shipped with the package) that apply here."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from metaedge._optional import available
from metaedge.bench import SUITES


def register(sub) -> None:
    p = sub.add_parser("bench", help="run the benchmarks that apply to this machine",
                       description="Run the benchmark suites that ship with metaedge (metaedge.bench; in a source "
                                   "checkout also python tools/bench/SUITE.py) that apply to this machine - kernels "
                                   "and gallery (always), preprocess (OpenCV), backbones and sdk (torch + "
                                   "onnxruntime), train (torch + easyfsl), kernels_gpu (a CUDA build and a GPU), serve "
                                   "(the HTTP server under load on 127.0.0.1; torch + onnxruntime + the [serve] extra) "
                                   "- each comparing metaedge with its baselines in the same run, then print one "
                                   "table of the ratios. --list says which apply and why not.")
    p.add_argument("--suites", nargs="+", choices=sorted(SUITES), help="suites to run (default: all that apply)")
    p.add_argument("--list", action="store_true", help="list the suites, what they measure and whether they apply")
    p.add_argument("--quick", action="store_true", help="fewer repetitions where a suite supports it")
    p.add_argument("--json", metavar="PATH", help="write all results to this JSON file")
    p.add_argument("--suite-args", default="", metavar="ARGS",
                   help="extra arguments for the suites, e.g. --suites kernels --suite-args '--only topk' "
                        "(python -m metaedge.bench.SUITE --help lists them)")
    p.set_defaults(func=run)


def applicable(name: str) -> tuple[bool, str]:
    suite = SUITES[name]
    missing = [m for m in suite.needs if not available(m)]
    if missing:
        return False, f"needs {', '.join(missing)}"
    if suite.gpu:
        from metaedge import cuda
        if not cuda.is_available():
            return False, "no usable CUDA GPU"
    return True, ""


def suite_command(name: str, out: str, quick: bool, extra: str) -> list[str]:
    """The command line that runs suite ``name`` as a module, writing its JSON to ``out``."""
    suite = SUITES[name]
    cmd = [sys.executable, "-m", f"metaedge.bench.{name}", suite.json_flag, out]
    if quick and suite.quick_flag:
        cmd.append(suite.quick_flag)
    return cmd + shlex.split(extra)


def suite_environment() -> dict[str, str]:
    """The environment of a suite's process: it imports the metaedge this command runs (a source checkout's or
    the installed one), whatever the working directory."""
    import metaedge
    package_root = str(Path(metaedge.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}


def _is_ratio_key(key: str) -> bool:
    return "ratio" in key or "speedup" in key or key.startswith(("vs_", "x_"))


def ratio_rows(suite: str, payload, path: str = "") -> list[dict]:
    """Rows of a suite's JSON that carry a ratio (keys with 'ratio' or 'speedup', or starting 'vs_' / 'x_'),
    labelled by the row's own text and integer fields."""
    rows = []
    if isinstance(payload, dict):
        ratios = {k: v for k, v in payload.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                  and _is_ratio_key(k)}
        if ratios:
            label = " ".join(str(v) for k, v in payload.items() if not _is_ratio_key(k)
                             and (isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))))
            rows.append({"suite": suite, "row": label or path, **ratios})
        for key, value in payload.items():
            if key != "environment":
                rows += ratio_rows(suite, value, f"{path}.{key}" if path else key)
    elif isinstance(payload, list):
        for i, value in enumerate(payload):
            rows += ratio_rows(suite, value, f"{path}[{i}]")
    return rows


def run(args) -> int:
    if args.list:
        for name, suite in SUITES.items():
            ok, why = applicable(name)
            print(f"{name:<12} {'applies' if ok else 'skipped: ' + why:<28} {suite.about}")
        return 0
    names = args.suites or list(SUITES)
    results, skipped = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            ok, why = applicable(name)
            if not ok:
                skipped[name] = why
                print(f"== {name}: skipped ({why})", flush=True)
                continue
            out = os.path.join(tmp, f"{name}.json")
            cmd = suite_command(name, out, args.quick, args.suite_args)
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
            proc = subprocess.run(cmd, env=suite_environment())
            if proc.returncode != 0 or not os.path.exists(out):
                skipped[name] = f"failed (exit {proc.returncode})"
                continue
            with open(out) as fh:
                results[name] = json.load(fh)
    rows = [r for name, payload in results.items() for r in ratio_rows(name, payload)]
    if rows:
        keys = sorted({k for r in rows for k in r} - {"suite", "row"})
        print("\n== ratios of every suite (column names as each suite writes them; x_metaedge = time / metaedge's)")
        print(f"{'suite':<12} {'case':<56} " + " ".join(f"{k[:16]:>16}" for k in keys))
        for r in rows:
            print(f"{r['suite']:<12} {r['row'][:56]:<56} " +
                  " ".join(f"{r[k]:>16.2f}" if isinstance(r.get(k), (int, float)) else f"{'':>16}" for k in keys))
    for name, why in skipped.items():
        print(f"   {name}: {why}")
    if args.json:
        from metaedge.runtime.fileio import atomic_write_json
        atomic_write_json(args.json, {"results": results, "skipped": skipped})
    return 0 if results else 1
