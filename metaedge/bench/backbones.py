#!/usr/bin/env python3
"""Backbone inference speed: torch eager vs ONNX Runtime (a bare session and metaedge's OnnxRuntimeBackend on
the same ONNX file), plus TensorRT where present. conv4 (1x28x28) and resnet18 (3x224x224), batch 1 and 32.

Every candidate of one (model, batch) is measured in the same run, interleaved round by round (A B C C B A
...) so that load from other processes hits all of them alike. Each round gives a mean time per call; the
table reports the best round (other processes only ever add time, so the minimum is the most repeatable
estimate on a shared machine) and the JSON also keeps the median. Ratios use the best rounds.
Prints a table and writes JSON (default runs/bench/backbones.json).

Targets (issue 5): OnnxRuntimeBackend within 5% of the bare session at batch 1, and faster than torch eager.
The backend-vs-bare overhead is measured separately as the median ratio of back-to-back pairs, next to the
same measurement between two identical bare sessions (the noise floor).

    python tools/bench/backbones.py [--rounds 7] [--min-time 0.4] [--threads N] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


MODELS = {"conv4": {"input_size": 28}, "resnet18": {"input_size": 224}}
BATCHES = (1, 32)


def per_call_seconds(fn, min_time: float) -> float:
    """Mean seconds per call over at least ``min_time`` seconds (and at least 2 calls)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and calls >= 2:
            return elapsed / calls


def measure(candidates: dict, rounds: int, min_time: float) -> dict[str, list[float]]:
    for fn in candidates.values():  # warm-up: allocators, thread pools, first-call graph work
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for r in range(rounds):
        order = list(candidates) if r % 2 == 0 else list(reversed(candidates))  # no fixed "goes first" bias
        for name in order:
            samples[name].append(per_call_seconds(candidates[name], min_time))
    return samples


def paired_overhead(ours, bare, pairs: int = 40, min_time: float = 0.05) -> float:
    """Median over back-to-back (bare, ours) pairs of ours/bare - 1: drift in machine load cancels within a
    pair, which a comparison of two separate timings cannot do on a shared machine."""
    ratios = []
    for i in range(pairs):
        if i % 2:
            t_ours, t_bare = per_call_seconds(ours, min_time), per_call_seconds(bare, min_time)
        else:
            t_bare, t_ours = per_call_seconds(bare, min_time), per_call_seconds(ours, min_time)
        ratios.append(t_ours / t_bare)
    return statistics.median(ratios) - 1.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved measurement rounds (median taken)")
    parser.add_argument("--min-time", type=float, default=0.4, help="seconds per candidate per round")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for torch and both ONNX Runtime sessions (default: usable cores)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", default=os.path.join("runs", "bench", "backbones.json"))
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch

    from metaedge.export import export_bundle
    from metaedge.runtime.backends.onnxruntime import OnnxRuntimeBackend, usable_cores
    from metaedge.train import build_backbone

    threads = args.threads or usable_cores()
    torch.set_num_threads(threads)
    trt_available = False
    try:
        import tensorrt  # noqa: F401
        from metaedge import cuda
        trt_available = cuda.is_available()
    except ImportError:
        pass

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"threads {threads}, load average {load}, torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"{platform.processor() or platform.machine()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models:
            torch.manual_seed(0)
            model = build_backbone(model_name, **MODELS[model_name]).eval()
            bundle = export_bundle(model, Path(tmp) / model_name, progress=lambda msg: None)
            spec = bundle.spec
            options = ort.SessionOptions()  # the bare session: defaults except the same thread count
            options.intra_op_num_threads = threads
            bare = ort.InferenceSession(str(bundle.onnx_path), sess_options=options,
                                        providers=["CPUExecutionProvider"])
            # an identical second session: bare-vs-bare is the noise floor of the overhead measurement
            bare_twin = ort.InferenceSession(str(bundle.onnx_path), sess_options=options,
                                             providers=["CPUExecutionProvider"])
            ours = OnnxRuntimeBackend(bundle, intra_op_threads=threads)
            model_cl = build_backbone(model_name, **MODELS[model_name]).eval().to(memory_format=torch.channels_last)
            model_cl.load_state_dict(model.state_dict())
            trt_backends = {}
            if trt_available:
                from metaedge.runtime.backends.tensorrt import TensorRTBackend
                for precision in ("fp32", "fp16"):
                    trt_backends[f"tensorrt {precision}"] = TensorRTBackend(bundle, precision=precision, max_batch=32)
            for batch in BATCHES:
                x = np.random.default_rng(batch).random((batch, *spec.input_shape), dtype=np.float32)
                xt = torch.from_numpy(x)
                xt_cl = xt.contiguous(memory_format=torch.channels_last)
                feeds = {spec.input_name: x}

                def torch_eager():
                    with torch.inference_mode():
                        return model(xt)

                def torch_channels_last():
                    with torch.inference_mode():
                        return model_cl(xt_cl)

                candidates = {
                    "torch eager": torch_eager,
                    "torch channels_last": torch_channels_last,
                    "onnxruntime session": lambda: bare.run(None, feeds),
                    "OnnxRuntimeBackend": lambda: ours.embed(x),
                }
                for name, backend in trt_backends.items():
                    candidates[name] = (lambda b=backend: b.embed(x).to_numpy())
                np.testing.assert_allclose(ours.embed(x), torch_eager().numpy(), atol=1e-3)  # same work
                samples = measure(candidates, args.rounds, args.min_time)
                seconds = {name: min(s) for name, s in samples.items()}
                base = seconds["torch eager"]
                for name, sec in seconds.items():
                    rows.append({"model": model_name, "input": list(spec.input_shape), "batch": batch,
                                 "candidate": name, "ms_per_batch": sec * 1e3, "images_per_s": batch / sec,
                                 "median_ms_per_batch": statistics.median(samples[name]) * 1e3,
                                 "speedup_vs_torch_eager": base / sec})
                # ~20 s per configuration at most: many short pairs for fast models, a few for slow ones
                pairs = int(min(40, max(6, 10.0 / (4 * max(seconds["onnxruntime session"], 0.05)))))
                overhead = paired_overhead(candidates["OnnxRuntimeBackend"], candidates["onnxruntime session"],
                                           pairs=pairs)
                noise = paired_overhead(lambda: bare_twin.run(None, feeds), candidates["onnxruntime session"],
                                        pairs=pairs)
                rows.append({"model": model_name, "batch": batch, "candidate": "OnnxRuntimeBackend overhead vs bare",
                             "overhead_pct": overhead * 100.0, "noise_floor_pct": noise * 100.0,
                             "method": f"median of {pairs} paired ratios"})
                print(f"{model_name} b={batch}: " + ", ".join(f"{n} {batch / s:.0f} img/s" for n, s in seconds.items())
                      + f"; backend overhead {overhead * 100:+.1f}%", flush=True)

    print()
    print(f"{'model':<9} {'batch':>5}  {'candidate':<22} {'ms/batch':>9} {'images/s':>10} {'x torch':>8} "
          f"{'median ms':>10}")
    for r in rows:
        if "overhead_pct" in r:
            print(f"{r['model']:<9} {r['batch']:>5}  {'  backend vs bare':<22} {r['overhead_pct']:>+8.1f}%"
                  f"  ({r['method']}; bare vs identical bare: {r['noise_floor_pct']:+.1f}%)")
            continue
        print(f"{r['model']:<9} {r['batch']:>5}  {r['candidate']:<22} {r['ms_per_batch']:>9.3f} "
              f"{r['images_per_s']:>10.1f} {r['speedup_vs_torch_eager']:>8.2f} {r['median_ms_per_batch']:>10.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "backbones", "threads": threads, "load_average_at_start": load,
                               "rounds": args.rounds, "min_time_s": args.min_time, "torch": torch.__version__,
                               "onnxruntime": ort.__version__, "machine": platform.machine(),
                               "processor": platform.processor(), "rows": rows}, indent=2))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
