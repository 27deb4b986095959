"""Float64 reference for topk, written from docs/architecture.md section 5 without looking at the kernels: the full
score matrix, then a stable sort (scores descending, ties to the lower class index)."""
import numpy as np


def _normalize_rows(x):
    """Rows divided by their norm; zero rows stay zero (their cosine with anything is 0)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def score_matrix(queries, protos, metric):
    """[b, C] float64 scores: cosine similarity, dot product, or minus the squared euclidean distance."""
    q = np.asarray(queries, dtype=np.float64)
    p = np.asarray(protos, dtype=np.float64)
    if metric == "cosine":
        # Scale each row by its largest magnitude first so that 1e30-sized rows do not overflow float64 squares.
        def safe_normalize(x):
            peak = np.abs(x).max(axis=1, keepdims=True) if x.shape[1] else np.zeros((x.shape[0], 1))
            scaled = np.divide(x, peak, out=np.zeros_like(x), where=peak > 0)
            return _normalize_rows(scaled)
        return safe_normalize(q) @ safe_normalize(p).T
    if metric == "dot":
        return q @ p.T
    if metric == "euclidean":
        # Directly, one query at a time (no cancellation, and no b x C x d temporary).
        out = np.empty((len(q), len(p)))
        for i, row in enumerate(q):
            diff = p - row
            out[i] = -np.einsum("cd,cd->c", diff, diff)
        return out
    raise ValueError(metric)


def topk(queries, protos, k, metric):
    """(scores[b, k] float64, indices[b, k] int64) and the full score matrix, for checking returned indices."""
    s = score_matrix(queries, protos, metric)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order, s
