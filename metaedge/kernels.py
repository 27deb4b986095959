"""The Python face of metaedge's native ops (semantics: DESIGN.md section 5).

Every function takes numpy arrays (-> the C++ CPU kernels) or CUDA arrays (-> the CUDA kernels): a
``metaedge.cuda.DeviceArray`` or any object with ``__cuda_array_interface__`` (torch, CuPy), passed without a
copy. Results come back on the device of the inputs: numpy arrays for numpy inputs, DeviceArrays for CUDA.

At this boundary numpy inputs are coerced: float64/float16 -> float32 where float32 is computed (float16
prototypes and queries are accepted; on the CPU they are upcast), any integer labels -> int64, non-contiguous
-> contiguous. In-place arguments are never copied silently: they must already be float32/int64 C-contiguous
writable arrays. Wrong shapes, dtypes, NaN/Inf values and labels out of range raise ``ValueError`` or
``TypeError`` naming the argument, what was expected and what was got.
"""
from __future__ import annotations

import math
import operator
from typing import Sequence

import numpy as np

from metaedge._native import native

__all__ = ["l2_normalize", "class_prototypes", "update_prototypes", "topk", "PrototypeMatcher",
           "CompactClassMatrix", "adapt_head", "preprocess", "Preprocessor", "as_rois", "METRICS", "COLOR_MODES",
           "PIXEL_FORMATS", "RESIZE_MODES", "YUV_MATRICES"]

METRICS = ("cosine", "dot", "euclidean")
COLOR_MODES = ("keep", "gray", "rgb")
PIXEL_FORMATS = ("gray", "rgb", "bgr", "rgba", "bgra", "nv12", "yuyv")
RESIZE_MODES = ("squeeze", "letterbox", "center_crop")
YUV_MATRICES = ("bt601", "bt709", "bt601-full", "bt709-full")


def _is_cuda(x) -> bool:
    # numpy, then DeviceArray: the two common cases, tested by type alone. hasattr() evaluates the interface
    # property, which costs microseconds for torch tensors.
    if type(x) is np.ndarray:
        return False
    return getattr(type(x), "_metaedge_device_array", False) or hasattr(x, "__cuda_array_interface__")


def _cuda():
    from metaedge import cuda
    return cuda


def _same_side(**arrays) -> bool:
    """True when the arrays are CUDA arrays, False when none is; a mix raises ValueError naming both sides."""
    on_gpu = [name for name, a in arrays.items() if _is_cuda(a)]
    if not on_gpu:
        return False
    on_host = [name for name, a in arrays.items() if not _is_cuda(a) and a is not None]
    if on_host:
        raise ValueError(f"`{on_host[0]}` is a host array but `{on_gpu[0]}` is a CUDA array: pass all arrays on "
                         "the same device (metaedge.cuda.DeviceArray.from_numpy(x) moves one to the GPU, "
                         ".to_numpy() brings one back)")
    return True


def _float_input(x, name: str, allow_half: bool = False) -> np.ndarray:
    """numpy input -> C-contiguous float32 (or float16 when allowed and on the GPU path)."""
    if isinstance(x, (list, tuple)):
        x = np.asarray(x, dtype=np.float32)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"`{name}`: expected a numpy array or a CUDA array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"`{name}`: expected a floating-point array (float32; float64/float16 are converted), "
                        f"got dtype {x.dtype}")
    if allow_half and x.dtype == np.float16:
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def _label_input(y, name: str) -> np.ndarray:
    if isinstance(y, (list, tuple)):
        y = np.asarray(y)
        if y.size == 0:
            y = y.astype(np.int64)
    if not isinstance(y, np.ndarray):
        raise TypeError(f"`{name}`: expected a numpy array of integer labels, got {type(y).__name__}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"`{name}`: expected integer labels, got dtype {y.dtype}")
    return np.ascontiguousarray(y, dtype=np.int64)


def _inplace(x, name: str, dtype) -> None:
    if _is_cuda(x):
        return
    if not isinstance(x, np.ndarray):
        raise TypeError(f"`{name}`: expected a numpy array (updated in place), got {type(x).__name__}")
    if x.dtype != dtype or not x.flags.c_contiguous or not x.flags.writeable:
        raise TypeError(f"`{name}` is updated in place, so it must be a writable C-contiguous {np.dtype(dtype)} "
                        f"array; got dtype {x.dtype}, contiguous={x.flags.c_contiguous}, "
                        f"writable={x.flags.writeable}")


def _empty_like_device(ref, shape, dtype):
    """An output array on the device of `ref`."""
    if _is_cuda(ref):
        return _cuda().DeviceArray.empty(shape, dtype, like=ref)
    return np.empty(shape, dtype=dtype)


def l2_normalize(x, eps: float = 1e-12):
    """Rows of ``x[n, d]`` divided by ``max(||row||, eps)``; returns a new ``[n, d]`` float32 array.

    Robust to huge and tiny magnitudes (the norm is computed with scaling, so 1e30 rows don't overflow).
    """
    if not _is_cuda(x):
        x = _float_input(x, "x")
    shape = tuple(x.shape) if not _is_cuda(x) else _cuda().shape_of(x)
    out = _empty_like_device(x, shape, np.float32)
    native().l2_normalize(x, out, float(eps))
    return out


def class_prototypes(emb, labels, num_classes: int):
    """Class means of ``emb[n, d]`` grouped by ``labels[n]`` in ``[0, num_classes)``.

    Returns ``(protos[num_classes, d] float32, counts[num_classes] int64)``; a class with no sample gets a
    zero row and count 0. Labels outside ``[0, num_classes)`` raise ValueError (never a silent NaN row).
    """
    if not _same_side(emb=emb, labels=labels):
        emb = _float_input(emb, "emb")
        labels = _label_input(labels, "labels")
        d = emb.shape[1] if emb.ndim == 2 else 0
    else:
        shape = _cuda().shape_of(emb)
        d = shape[1] if len(shape) == 2 else 0  # the native checker reports the bad shape
    num_classes = int(num_classes)
    if num_classes < 0:
        raise ValueError(f"`num_classes`: expected >= 0, got {num_classes}")
    protos = _empty_like_device(emb, (num_classes, d), np.float32)
    counts = _empty_like_device(emb, (num_classes,), np.int64)
    native().class_prototypes(emb, labels, num_classes, protos, counts)
    return protos, counts


def update_prototypes(protos, counts, emb, labels) -> None:
    """Fold new embeddings into running class means, in place and exactly:
    ``p <- (p * n + sum(e)) / (n + m)``, ``counts += m`` for each class that receives ``m`` new rows.

    ``protos[C, d]`` (float32) and ``counts[C]`` (int64) must be writable C-contiguous arrays.
    """
    _same_side(protos=protos, counts=counts, emb=emb, labels=labels)
    _inplace(protos, "protos", np.float32)
    _inplace(counts, "counts", np.int64)
    if not _is_cuda(emb):
        emb = _float_input(emb, "emb")
        labels = _label_input(labels, "labels")
    native().update_prototypes(protos, counts, emb, labels)


def topk(queries, protos, k: int = 1, metric: str = "cosine"):
    """The ``k`` best classes for each query.

    ``queries[b, d]`` (or ``[d]``), ``protos[C, d]``; float32, float16 accepted. ``metric``: ``"cosine"``
    (rows normalised inside, exactly; a zero row scores 0), ``"dot"``, or ``"euclidean"`` (score = minus the
    squared distance). Returns ``(scores[b, k] float32, indices[b, k] int64)`` with scores descending and ties
    broken towards the lower class index (``[k]`` each for a 1-d query). ``1 <= k <= C``. The ``b x C`` score
    matrix is never materialised for large C.

    NaN/Inf in ``queries`` or ``protos`` raise ValueError naming the array (and the prototype row). Scores must
    be representable in float32: with ``"dot"``/``"euclidean"`` and magnitudes around 1e19 or more, the
    scores (or squared norms) overflow and a ValueError says so; ``"cosine"`` handles any finite rows down to
    norms of about 1e-30.
    """
    if (type(queries) is np.ndarray and type(protos) is np.ndarray and queries.dtype == np.float32
            and protos.dtype == np.float32 and queries.ndim == 2 and type(k) is int and k >= 1
            and queries.flags.c_contiguous and protos.flags.c_contiguous):
        # the per-frame case, without the conversions below; the native checker still checks everything
        scores = np.empty((queries.shape[0], k), np.float32)
        indices = np.empty((queries.shape[0], k), np.int64)
        native().topk(queries, protos, k, metric, scores, indices)
        return scores, indices
    if metric not in METRICS:
        raise ValueError(f"`metric`: expected one of {METRICS}, got {metric!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"`k`: expected an integer, got {type(k).__name__} {k!r}") from None
    squeeze = False
    if not _same_side(queries=queries, protos=protos):
        queries = _float_input(queries, "queries")
        protos = _float_input(protos, "protos")
        if queries.ndim == 1:
            queries, squeeze = queries[None, :], True
        b = queries.shape[0] if queries.ndim else 0
    else:
        shape = _cuda().shape_of(queries)
        if len(shape) == 1:
            queries, squeeze = _cuda().as_device_array(queries).reshape(1, shape[0]), True
            shape = (1, shape[0])
        b = shape[0] if shape else 0
    # k is validated against C by the native checker, with a message naming it; a negative k must not reach
    # the allocation first.
    scores = _empty_like_device(queries, (b, max(k, 0)), np.float32)
    indices = _empty_like_device(queries, (b, max(k, 0)), np.int64)
    native().topk(queries, protos, k, metric, scores, indices)
    if squeeze:
        return scores[0], indices[0]
    return scores, indices



class PrototypeMatcher:
    """:func:`topk` against one fixed class matrix, for a device app that scores frame after frame against the
    same classes (``EdgeClassifier`` keeps one per gallery snapshot). CPU only.

    ``PrototypeMatcher(protos, metric)`` checks the shape of ``protos[C, d]`` (at least one class), converts it
    to float32 and keeps a second, packed copy of it (groups of 16 classes, one class per SIMD lane; unit rows
    for cosine): single frames and small batches are scored from that copy without a horizontal sum or a
    norm per class, which is what bounds the row-major scoring of short embeddings (about 2.5x faster
    scoring at d = 64). Larger batches use the row-major matrix and the blocked sgemm, as :func:`topk`
    does. Memory: twice the class matrix. Above 8 MiB of class matrix (e.g. 4,096 x 512 or 32,768 x 64) it
    keeps no packed copy (``packed`` says so): scoring then streams from memory, where the layout does not
    matter, and the matcher only saves :func:`topk`'s per-call conversions.

    ``matcher.topk(queries, k)`` returns what ``topk(queries, protos, k, metric)`` returns, within float32
    rounding (scores are summed in another order; ties between equal classes still go to the lower index),
    NaN/Inf in ``protos`` included: found while scoring, they raise ValueError naming the row. Packing costs
    about as much as a few :func:`topk` calls, so a matcher pays off from a handful of calls on.
    ``copy=False`` uses ``protos`` itself when it already is a C-contiguous float32 array: the caller then
    promises not to change it (the packed copy would not follow).

    ``topk_float32(queries, k)`` is the per-frame call with nothing in between: C-contiguous float32
    ``[b, d]`` queries and an int ``k`` go straight to the native kernel, which checks them (anything else
    raises instead of being converted).
    """

    def __init__(self, protos, metric: str = "cosine", copy: bool = True):
        if metric not in METRICS:
            raise ValueError(f"`metric`: expected one of {METRICS}, got {metric!r}")
        if _is_cuda(protos):
            raise TypeError("`protos`: PrototypeMatcher is the CPU path and takes a numpy array, got a CUDA array "
                            f"({type(protos).__name__}); use metaedge.kernels.topk with CUDA arrays")
        given = protos
        protos = _float_input(protos, "protos")
        if copy and isinstance(given, np.ndarray) and np.may_share_memory(protos, given):
            protos = protos.copy()  # (a view of the caller's memory, subclasses and memmaps included)
        if protos.ndim != 2:
            raise ValueError(f"`protos`: expected a 2-d array [C, d], got shape {list(protos.shape)}")
        if protos.shape[0] == 0:
            raise ValueError("`protos`: expected at least one class, got shape [0, d]")
        self.metric = metric
        self._protos = protos
        self._bound = native().BoundTopk(protos, metric)  # packs its own copy (when it pays)
        self.topk_float32 = self._bound.topk

    @property
    def protos(self) -> np.ndarray:
        """The ``[C, d]`` float32 class matrix (read-only view)."""
        view = self._protos.view()
        view.flags.writeable = False
        return view

    @property
    def packed(self) -> bool:
        """Whether it keeps the packed copy: only up to an 8 MiB class matrix (above, scoring streams the
        matrix from memory and the layout no longer matters, so it would only cost memory)."""
        return self._bound.packed

    @property
    def num_classes(self) -> int:
        return self._protos.shape[0]

    @property
    def dim(self) -> int:
        return self._protos.shape[1]

    def topk(self, queries, k: int = 1):
        """The ``k`` best classes for each of ``queries[b, d]`` (or ``[d]``): ``(scores, indices)`` as
        :func:`topk` returns them."""
        if not (type(queries) is np.ndarray and queries.dtype == np.float32 and queries.ndim == 2
                and type(k) is int and k >= 1 and queries.flags.c_contiguous):
            if _is_cuda(queries):
                raise TypeError("`queries`: PrototypeMatcher is the CPU path and takes numpy arrays, got a CUDA "
                                f"array ({type(queries).__name__})")
            try:
                k = operator.index(k)
            except TypeError:
                raise TypeError(f"`k`: expected an integer, got {type(k).__name__} {k!r}") from None
            queries = _float_input(queries, "queries")
            if queries.ndim == 1:
                scores, indices = self.topk(queries[None, :], k)
                return scores[0], indices[0]
        return self.topk_float32(queries, k)

    def __repr__(self) -> str:
        return f"PrototypeMatcher({self.num_classes} classes x {self.dim}, metric={self.metric!r})"

def adapt_head(weights, support, labels, steps: int = 100, lr: float = 0.1, momentum: float = 0.9,
               weight_decay: float = 0.0, scale: float = 10.0, velocity=None):
    """Fine-tune a cosine classifier head in place; returns the loss of each step (``[steps]`` float32).

    Logits are ``scale * normalize(W) @ normalize(S).T`` (``normalize``: rows divided by
    ``max(||row||, 1e-12)``), the loss is the mean softmax cross-entropy over ``support[n, d]`` with
    ``labels[n]`` in ``[0, C)``, and ``weights[C, d]`` takes ``steps`` steps of SGD with momentum using the
    exact gradient of that loss (PyTorch's convention: ``v <- momentum * v + g + weight_decay * W``;
    ``W <- W - lr * v``). The gradient is the one torch autograd gives for ``F.normalize``: for a row with
    ``||W_c|| >= 1e-12`` it is ``(G_c - Wn_c (Wn_c . G_c)) / ||W_c||`` with ``G_c`` the gradient w.r.t. the
    normalised row ``Wn_c``; below the clamp it is ``G_c / 1e-12``, so an all-zero row (a class without
    prototype) gets a large first step. ``losses[i]`` is the loss before step ``i``'s update; ``lr = 0``
    with ``steps = 1`` evaluates the loss at the given weights without changing them. Pass the same
    ``velocity[C, d]`` (float32, zeros at first) to continue an earlier run exactly. Starting from prototypes
    this is weight imprinting followed by fine-tuning, and ``topk(metric="cosine")`` then uses the adapted
    weights directly.

    All steps run in one native call. On the CPU the kernel picks, by flop count, between the direct
    algorithm (two ``n x C x d`` products per step) and an exact reformulation in the span of the
    normalised support rows (one ``n x n x C`` product per step; faster when ``n < 2 d``, the few-shot case,
    and handing the remaining steps to the direct one if steps grow far larger than ``||W_c||``); both agree
    with a float64 reference to float32 rounding. ``METAEDGE_ADAPT_HEAD_ALGO=direct|span`` forces the first
    choice (diagnostics).
    """
    _same_side(weights=weights, support=support, labels=labels, velocity=velocity)
    _inplace(weights, "weights", np.float32)
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"`steps`: expected >= 0, got {steps}")
    if velocity is None:
        if _is_cuda(weights):
            velocity = _cuda().DeviceArray.zeros(_cuda().shape_of(weights), np.float32, like=weights)
        else:
            velocity = np.zeros_like(weights)
    else:
        _inplace(velocity, "velocity", np.float32)
    if not _is_cuda(support):
        support = _float_input(support, "support")
        labels = _label_input(labels, "labels")
    losses = _empty_like_device(weights, (steps,), np.float32)
    native().adapt_head(weights, velocity, support, labels, steps, float(lr), float(momentum),
                        float(weight_decay), float(scale), losses)
    return losses


def _setting_values(values, name: str) -> list[float]:
    """A mean/std setting as a flat list of floats (one value, or one per output channel)."""
    # plain numbers and tuples (what PreprocessSpec holds) without numpy: preprocess() runs this once per call
    if type(values) in (float, int):
        return [float(values)]
    if isinstance(values, (tuple, list)) and values and all(type(v) in (float, int) for v in values):
        return [float(v) for v in values]
    try:
        arr = np.atleast_1d(np.asarray(values, dtype=np.float64)).ravel()
    except (TypeError, ValueError):
        raise TypeError(f"`{name}`: expected a number or a sequence of numbers, got {values!r}") from None
    if arr.size == 0:
        raise ValueError(f"`{name}`: expected 1 value or one per output channel, got none")
    return [float(v) for v in arr]


def _per_channel(values, channels: int, name: str) -> list[float]:
    """A mean/std setting expanded to one value per output channel."""
    flat = _setting_values(values, name)
    if len(flat) == 1:
        return flat * channels
    if len(flat) != channels:
        raise ValueError(f"`{name}`: expected 1 or {channels} values (one per output channel), got {len(flat)}")
    return flat


def _preprocess_settings(size, color: str) -> tuple[int, int]:
    """Checks ``color``; returns ``size`` as ``(height, width)`` ints."""
    if color not in COLOR_MODES:
        raise ValueError(f"`color`: expected one of {COLOR_MODES}, got {color!r}")
    try:
        height, width = size
        return int(height), int(width)
    except (TypeError, ValueError):
        raise ValueError(f"`size`: expected (height, width), got {size!r}") from None


def _check_choice(value, choices: Sequence[str], name: str) -> str:
    if value not in choices:
        raise ValueError(f"`{name}`: expected one of {tuple(choices)}, got {value!r}")
    return value


def _pad_value(pad) -> float:
    try:
        value = float(pad)
    except (TypeError, ValueError):
        raise TypeError(f"`pad`: expected a pixel value in [0, 255], got {pad!r}") from None
    if not 0.0 <= value <= 255.0:
        raise ValueError(f"`pad`: expected a pixel value in [0, 255], got {pad!r}")
    return value


def as_rois(rois) -> np.ndarray | None:
    """Boxes ``(x, y, w, h)`` in pixels - one box, or a sequence/array ``[n, 4]`` (e.g. a detector's) - as the
    C-contiguous int64 ``[n, 4]`` array the kernels take; ``None`` stays ``None``. Fractional coordinates are a
    TypeError (round them first: ``np.round(boxes).astype(int)``)."""
    if rois is None:
        return None
    arr = rois if isinstance(rois, np.ndarray) else np.asarray(rois)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.array_equal(arr, np.round(arr)):
            arr = arr.astype(np.int64)
        elif arr.size or arr.dtype.kind not in "f":
            raise TypeError(f"`roi`: expected integer pixel boxes (x, y, w, h), got dtype {arr.dtype} (round "
                            f"fractional boxes first: np.round(boxes).astype(int))")
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"`roi`: expected a box (x, y, w, h) or [n, 4] boxes, got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def preprocess(frames, size: Sequence[int], mean=0.0, std=1.0, color: str = "keep", invert: bool = False, *,
               pixel_format: str = "auto", resize: str = "squeeze", antialias: bool = False, pad=0,
               yuv_matrix: str = "bt601", rois=None):
    """uint8 frames -> float32 CHW network input, in one fused pass.

    ``frames``: uint8 frames laid out as ``pixel_format`` says, one frame or a batch (leading axis ``b``):

    ======================  ===================================  ==========================================
    ``pixel_format``        one frame                            pixels
    ======================  ===================================  ==========================================
    ``"gray"``              ``[h, w]`` or ``[h, w, 1]``          luma (a batch is ``[b, h, w, 1]``)
    ``"rgb"`` / ``"bgr"``   ``[h, w, 3]``                        R,G,B / B,G,R (OpenCV's order)
    ``"rgba"`` / ``"bgra"`` ``[h, w, 4]``                        alpha is ignored
    ``"nv12"``              ``[h * 3 / 2, w]``, h and w even     h rows of Y, then h/2 rows of U,V pairs
                                                                 (one pair per 2x2 pixels: Jetson CSI)
    ``"yuyv"``              ``[h, w, 2]``, w even                Y0 U Y1 V per pixel pair (USB UVC cameras)
    ``"auto"``              by the channel count: 1 gray, 3 rgb, 4 rgba (``[h, w]``: gray)
    ======================  ===================================  ==========================================

    Rows may be padded (any row stride with contiguous pixels, e.g. a crop ``frame[y0:y1, x0:x1]``: no copy);
    other layouts (``frame[..., ::-1]``) are copied. NV12/YUYV are converted with ``yuv_matrix``: ``"bt601"``
    (default: limited range, as OpenCV's ``COLOR_YUV2RGB_NV12``), ``"bt709"``, ``"bt601-full"``,
    ``"bt709-full"``; the chroma of a pixel is its 2x2 (NV12) or 2x1 (YUYV) site's; converted values are not
    clipped to 0..255.

    ``rois``: ``None`` (whole frames) or boxes ``(x, y, w, h)`` on one frame (``[n, 4]``, see :func:`as_rois`),
    each inside the frame; the output has one image per box.

    Per output image: the region (whole frame or box) is fitted to ``size = (H, W)`` by ``resize``:
    ``"squeeze"`` (stretched), ``"letterbox"`` (scaled by ``min(H/h, W/w)``, content ``round(h*s) x round(w*s)``
    centred, the rest filled with ``pad``, a pixel value 0..255 in the network's colour before inversion) or
    ``"center_crop"`` (the centred ``round(H/s) x round(W/s)`` crop of the region with ``s = max(H/h, W/w)``:
    torchvision's ``Resize`` + ``CenterCrop`` for square inputs); rounding is half up, centring offsets are
    floored. Sampling per axis: with ``antialias`` and a shrink of more than 2x, blocks of ``f = floor(in/out)``
    pixels (at most 256) are averaged first (box ``j`` = pixels ``[j f, min(j f + f, in))``: PIL's ``reduce``),
    then bilinear interpolation with half-pixel centres (output ``o`` samples box coordinate
    ``(o + 0.5) * in / (out * f) - 0.5``, clamped at 0) - without ``antialias`` it is plain bilinear (the same
    as ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)`` and
    ``cv2.resize(..., INTER_LINEAR)`` up to OpenCV's 8-bit rounding).

    Colour: the network's channels are ``color``: ``"gray"`` (ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B),
    ``"rgb"`` (gray replicated), or ``"keep"`` (gray frames stay gray, every other format becomes RGB). Then
    optional inversion (``255 - x``, e.g. Omniglot strokes = 1), ``/ 255`` and ``(x - mean) / std`` per output
    channel (``mean``/``std``: one value, or one per output channel; ``std > 0``).

    Returns float32 ``[n, C, H, W]`` (``[C, H, W]`` for a single frame without ``rois``), on the device of
    ``frames`` (numpy, or a DeviceArray for CUDA arrays).
    """
    height, width = _preprocess_settings(size, color)
    _check_choice(pixel_format, ("auto",) + PIXEL_FORMATS, "pixel_format")
    _check_choice(resize, RESIZE_MODES, "resize")
    _check_choice(yuv_matrix, YUV_MATRICES, "yuv_matrix")
    pad = _pad_value(pad)
    boxes = as_rois(rois)
    if not _is_cuda(frames) and not isinstance(frames, np.ndarray):
        raise TypeError(f"`frames`: expected a uint8 numpy array or a CUDA array, got {type(frames).__name__}")
    lib = native()
    n, channels, _, _ = lib.preprocess_output_shape(frames, pixel_format, boxes, height, width, color)
    single = boxes is None and n == 1 and _is_single_frame(frames, pixel_format)
    out = _empty_like_device(frames, (n, channels, height, width), np.float32)
    lib.preprocess(frames, pixel_format, boxes, height, width, color, _per_channel(mean, channels, "mean"),
                   _per_channel(std, channels, "std"), bool(invert), resize, bool(antialias), pad, yuv_matrix, out)
    return out[0] if single else out


def _is_single_frame(images, pixel_format: str) -> bool:
    """One frame rather than a batch (batches have a leading axis; gray batches are ``[b, h, w, 1]``)."""
    ndim = len(_cuda().shape_of(images)) if _is_cuda(images) else images.ndim
    return ndim == 2 or (ndim == 3 and pixel_format != "nv12")


class Preprocessor:
    """:func:`preprocess` with its settings bound once, for the per-frame path of a device app
    (``EdgeClassifier`` uses one, built from the bundle's ``PreprocessSpec``).

    ``Preprocessor(size, mean, std, color, invert, pixel_format=..., resize=..., antialias=..., pad=...,
    yuv_matrix=...)(frames, rois=None, pixel_format=None)`` returns what :func:`preprocess` returns for host
    frames; ``pixel_format`` overrides the bound one for one call. The settings are checked here, once, and
    converted for the native kernel. CUDA frames take :func:`preprocess`.

    ``frame_batch(frames, rois=None, pixel_format=None)`` is the per-frame call with nothing in between: host
    frames (one, or a batch) -> ``[n, C, H, W]`` float32 from the native kernel, which checks them (a frame is a
    batch of one); ``rois`` must already be what :func:`as_rois` returns.
    """

    def __init__(self, size: Sequence[int], mean=0.0, std=1.0, color: str = "keep", invert: bool = False, *,
                 pixel_format: str = "auto", resize: str = "squeeze", antialias: bool = False, pad=0,
                 yuv_matrix: str = "bt601"):
        self.size = _preprocess_settings(size, color)
        self.color, self.invert = color, bool(invert)
        self.mean, self.std = mean, std
        self.pixel_format = _check_choice(pixel_format, ("auto",) + PIXEL_FORMATS, "pixel_format")
        self.resize = _check_choice(resize, RESIZE_MODES, "resize")
        self.antialias = bool(antialias)
        self.pad = _pad_value(pad)
        self.yuv_matrix = _check_choice(yuv_matrix, YUV_MATRICES, "yuv_matrix")
        mean_values = _setting_values(mean, "mean")
        std_values = _setting_values(std, "std")
        if not all(math.isfinite(v) for v in mean_values):
            raise ValueError(f"`mean`: expected finite values, got {mean!r}")
        if not all(math.isfinite(v) and v > 0 for v in std_values):
            raise ValueError(f"`std`: expected finite values > 0, got {std!r}")
        self._native = native().BoundPreprocess(self.size[0], self.size[1], color, mean_values, std_values,
                                                self.invert, self.pixel_format, self.resize, self.antialias,
                                                self.pad, self.yuv_matrix)
        self.frame_batch = self._native.__call__

    def settings(self) -> dict:
        """The keyword arguments of :func:`preprocess` this object applies."""
        return {"size": self.size, "mean": self.mean, "std": self.std, "color": self.color, "invert": self.invert,
                "pixel_format": self.pixel_format, "resize": self.resize, "antialias": self.antialias,
                "pad": self.pad, "yuv_matrix": self.yuv_matrix}

    def __call__(self, frames, rois=None, pixel_format: str | None = None):
        boxes = as_rois(rois)
        fmt = self.pixel_format if pixel_format is None else pixel_format
        if type(frames) is np.ndarray:
            out = self._native(frames, boxes, fmt)
            return out[0] if boxes is None and out.shape[0] == 1 and _is_single_frame(frames, fmt) else out
        settings = self.settings()
        settings["pixel_format"] = fmt
        return preprocess(frames, rois=boxes, **settings)

    def __repr__(self) -> str:
        return (f"Preprocessor(size={self.size}, mean={self.mean!r}, std={self.std!r}, color={self.color!r}, "
                f"invert={self.invert}, pixel_format={self.pixel_format!r}, resize={self.resize!r}, "
                f"antialias={self.antialias}, pad={self.pad:g}, yuv_matrix={self.yuv_matrix!r})")


# The class matrix with its compact copy lives in its own module (metaedge.compact); it is part of this face.
from metaedge.compact import CompactClassMatrix  # noqa: E402 - needs the helpers above
