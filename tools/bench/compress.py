#!/usr/bin/env python3
"""Compressed backbones side by side: few-shot accuracy, model size and ONNX Runtime CPU latency of bundle
files (fp32, fp16, INT8, pruned, distilled ...), all measured in one run - the README's compression table
(tools/compress_protocol.sh drives it).

Each row is ``LABEL=BUNDLE[@PRECISION]`` (precision fp32 | fp16 | int8: model.onnx, model.fp16.onnx,
model.int8.onnx). Accuracy: the evaluation images are embedded by each file through ONNX Runtime, each bundle
pre-processing the raw images with its own spec (the device's path), then every row is scored on the same
seeded N-way 1-shot episodes (nearest prototype, the bundle's metric) - so differences between rows are
paired, and the table gives each row's difference from the first with the CI of the per-episode differences.
Latency: one ONNX Runtime CPU session per file (``--threads`` intra-op threads), batch 1 and 32 of real
inputs, interleaved round by round; the best round is reported (other processes only add time), the median
is in the JSON. Speed-ups are against the first row.

    python tools/bench/compress.py --row fp32=B --row int8=B@int8 ... [--data omniglot:ROOT --sets S
        --alphabets A,B] [--episodes 1000] [--ways 5 20] [--threads N] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tools.bench import common  # noqa: E402

FILES = {"fp32": "model", "fp16": "fp16_model", "int8": "int8_model"}
EVAL_ALPHABETS = "Japanese_(katakana),Sanskrit,Tagalog"


def parse_row(text: str) -> tuple[str, str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected LABEL=BUNDLE[@PRECISION], got {text!r}")
    label, rest = text.split("=", 1)
    bundle, _, precision = rest.partition("@")
    precision = precision or "fp32"
    if precision not in FILES:
        raise argparse.ArgumentTypeError(f"{text!r}: precision must be one of {tuple(FILES)}")
    return label, bundle, precision


def load_eval_images(source: str, sets: list[str] | None, alphabets: list[str] | None):
    """Raw uint8 images at their native size (each bundle resizes them itself) and labels."""
    from metaedge.train.data import Omniglot
    if not source.startswith("omniglot"):
        raise SystemExit("--data: only omniglot[:ROOT] is supported by this benchmark")
    root = source.split(":", 1)[1] if ":" in source else None
    ds = Omniglot(root, sets=sets, alphabets=alphabets, size=105, invert=True)
    return ds.raw_images(), ds.labels.numpy(), repr(ds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", type=parse_row, action="append", required=True, metavar="LABEL=BUNDLE[@P]")
    parser.add_argument("--data", default="omniglot:" + os.environ.get("METAEDGE_OMNIGLOT",
                                                                         str(ROOT.parent / "shared/data/omniglot")))
    parser.add_argument("--sets", default="images_background_small2")
    parser.add_argument("--alphabets", default=EVAL_ALPHABETS)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--ways", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: cores)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per file per round")
    parser.add_argument("--out", default="runs/bench/compress.json")
    args = parser.parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    common.pin_threads(threads)
    import numpy as np
    import onnxruntime as ort

    from metaedge.export.verify import ci95, episode_accuracies
    from metaedge.runtime.bundle import Bundle
    from tools.bench.backbones import measure

    raw, labels, described = load_eval_images(args.data, args.sets.split(",") if args.sets else None,
                                              args.alphabets.split(",") if args.alphabets else None)
    print(f"evaluating on {described}; {args.episodes} episodes per setting; {threads} threads", flush=True)
    rows, embeddings, sessions, metrics = [], [], {}, set()
    for label, path, precision in args.row:
        bundle = Bundle.load(path)
        entry = bundle.manifest.get(FILES[precision])
        if entry is None:
            raise SystemExit(f"{label}: bundle {path} has no {precision} model")
        file = bundle.path / entry["file"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        spec = bundle.spec
        x = spec.preprocess.apply(raw)
        emb = np.concatenate([session.run([spec.output_name], {spec.input_name: x[i:i + 64]})[0]
                              for i in range(0, len(x), 64)])
        embeddings.append(emb)
        metrics.add(spec.metric)
        sessions[label] = (session, spec, x[:32])
        rows.append({"model": label, "bundle": str(path), "precision": precision, "file": entry["file"],
                     "backbone": spec.backbone, "embedding_dim": spec.embedding_dim,
                     "size_mib": round(file.stat().st_size / 2**20, 2)})
        print(f"  embedded with {label}: {entry['file']} of {path}", flush=True)
    if len(metrics) > 1:
        print(f"note: rows use different metrics {sorted(metrics)}; each row is scored with its own")
    for ways in args.ways:
        acc = np.stack([episode_accuracies([e], labels, metric=sessions[r["model"]][1].metric, ways=ways, shots=1,
                                           queries=args.queries, episodes=args.episodes, seed=args.seed)[0]
                        for e, r in zip(embeddings, rows)])
        for k, row in enumerate(rows):
            row[f"acc{ways}"], row[f"ci{ways}"] = float(acc[k].mean()), ci95(acc[k])
            diff = acc[k] - acc[0]
            row[f"delta{ways}"], row[f"delta{ways}_ci"] = float(diff.mean()), ci95(diff)
    for batch in (1, 32):
        calls = {}
        for label, (session, spec, x) in sessions.items():
            inp = np.ascontiguousarray(x[np.arange(batch) % len(x)])
            calls[label] = (lambda s=session, n=spec.input_name, o=spec.output_name, v=inp: s.run([o], {n: v}))
        samples = measure(calls, args.rounds, args.min_time)
        for row in rows:
            row[f"b{batch}_ms"] = min(samples[row["model"]]) * 1e3
            row[f"b{batch}_median_ms"] = statistics.median(samples[row["model"]]) * 1e3
    for row in rows:
        for batch in (1, 32):
            row[f"speedup_b{batch}"] = rows[0][f"b{batch}_ms"] / row[f"b{batch}_ms"]
    print()
    print("| model | file | MiB | " + " | ".join(f"{w}-way 1-shot (95% CI)" for w in args.ways)
          + " | 5-way vs first (paired) | ms b=1 | ms b=32 | x faster b=1 | x faster b=32 |")
    print("|---" * (8 + len(args.ways)) + "|")
    for r in rows:
        accs = " | ".join(f"{100 * r[f'acc{w}']:.2f} +- {100 * r[f'ci{w}']:.2f}%" for w in args.ways)
        w0 = args.ways[0]
        print(f"| {r['model']} | {r['file']} | {r['size_mib']:.1f} | {accs} | "
              f"{100 * r[f'delta{w0}']:+.2f} +- {100 * r[f'delta{w0}_ci']:.2f} | {r['b1_ms']:.2f} | "
              f"{r['b32_ms']:.1f} | {r['speedup_b1']:.2f} | {r['speedup_b32']:.2f} |")
    common.write_json(args.out, {"environment": common.environment(), "threads": threads, "data": described,
                                 "episodes": args.episodes, "results": rows})
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
