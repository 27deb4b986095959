"""Float64 references for the compact class matrix, written from docs/matching.md without looking at the kernels:
the per-row int8 quantisation, its error terms, and the two-pass search (bounds -> candidates -> exact top-k)."""
import numpy as np

from tests.reference import topk as topk_ref

CODE_MAX = 127


def scored_rows(x, metric):
    """The vectors the codes approximate: the rows (dot, euclidean) or the unit rows (cosine; zero rows stay 0)."""
    x = np.asarray(x, np.float64)
    if metric != "cosine":
        return x.copy()
    peak = np.abs(x).max(axis=1, keepdims=True) if x.shape[1] else np.zeros((len(x), 1))
    scaled = np.divide(x, peak, out=np.zeros_like(x), where=peak > 0)
    norms = np.linalg.norm(scaled, axis=1, keepdims=True)
    return np.divide(scaled, norms, out=np.zeros_like(x), where=norms > 0)


def quantise(x, metric, code_max=CODE_MAX, center=None):
    """Per row, for v = scored row - center: scale = float32(max|v| / code_max), codes = round-half-even(v / scale)
    clipped to +-code_max (0 for v = 0), err = ||v - scale codes||, code_norm = ||scale codes||, all float64;
    norm = ||scored row|| (dot, cosine) or ||v|| (euclidean), the norm the kernel's round-off slack uses."""
    scored = scored_rows(x, metric)
    v = scored - (0.0 if center is None else np.asarray(center, np.float64))
    peak = np.abs(v).max(axis=1) if v.shape[1] else np.zeros(len(v))
    scale = (peak / code_max).astype(np.float32).astype(np.float64)
    codes = np.zeros(v.shape, np.int64)
    nz = scale > 0
    codes[nz] = np.clip(np.rint(v[nz] / scale[nz, None]), -code_max, code_max).astype(np.int64)
    approx = scale[:, None] * codes
    norm = np.linalg.norm(v if metric == "euclidean" else scored, axis=1)
    return {"codes": codes, "scale": scale, "err": np.linalg.norm(v - approx, axis=1),
            "code_norm": np.linalg.norm(approx, axis=1), "norm": norm, "v": v}


def unpack_codes(codes, meta, count, dim):
    """The kernel layout (codes [G, S, 16, 4] as code + 128, meta [G, 4, 16]) back to per-class arrays."""
    codes = np.asarray(codes)
    G, S = codes.shape[:2]
    per_class = codes.transpose(0, 2, 1, 3).reshape(G * 16, S * 4).astype(np.int64) - 128
    terms = np.asarray(meta, np.float64).transpose(0, 2, 1).reshape(G * 16, 4)
    return {"codes": per_class[:count, :dim], "padding": per_class[:count, dim:], "scale": terms[:count, 0],
            "err": terms[:count, 1], "code_norm": terms[:count, 2], "norm": terms[:count, 3],
            "empty_codes": per_class[count:], "empty_terms": terms[count:]}


def bounds(queries, rows, metric, query_code_max=CODE_MAX, center=None):
    """(approx[b, C], radius[b, C], exact[b, C]) in float64: |exact - approx| <= radius. With v = scored row -
    center and w = the query (dot), the unit query (cosine) or query - center (euclidean), the score is
    w . v + w . center, or 2 w . v - ||v||^2 - ||w||^2 for euclidean, and by Cauchy-Schwarz
    |w . v - (s_q c_q) . (s c)| <= ||w|| ||v - s c|| + ||w - s_q c_q|| ||s c||  (twice that for euclidean)."""
    mu = np.zeros(np.shape(rows)[1]) if center is None else np.asarray(center, np.float64)
    rx = quantise(rows, metric, center=mu)
    if metric == "euclidean":
        rq = quantise(queries, "dot", query_code_max, center=mu)  # w = q - center
    else:
        rq = quantise(queries, metric, query_code_max)            # w = q or the unit query
    w = rq["v"]
    approx = (rq["scale"][:, None] * rq["codes"]) @ (rx["scale"][:, None] * rx["codes"]).T
    radius = np.linalg.norm(w, axis=1)[:, None] * rx["err"][None, :] + rq["err"][:, None] * rx["code_norm"][None, :]
    exact = topk_ref.score_matrix(queries, rows, metric)
    if metric == "euclidean":
        v = rx["v"]
        approx = 2 * approx - (v * v).sum(1)[None, :] - (w * w).sum(1)[:, None]
        radius = 2 * radius
    else:
        approx = approx + (w @ mu)[:, None]
    return approx, radius, exact


def two_pass_topk(queries, rows, k, metric, query_code_max=CODE_MAX, center=None):
    """The search: L = k-th largest lower bound, candidates = {upper >= L}, top-k of the exact scores among
    them. Returns (scores[b, k], indices[b, k], candidates: list of index arrays, full exact score matrix)."""
    approx, radius, exact = bounds(queries, rows, metric, query_code_max, center)
    lower, upper = approx - radius, approx + radius
    out_s, out_i, cands = [], [], []
    for i in range(len(exact)):
        L = np.sort(lower[i])[::-1][k - 1]
        cand = np.flatnonzero(upper[i] >= L)
        order = cand[np.argsort(-exact[i, cand], kind="stable")][:k]
        out_s.append(exact[i, order])
        out_i.append(order)
        cands.append(cand)
    return np.array(out_s), np.array(out_i), cands, exact
