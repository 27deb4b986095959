"""Recall and pruning of the compact class matrix on real trained embeddings and on adversarial near-ties.

The compact path is exact by proof (docs/matching.md); this measures that it is on data that was not made to
be easy, and how many classes the first pass leaves for the float32 re-scoring ("fp32 rows": the cost of
exactness), which decides its speed on real galleries.

Real embeddings: a Conv-4 ProtoNet with a 512-d projection, meta-trained here for --train-seconds on Omniglot
small1 (4 rotations as extra classes; or --checkpoint DIR of an EmbeddingModel checkpoint), embeds every
image of both Omniglot sets with 4 rotations and mirror images (~46,000 glyphs, ~2,300 characters). Galleries:
  per-image   every glyph is a class row: 20 drawers of each character are near-duplicates, the hardest
              realistic gallery (a field gallery where nearly identical items are enrolled separately);
  prototypes  class means (what metaedge enrolls).
Queries: 500 glyphs of the data set re-drawn with a random affine (shift, rotation, scale), embedded.
Adversarial (random 100k x 512 background, 20 queries each):
  near-ties   1,000 rows within 1e-3 / 1e-5 (relative) of the query's best match, below the int8 step;
  duplicates  the best match repeated 200 times;
  zero query  cosine with a zero query (every score 0: no class can be ruled out).
For each: recall@1 and recall@5 against metaedge.kernels.topk of each query (the float32 path, compared by
index: the compact path promises the same indices), fp32 rows (median / 99th percentile / max) and how many
queries fell back to the whole-matrix scan.

    python tools/bench/compact_recall.py --json out/compact_recall.json
"""
from __future__ import annotations

import argparse
import os
import sys
import time


from metaedge.bench import common

K = 5
METRICS = ("cosine", "dot", "euclidean")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(name: str, rows, queries, metric: str) -> dict:
    import numpy as np

    from metaedge import kernels
    matrix = kernels.CompactClassMatrix.from_rows(rows, metric, method="compact")
    scores, indices, fp32_rows = matrix.topk_with_stats(queries, K)
    want = [kernels.topk(q[None], rows, K, metric) for q in queries]
    want_s = np.concatenate([s for s, _ in want])
    want_i = np.concatenate([i for _, i in want])
    recall5 = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(indices.tolist(), want_i.tolist())]))
    return {"gallery": name, "metric": metric, "classes": len(rows), "dim": rows.shape[1], "queries": len(queries),
            "recall@1": float(np.mean(indices[:, 0] == want_i[:, 0])), "recall@5": recall5,
            "identical": bool(np.array_equal(indices, want_i) and np.array_equal(scores, want_s)),
            "fp32_rows_median": float(np.median(fp32_rows)), "fp32_rows_p99": float(np.percentile(fp32_rows, 99)),
            "fp32_rows_max": int(fp32_rows.max()), "whole_matrix": int(np.sum(fp32_rows == len(rows)))}


def real_embeddings(args):
    import numpy as np
    import torch

    from metaedge import train
    from metaedge.train.augment import Augment
    from metaedge.train.data import Omniglot
    from metaedge.train.evaluate import embed_dataset
    root = args.omniglot
    if args.checkpoint:
        model = train.load_checkpoint(args.checkpoint)
    else:
        log(f"training conv4 + 512-d projection (ProtoNet) on Omniglot small1 for {args.train_seconds} s")
        base = Omniglot(root, sets="images_background_small1", rotations=(0, 90, 180, 270))
        model = train.fit(backbone="conv4", method="protonet", data=base, backbone_options={"embedding_dim": 512},
                          ways=20, shots=5, queries=5, episodes=100_000, time_budget_s=args.train_seconds,
                          progress=False, tensorboard=False, seed=0)
    data = Omniglot(root, rotations=(0, 90, 180, 270), mirror=True)
    log(f"embedding {len(data)} glyphs of {data.num_classes} characters")
    emb = embed_dataset(model, data)
    labels = data.labels.numpy()
    protos = np.stack([emb[labels == c].mean(0) for c in range(data.num_classes)]).astype(np.float32)
    gen = torch.Generator().manual_seed(1)
    pick = torch.randperm(len(data), generator=gen)[:args.queries]
    augment = Augment(degrees=10, translate=0.1, scale=(0.9, 1.1))
    with torch.no_grad():
        model.eval()
        queries = model(data.batch(pick, augment=augment, generator=gen)).float().numpy()
    return np.ascontiguousarray(emb, np.float32), protos, np.ascontiguousarray(queries, np.float32)


def adversarial(rng):
    import numpy as np
    C, d = 100_000, 512
    background = rng.standard_normal((C, d)).astype(np.float32)
    queries = rng.standard_normal((20, d)).astype(np.float32)
    cases = []
    for eps in (1e-3, 1e-5):
        rows = background.copy()
        slots = rng.choice(C, size=(20, 50), replace=False)  # 1,000 rows: 50 near each query's direction
        for q, s in zip(queries, slots):
            rows[s] = 3 * q + eps * np.linalg.norm(q) * rng.standard_normal((len(s), d)).astype(np.float32) / np.sqrt(d)
        cases.append((f"near-ties {eps:g}", rows, queries))
    rows = background.copy()
    rows[rng.choice(C, size=200, replace=False)] = 3 * queries[0]
    cases.append(("200 duplicates", rows, queries[:1]))
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--omniglot", default=os.environ.get("METAEDGE_OMNIGLOT",
                                                              os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                                                           "shared", "data", "omniglot")),
                        help="folder with the Omniglot zips (default: $METAEDGE_OMNIGLOT or ../../shared/data/omniglot)")
    parser.add_argument("--checkpoint", help="an EmbeddingModel checkpoint to embed with instead of training one")
    parser.add_argument("--train-seconds", type=float, default=120.0, help="training time budget (default 120)")
    parser.add_argument("--queries", type=int, default=500, help="real-embedding queries (default 500)")
    parser.add_argument("--embeddings", metavar="NPZ", help="reuse the embeddings saved by --save-embeddings (skips "
                        "training and embedding)")
    parser.add_argument("--save-embeddings", metavar="NPZ", help="save the embeddings (gallery, prototypes, queries)")
    parser.add_argument("--json", default=os.path.join("out", "compact_recall.json"), help="where to write JSON")
    args = parser.parse_args(argv)
    common.pin_threads(2)
    import numpy as np
    started = time.time()
    rows_out = []
    if args.embeddings:
        with np.load(args.embeddings) as saved:
            emb, protos, queries = saved["gallery"], saved["prototypes"], saved["queries"]
    else:
        emb, protos, queries = real_embeddings(args)
    if args.save_embeddings:
        np.savez(args.save_embeddings, gallery=emb, prototypes=protos, queries=queries)
    for name, gallery in (("Omniglot per-image", emb), ("Omniglot prototypes", protos)):
        for metric in METRICS:
            log(f"  {name} {metric}")
            rows_out.append(measure(name, gallery, queries, metric))
    rng = np.random.default_rng(7)
    for name, rows, qs in adversarial(rng):
        for metric in METRICS:
            log(f"  {name} {metric}")
            rows_out.append(measure(name, rows, qs, metric))
    zero = rng.standard_normal((20_000, 512)).astype(np.float32)
    rows_out.append(measure("zero query", zero, np.zeros((1, 512), np.float32), "cosine"))
    common.print_table(rows_out, [("gallery", "gallery", "{}"), ("metric", "metric", "{}"),
                                  ("classes", "classes", "{}"), ("dim", "d", "{}"), ("queries", "queries", "{}"),
                                  ("recall@1", "recall@1", "{:.3f}"), ("recall@5", "recall@5", "{:.3f}"),
                                  ("identical", "identical to fp32", "{}"),
                                  ("fp32_rows_median", "fp32 rows median", "{:.0f}"),
                                  ("fp32_rows_p99", "p99", "{:.0f}"), ("fp32_rows_max", "max", "{}"),
                                  ("whole_matrix", "whole-matrix", "{}")],
                       title=f"compact class matrix: exact top-{K} recall and float32 rows re-scored")
    payload = {"environment": common.environment(), "rows": rows_out, "seconds": time.time() - started,
               "train_seconds": None if args.checkpoint else args.train_seconds}
    common.write_json(args.json, payload)
    print(f"results written to {args.json}")
    return 0 if all(r["identical"] for r in rows_out) else 1


if __name__ == "__main__":
    sys.exit(main())
