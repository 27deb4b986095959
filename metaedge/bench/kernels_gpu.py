#!/usr/bin/env python3
"""GPU kernel benchmark: metaedge's CUDA kernels against PyTorch on the same device, same run.

  topk        metaedge.kernels.topk (fused scoring + selection, metric "dot") vs torch (q @ p.T, then topk),
              C in {1k, 10k, 100k, 1M}, d in {128, 512}, batch in {1, 64}, k = 5, float32 prototypes (plus
              float16 rows at C = 1M, d = 512). Bandwidth = prototype bytes read / time, compared with the
              measured device-to-device copy bandwidth (bytes read + written / time).
  compact     metaedge.kernels.CompactClassMatrix(device="cuda") (int8 first pass + exact float32 re-rank, "dot")
              vs metaedge's float32 topk, C in {100k, 1M}, d = 512, batch in {1, 8, 32}, k = 5: the compact
              bytes (codes + per-row terms) read per call / time, against the copy bandwidth (issue 19: >= 80%
              at batch 1, 1M), and whether the indices equal the float32 top-k's.
  adapt_head  100 steps at C = 20 classes, d = 512, n = 100 support rows vs torch eager autograd + SGD.
  preprocess  uint8 HWC frames -> normalised float CHW 224 x 224 vs torch (permute, float, interpolate,
              normalise).
Times are medians of CUDA-event timings after warm-up. Every metaedge call is end to end, including its
argument checks (which synchronise: NaN/Inf scans report back to the host).

Targets (issue 3, H100/H200): topk batch 1 at C = 1M, d = 512 >= 60% of copy bandwidth and faster than torch
at every size; adapt_head >= 10x torch eager.

    python3 tools/bench/kernels_gpu.py --json out.json [--quick]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path



def _time_ms(torch, fn, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(torch, nbytes: int, reps: int) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = _time_ms(torch, lambda: dst.copy_(src), 3, reps)
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9  # GB/s, read + write


def bench_topk(torch, cuda, kernels, sizes, reps, copy_gbps, k=5):
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for dtype_name, C, d, b in sizes:
        dtype = torch.float32 if dtype_name == "float32" else torch.float16
        p = torch.randn((C, d), generator=gen, device="cuda", dtype=dtype)
        q = torch.randn((b, d), generator=gen, device="cuda", dtype=torch.float32)
        q_t = q.to(dtype)
        # On the device the inputs are DeviceArrays (TensorRT outputs, galleries): wrap torch's memory once,
        # no copy, as an application would.
        q_dev, p_dev = cuda.as_device_array(q), cuda.as_device_array(p)

        def ours():
            return kernels.topk(q_dev, p_dev, k, "dot")

        def theirs():
            return torch.topk(q_t @ p.T, k, dim=1)

        s_ours, i_ours = ours()
        s_ref, _ = theirs()
        agree = float((torch.as_tensor(s_ours, device="cuda") - s_ref.float()).abs().max().item())
        t_ours = _time_ms(torch, ours, 3, reps)
        t_cos = _time_ms(torch, lambda: kernels.topk(q_dev, p_dev, k, "cosine"), 3, reps)
        t_torch = _time_ms(torch, theirs, 3, reps)
        gbps = C * d * p.element_size() / (t_ours * 1e-3) / 1e9
        rows.append({"dtype": dtype_name, "C": C, "d": d, "batch": b, "k": k, "ms": t_ours, "ms_cosine": t_cos,
                     "torch_ms": t_torch, "speedup_vs_torch": t_torch / t_ours, "GBps": gbps,
                     "pct_of_copy_bw": 100 * gbps / copy_gbps, "max_abs_score_diff_vs_torch": agree})
        del p, q, q_t, q_dev, p_dev, s_ours, i_ours, s_ref
        torch.cuda.empty_cache()
    return rows


def bench_compact(torch, cuda, kernels, sizes, reps, copy_gbps, k=5):
    import numpy as np
    rows = []
    rng = np.random.default_rng(0)
    for C in sorted({C for C, _ in sizes}):
        d = 512
        matrix = kernels.CompactClassMatrix(d, "dot", method="compact", device="cuda", capacity=C)
        for start in range(0, C, 100_000):
            matrix.add(rng.standard_normal((min(100_000, C - start), d)).astype(np.float32))
        full = matrix.rows
        for b in sorted(b for c, b in sizes if c == C):
            q = cuda.DeviceArray.from_numpy(rng.standard_normal((b, d)).astype(np.float32))
            exact = np.array_equal(matrix.topk(q, k)[1].to_numpy(), kernels.topk(q, full, k, "dot")[1].to_numpy())
            fp32_rows = float(np.median(matrix.topk_with_stats(q, k)[2].to_numpy()))
            t = _time_ms(torch, lambda: matrix.topk(q, k), 3, reps)
            t_fp32 = _time_ms(torch, lambda: kernels.topk(q, full, k, "dot"), 3, reps)
            gbps = C * (d + 16) / (t * 1e-3) / 1e9
            rows.append({"C": C, "d": d, "batch": b, "k": k, "ms": t, "fp32_topk_ms": t_fp32,
                         "speedup_vs_fp32": t_fp32 / t, "GBps": gbps, "pct_of_copy_bw": 100 * gbps / copy_gbps,
                         "fp32_rows": fp32_rows, "exact": exact})
        del matrix, full
    return rows


def bench_adapt(torch, kernels, reps, C=20, d=512, n=100, steps=100):
    import torch.nn.functional as F
    gen = torch.Generator(device="cuda").manual_seed(1)
    W0 = torch.randn((C, d), generator=gen, device="cuda")
    S = torch.randn((n, d), generator=gen, device="cuda")
    y = torch.randint(0, C, (n,), generator=gen, device="cuda")
    lr, momentum, wd, scale = 0.1, 0.9, 5e-4, 10.0
    W = W0.clone()
    from metaedge import cuda
    W_dev, S_dev, y_dev = cuda.as_device_array(W), cuda.as_device_array(S), cuda.as_device_array(y)

    def ours():
        W.copy_(W0)
        return kernels.adapt_head(W_dev, S_dev, y_dev, steps=steps, lr=lr, momentum=momentum, weight_decay=wd,
                                  scale=scale)

    def theirs():
        Wt = W0.clone().requires_grad_(True)
        opt = torch.optim.SGD([Wt], lr=lr, momentum=momentum, weight_decay=wd)
        Sn = F.normalize(S, dim=1)
        losses = torch.empty(steps, device="cuda")
        for t in range(steps):
            logits = scale * Sn @ F.normalize(Wt, dim=1).T
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[t] = loss.detach()
        return losses

    l_ours = torch.as_tensor(ours(), device="cuda")
    l_ref = theirs()
    diff = float((l_ours - l_ref).abs().max().item())
    t_ours = _time_ms(torch, ours, 2, reps)
    t_torch = _time_ms(torch, theirs, 1, max(3, reps // 4))
    return {"C": C, "d": d, "n": n, "steps": steps, "ms": t_ours, "torch_eager_ms": t_torch,
            "speedup_vs_torch": t_torch / t_ours, "us_per_step": 1000 * t_ours / steps,
            "max_abs_loss_diff_vs_torch": diff}


def bench_preprocess(torch, kernels, reps, shapes):
    import torch.nn.functional as F
    rows = []
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    mean_t = torch.tensor(mean, device="cuda").view(1, 3, 1, 1)
    std_t = torch.tensor(std, device="cuda").view(1, 3, 1, 1)
    gen = torch.Generator(device="cuda").manual_seed(2)
    for b, h, w, H, W in shapes:
        frames = torch.randint(0, 256, (b, h, w, 3), generator=gen, device="cuda", dtype=torch.uint8)
        from metaedge import cuda
        frames_dev = cuda.as_device_array(frames)

        def ours():
            return kernels.preprocess(frames_dev, (H, W), mean=mean, std=std)

        def theirs():
            x = frames.permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False, antialias=False)
            return (x / 255.0 - mean_t) / std_t

        diff = float((torch.as_tensor(ours(), device="cuda") - theirs()).abs().max().item())
        t_ours, t_torch = _time_ms(torch, ours, 3, reps), _time_ms(torch, theirs, 3, reps)
        rows.append({"batch": b, "in": f"{h}x{w}x3", "out": f"3x{H}x{W}", "ms": t_ours, "torch_ms": t_torch,
                     "speedup_vs_torch": t_torch / t_ours, "max_abs_diff_vs_torch": diff})
    return rows


def print_tables(result) -> None:
    print(f"\n== {result['device']}  (torch {result['torch']}, copy bandwidth {result['copy_GBps']:.0f} GB/s)")
    print(f"{'topk dtype':<11}{'C':>9}{'d':>5}{'b':>4}{'ms':>9}{'cos ms':>9}{'torch ms':>10}{'speedup':>9}"
          f"{'GB/s':>8}{'%copy':>7}")
    for r in result["topk"]:
        print(f"{r['dtype']:<11}{r['C']:>9}{r['d']:>5}{r['batch']:>4}{r['ms']:>9.3f}{r['ms_cosine']:>9.3f}"
              f"{r['torch_ms']:>10.3f}{r['speedup_vs_torch']:>8.2f}x{r['GBps']:>8.0f}{r['pct_of_copy_bw']:>6.0f}%")
    print(f"{'compact C':<11}{'':>9}{'d':>5}{'b':>4}{'ms':>9}{'fp32 ms':>9}{'speedup':>9}{'GB/s':>8}{'%copy':>7}"
          f"{'fp32 rows':>11}{'exact':>7}")
    for r in result["compact"]:
        print(f"{'':<11}{r['C']:>9}{r['d']:>5}{r['batch']:>4}{r['ms']:>9.3f}{r['fp32_topk_ms']:>9.3f}"
              f"{r['speedup_vs_fp32']:>8.2f}x{r['GBps']:>8.0f}{r['pct_of_copy_bw']:>6.0f}%{r['fp32_rows']:>11.0f}"
              f"{str(r['exact']):>7}")
    a = result["adapt_head"]
    print(f"adapt_head C={a['C']} d={a['d']} n={a['n']} steps={a['steps']}: {a['ms']:.2f} ms "
          f"({a['us_per_step']:.1f} us/step) vs torch eager {a['torch_eager_ms']:.2f} ms -> "
          f"{a['speedup_vs_torch']:.1f}x; max |loss diff| {a['max_abs_loss_diff_vs_torch']:.2e}")
    for r in result["preprocess"]:
        print(f"preprocess b={r['batch']} {r['in']} -> {r['out']}: {r['ms']:.3f} ms vs torch {r['torch_ms']:.3f} ms "
              f"-> {r['speedup_vs_torch']:.2f}x; max |diff| {r['max_abs_diff_vs_torch']:.1e}")
    t = result["targets"]
    print(f"targets: topk b=1 C=1M d=512 at {t['topk_1M_512_b1_pct_of_copy']:.0f}% of copy bandwidth (>= 60%): "
          f"{'PASS' if t['topk_bandwidth_ok'] else 'MISS'}; faster than torch everywhere: "
          f"{'PASS' if t['topk_faster_everywhere'] else 'MISS'}; adapt_head {t['adapt_speedup']:.1f}x (>= 10x): "
          f"{'PASS' if t['adapt_ok'] else 'MISS'}; compact b=1 C=1M at {t['compact_1M_b1_pct_of_copy']:.0f}% of "
          f"copy bandwidth on its bytes (>= 80%): {'PASS' if t['compact_1M_b1_pct_of_copy'] >= 80 else 'MISS'}; "
          f"compact exact: {'PASS' if t['compact_exact'] else 'MISS'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the full results here")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions per measurement (median reported)")
    ap.add_argument("--quick", action="store_true", help="fewer sizes (smoke test)")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("kernels_gpu.py needs PyTorch (its CUDA events and baselines)", file=sys.stderr)
        return 2
    from metaedge import cuda, kernels
    if not cuda.is_available() or not torch.cuda.is_available():
        print(f"no usable GPU: {cuda.why_unavailable() or 'torch.cuda.is_available() is False'}", file=sys.stderr)
        return 2

    started = time.time()
    copy_gbps = copy_bandwidth(torch, 1 << 31, args.reps)
    if args.quick:
        sizes = [("float32", C, d, b) for C in (1000, 1_000_000) for d in (512,) for b in (1, 64)]
    else:
        sizes = [("float32", C, d, b) for C in (1000, 10_000, 100_000, 1_000_000) for d in (128, 512)
                 for b in (1, 64)]
        sizes += [("float16", 1_000_000, 512, 1), ("float16", 1_000_000, 512, 64)]
    topk_rows = bench_topk(torch, cuda, kernels, sizes, args.reps, copy_gbps)
    compact_sizes = [(C, b) for C in ((1_000_000,) if args.quick else (100_000, 1_000_000)) for b in (1, 8, 32)]
    compact_rows = bench_compact(torch, cuda, kernels, compact_sizes, args.reps, copy_gbps)
    adapt = bench_adapt(torch, kernels, args.reps)
    pre = bench_preprocess(torch, kernels, args.reps, [(1, 480, 640, 224, 224), (8, 480, 640, 224, 224)])

    key = next(r for r in topk_rows if r["dtype"] == "float32" and r["C"] == 1_000_000 and r["d"] == 512
               and r["batch"] == 1)
    fp32_rows = [r for r in topk_rows if r["dtype"] == "float32"]
    result = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_GBps": copy_gbps,
        "topk": topk_rows, "compact": compact_rows, "adapt_head": adapt, "preprocess": pre,
        "seconds": time.time() - started,
        "targets": {"topk_1M_512_b1_pct_of_copy": key["pct_of_copy_bw"],
                    "topk_bandwidth_ok": key["pct_of_copy_bw"] >= 60,
                    "topk_faster_everywhere": all(r["speedup_vs_torch"] > 1 for r in fp32_rows),
                    "adapt_speedup": adapt["speedup_vs_torch"], "adapt_ok": adapt["speedup_vs_torch"] >= 10,
                    "compact_1M_b1_pct_of_copy": next(r["pct_of_copy_bw"] for r in compact_rows
                                                      if r["C"] == 1_000_000 and r["batch"] == 1),
                    "compact_exact": all(r["exact"] for r in compact_rows)},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    print_tables(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
