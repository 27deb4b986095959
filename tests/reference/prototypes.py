"""Float64 references for l2_normalize, class_prototypes and update_prototypes, written from docs/architecture.md
section 5 without looking at the kernels."""
import numpy as np


def l2_normalize(x, eps=1e-12):
    x = np.asarray(x, dtype=np.float64)
    norms = np.sqrt((x * x).sum(axis=1, keepdims=True)) if x.size else np.zeros((x.shape[0], 1))
    return x / np.maximum(norms, eps)


def class_prototypes(emb, labels, num_classes):
    emb = np.asarray(emb, dtype=np.float64)
    labels = np.asarray(labels)
    protos = np.zeros((num_classes, emb.shape[1]))
    counts = np.zeros(num_classes, dtype=np.int64)
    for c in range(num_classes):
        rows = emb[labels == c]
        counts[c] = len(rows)
        if len(rows):
            protos[c] = rows.mean(axis=0)
    return protos, counts


def update_prototypes(protos, counts, emb, labels):
    protos = np.asarray(protos, dtype=np.float64).copy()
    counts = np.asarray(counts).copy()
    emb = np.asarray(emb, dtype=np.float64)
    for c in np.unique(labels):
        rows = emb[labels == c]
        protos[c] = (protos[c] * counts[c] + rows.sum(axis=0)) / (counts[c] + len(rows))
        counts[c] += len(rows)
    return protos, counts
