"""Smoke test of an INSTALLED metaedge (a wheel in a fresh venv), run with that venv's python from outside the
source tree. Device side only: it must work with no torch.

    python tools/wheel_smoke.py [--bundle DIR] [--source-tree DIR]

Checks: metaedge imports from site-packages (not from --source-tree), torch is absent, the compiled kernels
load and agree with numpy, the typing files ship (py.typed, _C.pyi), `metaedge info` runs, `metaedge bench` runs
a suite shipped in the package; with --bundle also a real enroll -> predict -> save -> reopen on ONNX Runtime
CPU. Used by tests/test_packaging.py (with a bundle)
and by cibuildwheel's test-command (without: the manylinux containers have no bundle to use).
Prints one line per check; exits non-zero on the first failure.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        raise SystemExit(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="a bundle directory to enroll and predict with (ONNX Runtime CPU)")
    parser.add_argument("--source-tree", help="metaedge must NOT be imported from here")
    args = parser.parse_args()

    import numpy as np

    import metaedge as me
    package = Path(me.__file__).resolve().parent
    check("imported from site-packages", "site-packages" in package.parts, str(package))
    if args.source_tree:
        tree = Path(args.source_tree).resolve()
        check("not imported from the source tree", tree not in package.parents, str(package))
    check("no torch in this environment", importlib.util.find_spec("torch") is None)
    check("typing files installed", (package / "py.typed").is_file() and (package / "_C.pyi").is_file())

    info = me.build_info()
    check("native kernels load", info["native"]["loaded"], f"SIMD {info['native'].get('simd')}")
    check("version", info["version"] == me.__version__, me.__version__)

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, 16)).astype(np.float32)
    labels = np.arange(40) % 5
    protos, counts = me.kernels.class_prototypes(emb, labels, 5)
    expected = np.stack([emb[labels == c].mean(0) for c in range(5)])
    check("class_prototypes matches numpy",
          bool(np.allclose(protos, expected, atol=1e-5)) and counts.tolist() == [8] * 5)
    scores, idx = me.kernels.topk(emb[:3], protos, k=2, metric="dot")
    ref = emb[:3] @ protos.T
    check("topk matches numpy", bool(np.allclose(scores, -np.sort(-ref, axis=1)[:, :2], atol=1e-4)))

    metaedge_cli = Path(sys.executable).with_name("metaedge")
    proc = subprocess.run([str(metaedge_cli), "info"], capture_output=True, text=True)
    check("`metaedge info` runs", proc.returncode == 0 and "backends:" in proc.stdout, proc.stderr[-500:])
    with tempfile.TemporaryDirectory() as tmp:  # the suites ship in the package: no source checkout needed
        out = os.path.join(tmp, "bench.json")
        proc = subprocess.run([str(metaedge_cli), "bench", "--suites", "kernels", "--quick", "--json", out,
                               "--suite-args", "--only preprocess"], cwd=tmp, capture_output=True, text=True)
        check("`metaedge bench` runs a packaged suite", proc.returncode == 0 and os.path.exists(out)
              and "== ratios" in proc.stdout, (proc.stdout + proc.stderr)[-500:])

    if args.bundle:
        with tempfile.TemporaryDirectory() as tmp:
            gallery = os.path.join(tmp, "classes.metaedge")
            images = {f"class_{c}": (rng.random((1, 20, 20, 1)) * 255).astype(np.uint8) for c in range(3)}
            with me.EdgeClassifier(args.bundle, gallery=gallery, backend="ort-cpu") as clf:
                for label, imgs in images.items():
                    clf.enroll(label, imgs)
                preds = [clf.predict(imgs[0]) for imgs in images.values()]
                check("enroll + predict on ort-cpu", [p.label for p in preds] == list(images),
                      ", ".join(f"{p.label} {p.score:.3f}" for p in preds))
                clf.save()
            with me.EdgeClassifier(args.bundle, gallery=gallery, backend="ort-cpu") as clf:
                check("gallery persisted", sorted(clf.labels) == sorted(images), ", ".join(clf.labels))
                check("predict after reopening", clf.predict(images["class_1"][0]).label == "class_1")
    print("wheel smoke test passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
