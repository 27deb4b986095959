#!/usr/bin/env python
"""Camera-frame pre-processing benchmark: metaedge's fused native kernel vs OpenCV (and torchvision), same run.

One frame -> network input, on one CPU core (OMP/OpenCV/torch threads = 1): 1080p (1080x1920) and VGA (480x640)
frames in RGB, BGR, BGRA, NV12 and YUYV -> 3x224x224 (RGB network, ImageNet mean/std) and 1x28x28 (gray
network), squeezed (the whole frame), with antialiasing (box prefilter) as new bundles do, and without (old
bundles: plain bilinear). Letterbox and center-crop rows for 1080p -> 224 in BGR and NV12.

Baselines, doing the same steps:
- ``opencv``: ``cv2.cvtColor`` to RGB/gray, ``cv2.resize`` (``INTER_AREA`` with antialiasing - OpenCV's
  antialiased shrink -, ``INTER_LINEAR`` without), then ``(x / 255 - mean) / std`` and HWC -> CHW in numpy;
- ``torchvision`` (RGB and BGR rows, if installed): ``torchvision.transforms.v2.functional.resize`` on the uint8
  tensor (``antialias=True``/``False``), then the same normalisation in torch.
``x_metaedge`` is a baseline's time over metaedge's on the same row; the ``bgr_vs_rgb`` etc. column is a format's
metaedge time over RGB's for the same frame and output (target: within 1.10).

``--gpu``: the same cases on the GPU (metaedge's CUDA kernel vs torch doing the same steps: colour conversion
by indexing/matmul, ``F.interpolate`` with ``antialias``, normalisation), CUDA-synchronised, frames already in GPU
memory. Run by tools/gpu_check.sh on a machine with a GPU.

    python tools/bench/preprocess.py                 # table + out/bench/preprocess.json
    python tools/bench/preprocess.py --quick --json /tmp/p.json
Targets: >= 1.5x OpenCV at 1080p NV12 -> 224 (issue 12); any pixel format <= 0.5 ms at 1080p -> 224 antialiased
on one core (the brief, which measured OpenCV's INTER_AREA path at 4.5-5.4 ms and torchvision's antialiased resize
at 1.0 ms when it set that figure: >= 10.8x and >= 2x them, checked in the same run); BGR/NV12/YUYV within 10% of
RGB.

The case rows are interleaved call by call with their baselines on the same frame, so each call finds the caches
as the other library left them. The brief's case is also timed in blocks of consecutive calls: a warm loop on one
frame (in the last-level cache; how libraries are usually timed, and the target's setting) and 8 frames in
rotation (from memory, as a camera delivers them).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from metaedge.bench import common

common.pin_threads(1)

import numpy as np  # noqa: E402

FRAMES = {"1080p": (1080, 1920), "vga": (480, 640)}
OUTPUTS = {"3x224x224": ("rgb", (224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
           "1x28x28": ("gray", (28, 28), (0.5,), (0.25,))}
FORMATS = ("rgb", "bgr", "bgra", "nv12", "yuyv")


def make_frame(rng, fmt: str, h: int, w: int) -> np.ndarray:
    """A camera-like frame (smooth image + noise) in `fmt`, converted with OpenCV (timing does not depend on
    which YUV matrix made the values)."""
    import cv2
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([120 + 80 * np.sin(xx / 37.0), 110 + 70 * np.cos(yy / 29.0), 100 + 60 * np.sin((xx + yy) / 53.0)],
                   axis=-1) + rng.normal(0, 8, (h, w, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    if fmt == "rgb":
        return rgb
    if fmt in ("bgr", "bgra"):
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR if fmt == "bgr" else cv2.COLOR_RGB2BGRA)
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # Y, then the U and V planes at half resolution
    y = i420[:h]
    u = i420[h:h + h // 4].reshape(h // 2, w // 2)
    v = i420[h + h // 4:].reshape(h // 2, w // 2)
    if fmt == "nv12":
        return np.ascontiguousarray(np.concatenate([y, np.stack([u, v], axis=-1).reshape(h // 2, w)]))
    out = np.empty((h, w, 2), np.uint8)  # yuyv: chroma of each pixel pair from the 2x2 site
    out[..., 0] = y
    out[:, 0::2, 1] = np.repeat(u, 2, axis=0)
    out[:, 1::2, 1] = np.repeat(v, 2, axis=0)
    return out


def opencv_fn(cv2, frame, fmt, color, size, mean, std, antialias, resize):
    to_rgb = {"rgb": None, "bgr": cv2.COLOR_BGR2RGB, "bgra": cv2.COLOR_BGRA2RGB, "nv12": cv2.COLOR_YUV2RGB_NV12,
              "yuyv": cv2.COLOR_YUV2RGB_YUYV}[fmt]
    to_gray = {"rgb": cv2.COLOR_RGB2GRAY, "bgr": cv2.COLOR_BGR2GRAY, "bgra": cv2.COLOR_BGRA2GRAY,
               "nv12": cv2.COLOR_YUV2GRAY_NV12, "yuyv": cv2.COLOR_YUV2GRAY_YUYV}[fmt]
    interp = cv2.INTER_AREA if antialias else cv2.INTER_LINEAR
    m = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, np.float32).reshape(-1, 1, 1)
    H, W = size

    def run():
        img = cv2.cvtColor(frame, to_gray) if color == "gray" else (frame if to_rgb is None
                                                                      else cv2.cvtColor(frame, to_rgb))
        h, w = img.shape[:2]
        if resize == "center_crop":
            side = min(h, w)
            img = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        if resize == "letterbox":
            scale = min(H / h, W / w)
            nh, nw = int(round(h * scale)), int(round(w * scale))
            small = cv2.resize(img, (nw, nh), interpolation=interp)
            img = cv2.copyMakeBorder(small, (H - nh) // 2, H - nh - (H - nh) // 2, (W - nw) // 2,
                                     W - nw - (W - nw) // 2, cv2.BORDER_CONSTANT, value=0)
        else:
            img = cv2.resize(img, (W, H), interpolation=interp)
        x = img.astype(np.float32).reshape(H, W, -1).transpose(2, 0, 1)
        return (x * (1 / 255.0) - m) / s
    return run


def torchvision_fn(frame, fmt, size, mean, std, antialias):
    import torch
    from torchvision.transforms.v2 import functional as tvf
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    t = torch.from_numpy(frame)

    def run():
        chw = t.permute(2, 0, 1)
        if fmt == "bgr":
            chw = chw.flip(0)
        small = tvf.resize(chw, list(size), antialias=antialias)
        return (small.float() / 255.0 - m) / s
    return run


def cpu_rows(args, rng) -> list[dict]:
    import cv2
    from metaedge import kernels
    cv2.setNumThreads(1)
    try:
        import torchvision  # noqa: F401
        have_tv = True
    except ImportError:
        have_tv = False
    rows = []
    cases = []
    for frame_name, (h, w) in FRAMES.items():
        for out_name, (color, size, mean, std) in OUTPUTS.items():
            for antialias in (True, False):
                for fmt in FORMATS:
                    cases.append((frame_name, h, w, out_name, color, size, mean, std, antialias, fmt, "squeeze"))
    for fmt in ("rgb", "bgr", "nv12"):
        for resize in ("letterbox", "center_crop"):
            color, size, mean, std = OUTPUTS["3x224x224"]
            cases.append(("1080p", 1080, 1920, "3x224x224", color, size, mean, std, True, fmt, resize))
    frames = {}
    for (frame_name, h, w, out_name, color, size, mean, std, antialias, fmt, resize) in cases:
        key = (frame_name, fmt)
        if key not in frames:
            frames[key] = make_frame(rng, fmt, h, w)
        frame = frames[key]
        pre = kernels.Preprocessor(size, mean=mean, std=std, color=color, pixel_format=fmt, resize=resize,
                                   antialias=antialias)
        fns = {"metaedge": lambda pre=pre, frame=frame: pre.frame_batch(frame),
               "opencv": opencv_fn(cv2, frame, fmt, color, size, mean, std, antialias, resize)}
        if have_tv and fmt in ("rgb", "bgr") and color == "rgb" and resize == "squeeze":
            fns["torchvision"] = torchvision_fn(frame, fmt, size, mean, std, antialias)
        times = common.time_interleaved(fns, repeats=args.repeats, max_seconds=args.max_seconds)
        case = f"{frame_name} {fmt} -> {out_name}"
        for method, t in times.items():
            rows.append({"case": case, "frame": frame_name, "format": fmt, "output": out_name,
                         "antialias": antialias, "resize": resize, "method": method, "ms": t["median_ms"]})
        print(f"  {case:<28} {resize:<11} aa={antialias!s:<5} " +
              "  ".join(f"{m} {t['median_ms']:.3f} ms" for m, t in times.items()), file=sys.stderr, flush=True)
    common.add_ratios(rows, group=("case", "antialias", "resize"), reference="metaedge", out="x_metaedge")
    # each format's metaedge time over RGB's, same frame size, output, antialiasing and resize mode
    rgb = {(r["frame"], r["output"], r["antialias"], r["resize"]): r["ms"] for r in rows
           if r["method"] == "metaedge" and r["format"] == "rgb"}
    for r in rows:
        if r["method"] == "metaedge" and r["format"] != "rgb":
            base = rgb.get((r["frame"], r["output"], r["antialias"], r["resize"]))
            r[f"{r['format']}_vs_rgb"] = r["ms"] / base if base else None
            r["format_vs_rgb"] = r[f"{r['format']}_vs_rgb"]
    return rows


def loop_rows(args, rng) -> tuple[list[dict], list[dict]]:
    """The brief's case, 1080p -> 3x224x224 antialiased, squeezed, in every format, timed two ways, each method in
    blocks of consecutive calls (the blocks alternate between methods, so drift hits all alike):
    ``warm loop`` - the same frame again and again (it stays in the last-level cache: how a library is usually
    timed); ``8 frames in rotation`` - a different frame each call, read from memory, as a camera's frames are.
    -> (rows, target checks: <= 0.5 ms in the warm loop for every format, and the brief's ratios in the same run:
    it measured OpenCV's INTER_AREA path at 4.5-5.4 ms and torchvision's antialiased resize of RGB at 1.0 ms
    when it set 0.5 ms, so >= 10.8x OpenCV and >= 2x torchvision).

    The machine this project runs on changes speed from hour to hour (OpenCV's row took 4.5-5.4 ms when the
    brief was written, 7.4-11 ms in later sessions), so the run checks the ratios as well as the absolute figure."""
    import cv2
    from metaedge import kernels
    cv2.setNumThreads(1)
    try:
        import torchvision  # noqa: F401
        have_tv = True
    except ImportError:
        have_tv = False
    h, w = FRAMES["1080p"]
    color, size, mean, std = OUTPUTS["3x224x224"]
    rounds, block = (2, 10) if args.quick else (6, 25)
    rows, checks = [], []
    tv_warm = None
    for fmt in FORMATS:
        base = make_frame(rng, fmt, h, w)
        frames = [base] + [np.ascontiguousarray(np.roll(base, 6 * i, axis=0)) for i in range(1, 8)]
        pre = kernels.Preprocessor(size, mean=mean, std=std, color=color, pixel_format=fmt, antialias=True)
        makers = {"metaedge": lambda f, pre=pre: (lambda: pre.frame_batch(f)),
                  "opencv": lambda f, fmt=fmt: opencv_fn(cv2, f, fmt, color, size, mean, std, True, "squeeze")}
        if have_tv and fmt in ("rgb", "bgr"):
            makers["torchvision"] = lambda f, fmt=fmt: torchvision_fn(f, fmt, size, mean, std, True)
        calls = {m: [make(f) for f in frames] for m, make in makers.items()}
        times = {(m, mode): [] for m in calls for mode in ("warm loop", "8 frames in rotation")}
        for _ in range(rounds):
            for m, fns in calls.items():
                for _ in range(3):
                    fns[0]()
                for _ in range(block):
                    t0 = time.perf_counter()
                    fns[0]()
                    times[(m, "warm loop")].append(time.perf_counter() - t0)
                for i in range(block):
                    fn = fns[1 + i % 7]
                    t0 = time.perf_counter()
                    fn()
                    times[(m, "8 frames in rotation")].append(time.perf_counter() - t0)
        medians = {key: 1e3 * statistics.median(t) for key, t in times.items()}
        for (m, mode), ms in medians.items():
            rows.append({"case": f"1080p {fmt} -> 3x224x224", "format": fmt, "mode": mode, "method": m, "ms": ms})
        print(f"  1080p {fmt:<5} -> 3x224x224 antialiased: " +
              "  ".join(f"{m} {mode} {ms:.3f} ms" for (m, mode), ms in medians.items()), file=sys.stderr, flush=True)
        if fmt == "rgb" and "torchvision" in calls:
            tv_warm = next(r["ms"] for r in rows if r["format"] == "rgb" and r["method"] == "torchvision"
                           and r["mode"] == "warm loop")
    common.add_ratios(rows, group=("case", "mode"), reference="metaedge", out="x_metaedge")
    rgb = {r["mode"]: r["ms"] for r in rows if r["method"] == "metaedge" and r["format"] == "rgb"}
    for r in rows:  # a format's cost over RGB's, measured without another library's traffic in between
        if r["method"] == "metaedge" and r["mode"] in rgb:
            r["format_vs_rgb"] = r["ms"] / rgb[r["mode"]]
    for r in rows:
        if r["method"] == "metaedge" and r["mode"] == "warm loop":
            checks.append({"check": f"1080p {r['format']} -> 3x224x224 antialiased, warm loop", "value": r["ms"],
                           "unit": "ms", "target": "<= 0.5 ms", "ok": r["ms"] <= 0.5})
            cv = next(x["ms"] for x in rows if x["case"] == r["case"] and x["method"] == "opencv"
                      and x["mode"] == "warm loop")
            checks.append({"check": f"  opencv / metaedge, {r['format']} (warm loop)", "value": cv / r["ms"],
                           "unit": "x", "target": ">= 10.8x (5.4 / 0.5 ms)", "ok": cv / r["ms"] >= 10.8})
            if tv_warm is not None:
                ratio = tv_warm / r["ms"]
                checks.append({"check": f"  torchvision rgb / metaedge {r['format']} (warm loop)", "value": ratio,
                               "unit": "x", "target": ">= 2x (1.0 / 0.5 ms)", "ok": ratio >= 2.0})
    return rows, checks


def gpu_rows(args, rng) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from metaedge import kernels
    rows = []
    for frame_name, (h, w) in FRAMES.items():
        for out_name, (color, size, mean, std) in OUTPUTS.items():
            for fmt in ("rgb", "bgr", "nv12"):
                host = make_frame(rng, fmt, h, w)
                dev = torch.from_numpy(host).cuda()
                m = torch.tensor(mean, device="cuda").view(1, -1, 1, 1)
                s = torch.tensor(std, device="cuda").view(1, -1, 1, 1)
                luma = torch.tensor([0.299, 0.587, 0.114], device="cuda").view(1, 3, 1, 1)

                def torch_steps(dev=dev, fmt=fmt, color=color, size=size, m=m, s=s, luma=luma):
                    if fmt == "nv12":
                        y = dev[:h].float()
                        uv = dev[h:].view(h // 2, w // 2, 2).float().repeat_interleave(2, 0).repeat_interleave(2, 1)
                        u, v = uv[..., 0] - 128, uv[..., 1] - 128
                        yy = (y - 16) * (255 / 219)
                        x = torch.stack([yy + 1.596 * v, yy - 0.392 * u - 0.813 * v, yy + 2.017 * u])[None]
                    else:
                        x = dev.permute(2, 0, 1)[None].float()
                        if fmt == "bgr":
                            x = x.flip(1)
                    if color == "gray":
                        x = (x * luma).sum(1, keepdim=True)
                    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
                    return (x / 255.0 - m) / s

                def ours(dev=dev, fmt=fmt, color=color, size=size, mean=mean, std=std):
                    return kernels.preprocess(dev, size, mean=mean, std=std, color=color, pixel_format=fmt,
                                              antialias=True)

                fns = {"metaedge": lambda f=ours: (f(), torch.cuda.synchronize()),
                       "torch": lambda f=torch_steps: (f(), torch.cuda.synchronize())}
                times = common.time_interleaved(fns, repeats=args.repeats, max_seconds=args.max_seconds)
                case = f"gpu {frame_name} {fmt} -> {out_name}"
                for method, t in times.items():
                    rows.append({"case": case, "frame": frame_name, "format": fmt, "output": out_name,
                                 "antialias": True, "resize": "squeeze", "method": method, "ms": t["median_ms"]})
    common.add_ratios(rows, group=("case",), reference="metaedge", out="x_metaedge")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=os.path.join("out", "bench", "preprocess.json"))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (same cases)")
    parser.add_argument("--gpu", action="store_true", help="the GPU cases (metaedge CUDA vs torch) instead")
    args = parser.parse_args(argv)
    args.repeats, args.max_seconds = (15, 1.5) if args.quick else (60, 6.0)
    rng = np.random.default_rng(0)
    rows = gpu_rows(args, rng) if args.gpu else cpu_rows(args, rng)
    loops, checks = ([], []) if args.gpu else loop_rows(args, rng)
    columns = [("case", "case", "{}"), ("resize", "resize", "{}"), ("antialias", "antialias", "{}"),
               ("method", "method", "{}"), ("ms", "ms", "{:.3f}"), ("x_metaedge", "x metaedge", "{:.2f}")]
    if not args.gpu:
        columns.append(("format_vs_rgb", "vs RGB", "{:.2f}"))
    common.print_table(rows, columns, title="frame pre-processing, one core" if not args.gpu else "on the GPU")
    if loops:
        common.print_table(loops, [("case", "case", "{}"), ("mode", "mode", "{}"), ("method", "method", "{}"),
                                   ("ms", "ms", "{:.3f}"), ("x_metaedge", "x metaedge", "{:.2f}"),
                                   ("format_vs_rgb", "vs RGB", "{:.2f}")],
                           title="1080p -> 3x224x224 antialiased: warm loop and camera-like frames, one core")
        common.print_table(checks, [("check", "check", "{}"), ("value", "value", "{:.2f}"),
                                    ("target", "target", "{}"), ("ok", "ok", "{}")], title="targets")
    common.write_json(args.json, {"environment": common.environment(), "results": rows, "loops": loops,
                                  "checks": checks})
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
