"""EdgeClassifier: enroll new classes from a few images, classify frames, adapt, never lose what was learned.

Every image takes one route, the classifier's :class:`~metaedge.runtime.pipeline.FramePipeline`: the native
pre-processing (pixel format, regions of interest, the bundle's resize policy; on the GPU when the backend's
output lives there) -> backend embeddings -> top-k against the gallery's class matrix (prototypes, or the
adapted cosine head after :meth:`EdgeClassifier.adapt`). A camera frame (a uint8 array) goes straight in;
paths, PIL images and lists are decoded and grouped into batches first (:mod:`metaedge.runtime.images`).

Thread safety: one classifier may be shared by threads. ``predict`` takes no lock: it scores against an
immutable snapshot of the class matrix (copy-on-write; appending a class reuses spare rows, so it costs no
copy), so a prediction always sees the classes as they were before or after a concurrent ``enroll`` /
``forget`` / ``rename`` / ``adapt`` / ``save``, never a mix. Changes are transactions of the gallery's store,
serialised across threads and processes; ``adapt`` trains without holding the gallery. Changes other processes
commit are seen at the next ``predict``. The backend must allow concurrent ``embed`` calls (ONNX Runtime and
TensorRT contexts used by metaedge do).

No torch anywhere on this path.
"""
from __future__ import annotations

import math
import os
import threading
import time
from typing import Any, Callable, Mapping

import numpy as np

from metaedge import kernels
from metaedge.runtime.adaptation import EmptyGalleryError, check_hyperparameters, train_head
from metaedge.runtime.backends.base import Backend
from metaedge.runtime.classifier_setup import (check_backend, default_threshold, load_bundle, open_gallery,
                                               preprocess_device)
from metaedge.runtime.gallery import DEFAULT_SUPPORT_CAP, ClassInfo, ClassMatrix, check_label
from metaedge.runtime.images import ImageError, decode_single, is_single_image, to_groups
from metaedge.runtime.openset import (OTHER_IMAGES, OpenSetState, calibration_groups, confidence, open_set_state,
                                      resolve_threshold, score_meaning)
from metaedge.runtime.pipeline import FramePipeline, frame_is_single
from metaedge.runtime.results import AdaptReport, CalibrationReport, Prediction, Timings
from metaedge.runtime.spec import ModelSpec

__all__ = ["EdgeClassifier", "Prediction", "AdaptReport", "CalibrationReport", "Timings", "EmptyGalleryError"]

_UINT8 = np.dtype(np.uint8)
_UNSET: Any = object()


def _to_host(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "to_numpy"):
        return x.to_numpy()
    return np.asarray(x)


def _check_not_empty(frames, boxes, pixel_format: str) -> None:
    if boxes is not None and len(boxes) == 0:
        raise ImageError("`roi`: no boxes given")
    if boxes is None and not frame_is_single(frames, pixel_format) and frames.shape[0] == 0:
        raise ImageError("images: empty batch (0 images)")


def _concat(embs: list):
    """Embeddings of the chunks of one call as one array (host arrays; device chunks come back to the host)."""
    if len(embs) == 1:
        return embs[0]
    return np.concatenate([_to_host(e) for e in embs])


class EdgeClassifier:
    """Few-shot classifier on a device: a bundle's network + a gallery of enrolled classes.

    ``bundle``: a bundle directory, a ``metaedge.Bundle``, or an already-open ``Backend`` (then ``spec`` - the
    ``ModelSpec`` - is required and ``fingerprint`` identifies the network for the gallery).
    ``gallery``: ``None`` (in memory), a file path (the gallery store there, created if missing, shared with
    any other process that opens it; every change is committed before the call returns) or a ``Gallery``.
    ``autosave`` is kept for compatibility (changes are always committed).
    ``backend``: ``"auto"`` (TensorRT > ONNX Runtime CUDA > ONNX Runtime CPU > torch), a backend name, or a
    ``Backend`` instance. ``unknown_threshold``: scores below it are ``unknown``; by default the gallery's
    calibrated threshold (see :meth:`calibrate_unknown`), else the bundle manifest's, else open-set detection
    is off; ``None`` turns it off. ``support_cap``/``seed``: support memory per class kept for :meth:`adapt`
    (new galleries only). ``max_batch``: images per backend call.

    Camera frames: ``pixel_format`` is the layout of the uint8 arrays passed in (``"auto"``: gray, RGB or RGBA
    by channel count; ``"bgr"`` for OpenCV, ``"nv12"`` / ``"yuyv"`` for raw camera buffers - see
    ``metaedge.kernels.preprocess``); a call may name another. ``yuv_matrix``: how NV12/YUYV frames convert to
    RGB. ``resize_mode``: ``None`` keeps the bundle's resize policy (what it was trained with); ``"letterbox"``
    or ``"center_crop"`` fit frames of another shape without stretching them.

    ``matching``: how the class matrix is scored - ``"auto"`` (default, or ``METAEDGE_MATCHING``): float32 for
    small galleries, the compact int8 copy with an exact re-rank from 1 MiB of classes (``metaedge.compact``);
    ``"compact"`` or ``"fp32"`` to force one. Results are the same either way.
    """

    def __init__(self, bundle, gallery=None, backend="auto", unknown_threshold=_UNSET, *,
                 spec: ModelSpec | None = None, fingerprint: str | None = None, autosave: bool = True,
                 support_cap: int = DEFAULT_SUPPORT_CAP, seed: int = 0, max_batch: int = 32,
                 backend_options: Mapping[str, Any] | None = None, pixel_format: str = "auto",
                 resize_mode: str | None = None, yuv_matrix: str = "bt601", matching: str | None = None):
        self._owns_backend = False
        self._owns_gallery = False
        legacy_fingerprints: tuple[str, ...] = ()
        self._backend: Backend | None = None
        self._closed = False
        self._local = threading.local()
        self.bundle = None
        manifest: dict = {}
        if isinstance(bundle, Backend):
            if spec is None:
                raise TypeError("EdgeClassifier(backend_instance, ...): pass spec=ModelSpec(...) describing its input "
                                "and embeddings")
            self._backend = bundle
        else:
            bundle_obj = load_bundle(bundle)
            self.bundle = bundle_obj
            spec = spec or bundle_obj.spec
            fingerprint = fingerprint or bundle_obj.fingerprint
            legacy_fingerprints = (bundle_obj.onnx_sha256,)  # what galleries of metaedge 0.1 recorded
            manifest = dict(getattr(bundle_obj, "manifest", None) or {})
            if isinstance(backend, Backend):
                self._backend = backend
            else:
                from metaedge.runtime.backends import open_backend
                self._backend = open_backend(bundle_obj, backend=backend, **dict(backend_options or {}))
                self._owns_backend = True
        try:
            if not isinstance(spec, ModelSpec):
                raise TypeError(f"`spec`: expected a metaedge.runtime.spec.ModelSpec, got {type(spec).__name__}")
            self.spec = spec.validate()
            check_backend(self._backend, self.spec)
            if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
                raise ValueError(f"`max_batch`: expected an int >= 1, got {max_batch!r}")
            self.max_batch = max_batch
            self.fingerprint = fingerprint
            self.gallery, self._owns_gallery = open_gallery(gallery, self.spec, fingerprint, autosave=autosave,
                                                            support_cap=support_cap, seed=seed,
                                                            legacy_fingerprints=legacy_fingerprints)
            if matching is not None:
                from metaedge.compact import MATCHING_METHODS
                if matching not in MATCHING_METHODS:
                    raise ValueError(f"`matching`: expected one of {MATCHING_METHODS}, got {matching!r}")
                self.gallery.matching = matching
            self._manifest_threshold = default_threshold(manifest, self.spec)
            self._threshold_override = _UNSET
            if unknown_threshold is not _UNSET:
                self.unknown_threshold = unknown_threshold
            self._pre_device = preprocess_device(self._backend)
            self._pipeline = FramePipeline(self.spec, self._backend, pixel_format=pixel_format,
                                           resize_mode=resize_mode, yuv_matrix=yuv_matrix, device=self._pre_device,
                                           max_batch=max_batch)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ properties
    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def pipeline(self) -> FramePipeline:
        """The route every image takes (pixel format, resize policy, pre-processing, network, top-k)."""
        return self._pipeline

    @property
    def pixel_format(self) -> str:
        """The layout assumed for uint8 arrays when a call names none."""
        return self._pipeline.pixel_format

    @property
    def labels(self) -> list[str]:
        """Enrolled class labels, in enrollment order."""
        return self.gallery.labels

    def __len__(self) -> int:
        return len(self.gallery)

    def __contains__(self, label) -> bool:
        return label in self.gallery

    def classes(self) -> list[ClassInfo]:
        """One ``ClassInfo`` per class: label, shots, support kept, enrolled/updated times, adapted."""
        return self.gallery.classes()

    @property
    def adapted(self) -> bool:
        return self.gallery.adapted

    @property
    def last_timings(self) -> Timings | None:
        """Timing split of this thread's last enroll/predict call, in milliseconds (``None`` before the first)."""
        return getattr(self._local, "timings", None)

    @property
    def unknown_threshold(self) -> float | None:
        """Scores below this are ``unknown`` (``None``: open-set detection off) - the threshold of the head in
        use. Set it to override the stored/manifest value; :meth:`calibrate_unknown` sets it from data and stores
        it in the gallery; :meth:`open_set` says where it comes from."""
        return self._threshold_for(self.gallery.adapted)

    def _threshold_for(self, adapted: bool) -> float | None:
        if self._threshold_override is not _UNSET:
            return self._threshold_override
        return resolve_threshold(adapted, self.gallery.metric, self.gallery.thresholds, self._manifest_threshold)[0]

    def open_set(self) -> OpenSetState:
        """The open-set state: the head predictions use, its threshold and where it comes from (calibrated,
        re-calibrated after adapt, set by hand, the bundle manifest's, an override, or off), and each head's
        stored record (``OpenSetState.explain()`` says it in one line)."""
        adapted, thresholds, record = self.gallery.open_set_record()
        return open_set_state(adapted=adapted, metric=self.gallery.metric, thresholds=thresholds, record=record,
                              manifest=self._manifest_threshold, override=self._threshold_override,
                              overridden=self._threshold_override is not _UNSET)

    @property
    def score_meaning(self) -> str:
        """What the scores of predictions mean now (depends on the bundle's metric and on adaptation)."""
        return score_meaning("cosine" if self.gallery.adapted else self.gallery.metric)

    @unknown_threshold.setter
    def unknown_threshold(self, value) -> None:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise TypeError(f"`unknown_threshold`: expected a number or None, got {type(value).__name__}")
            if not math.isfinite(float(value)):
                raise ValueError(f"`unknown_threshold`: expected a finite number, got {value}")
            value = float(value)
        self._threshold_override = value

    def __repr__(self) -> str:
        return (f"EdgeClassifier({self.spec.backbone}, backend={self._backend.describe() if self._backend else None}, "
                f"{len(self.gallery)} classes, adapted={self.gallery.adapted})")

    # ------------------------------------------------------------------ the pipeline
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this EdgeClassifier is closed")

    def _route(self, images, roi, pixel_format):
        """-> (boxes, pixel format, frames) for the direct route (a uint8 frame or batch, or a CUDA array), or
        (None, None, None) for the general one (files, PIL images, lists)."""
        fmt = self._pipeline.pixel_format if pixel_format is None else pixel_format
        boxes = None if roi is None else kernels.as_rois(roi)
        if (type(images) is np.ndarray and images.dtype is _UINT8) or kernels._is_cuda(images):
            return boxes, fmt, images
        if boxes is not None:
            raise TypeError(f"`roi`: boxes apply to one frame given as a uint8 array, got {type(images).__name__}")
        return None, fmt, None

    def _embed(self, images, roi=None, pixel_format=None) -> tuple[int, list, list, list[float]]:
        """-> (n, [index arrays], [embeddings on the backend's device], [load, preprocess, network] seconds)."""
        t0 = time.perf_counter()
        if roi is not None and isinstance(images, (list, tuple)):  # the same boxes in each of several frames
            parts = [self._embed(frame, roi, pixel_format) for frame in images]
            if not parts:
                raise ImageError("images: got an empty collection; pass at least one image")
            n = sum(p[0] for p in parts)
            embs = np.concatenate([self._host_embeddings(*p[:3]) for p in parts])
            return n, [np.arange(n, dtype=np.int64)], [embs], [sum(p[3][i] for p in parts) for i in range(3)]
        boxes, fmt, frames = self._route(images, roi, pixel_format)
        if frames is not None:
            _check_not_empty(frames, boxes, fmt)
            embs, (t_pre, t_net) = self._pipeline.embed(frames, boxes, fmt)
            n = sum(int(e.shape[0]) for e in embs)
            return n, [np.arange(n, dtype=np.int64)], [_concat(embs)], [0.0, t_pre, t_net]
        n, groups = to_groups(images, self.max_batch, fmt)
        t_load = time.perf_counter() - t0
        embs, t_pre, t_net = [], 0.0, 0.0
        for group in groups:
            e, (a, b) = self._pipeline.embed(group.pixels, None, group.pixel_format)
            embs.append(_concat(e))
            t_pre, t_net = t_pre + a, t_net + b
        return n, [g.indices for g in groups], embs, [t_load, t_pre, t_net]

    @staticmethod
    def _check_finite(emb: np.ndarray, indices: np.ndarray) -> None:
        if np.isfinite(emb).all():  # one reduction on the hot path; the per-row search only on failure
            return
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            raise ValueError(f"image {int(indices[int(np.argmax(bad))])}: the network produced NaN/Inf embeddings "
                             f"(extreme pixel values, or a broken engine); nothing was changed")

    def _host_embeddings(self, n: int, groups, embs) -> np.ndarray:
        out = np.empty((n, self.spec.embedding_dim), np.float32)
        for indices, e in zip(groups, embs):
            e = _to_host(e)
            self._check_finite(e, indices)
            out[indices] = e
        return out

    def embed(self, images, *, roi=None, pixel_format: str | None = None) -> np.ndarray:
        """Embeddings ``[n, d]`` (float32, numpy) of the images - or of the boxes ``roi`` of one frame - in
        order, as the gallery stores them."""
        self._check_open()
        n, groups, embs, _ = self._embed(images, roi, pixel_format)
        return self._host_embeddings(n, groups, embs)

    def enroll(self, label: str, images, *, roi=None, pixel_format: str | None = None) -> ClassInfo:
        """Add images of ``label``: a new class, or more shots of an existing one (exact running mean of all its
        shots). ``roi``: the box(es) ``(x, y, w, h)`` of the object in a frame, or in each of a list of frames
        (each box of each frame is a shot).
        ``pixel_format``: the layout of uint8 frames (default: the classifier's). Returns the class's
        ``ClassInfo``. Any bad input raises before anything changes."""
        self._check_open()
        label = check_label(label)
        start = time.perf_counter()
        n, groups, embs, (t_load, t_pre, t_net) = self._embed(images, roi, pixel_format)
        emb = self._host_embeddings(n, groups, embs)
        t_k = time.perf_counter()
        with self.gallery.transaction():  # (one commit for the class and its info)
            self.gallery.add(label, emb)
            info = self.gallery.class_info(label)
            t_kernels = time.perf_counter() - t_k
        self._local.timings = Timings.from_seconds(t_load, t_pre, t_net, t_kernels, time.perf_counter() - start, n)
        return info

    def enroll_many(self, classes: Mapping[str, Any], *, pixel_format: str | None = None,
                    progress: Callable[[int, int, str], None] | None = None) -> list[ClassInfo]:
        """Enroll several classes at once - ``{label: images}`` - in one transaction: all of them or none (any
        bad label or image raises before anything changes). Each label is a new class or more shots of an
        existing one, as with :meth:`enroll`. ``progress(done, total, label)`` is called after each class is
        embedded. Returns the ``ClassInfo`` of each, in order; ``last_timings`` covers the whole call."""
        self._check_open()
        if not isinstance(classes, Mapping) or not classes:
            raise ValueError("`classes`: expected a non-empty {label: images} mapping")
        labels = [check_label(label) for label in classes]
        if len(set(labels)) != len(labels):
            raise ValueError("`classes`: two labels are the same after normalisation (NFC)")
        start = time.perf_counter()
        parts, spent = [], [0.0, 0.0, 0.0]
        for i, (label, images) in enumerate(zip(labels, classes.values())):
            n, groups, embs, times = self._embed(images, None, pixel_format)
            parts.append((label, self._host_embeddings(n, groups, embs)))
            spent = [a + b for a, b in zip(spent, times)]
            if progress is not None:
                progress(i + 1, len(labels), label)
        t_k = time.perf_counter()
        with self.gallery.transaction():
            for label, emb in parts:
                self.gallery.add(label, emb)
            infos = [self.gallery.class_info(label) for label in labels]
            t_kernels = time.perf_counter() - t_k
        self._local.timings = Timings.from_seconds(*spent, t_kernels, time.perf_counter() - start,
                                                   sum(len(e) for _, e in parts))
        return infos

    def predict(self, images, k: int = 1, *, roi=None, pixel_format: str | None = None):
        """Classify one image (-> ``Prediction``) or several (-> list of ``Prediction``, in order).

        ``k``: how many ``(label, score)`` pairs ``topk`` holds (capped at the number of classes).
        ``roi``: for one frame (a uint8 array), the region to classify - a box ``(x, y, w, h)`` (-> one
        ``Prediction``) or several (``[n, 4]``, e.g. a detector's boxes -> a list, scored in one native call);
        boxes outside the frame are a ``ValueError``. ``pixel_format``: the layout of uint8 frames (default:
        the classifier's, see the class docstring)."""
        self._check_open()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"`k`: expected an int >= 1, got {k!r}")
        start = time.perf_counter()
        snap: ClassMatrix = self.gallery.snapshot()
        if len(snap) == 0:
            raise EmptyGalleryError("predict(): no classes enrolled yet; enroll some first")
        kk = min(int(k), len(snap))
        boxes, fmt, frames = self._route(images, roi, pixel_format)
        t_load = 0.0
        if frames is None:  # one file, bytes or PIL image: decoded here, then on as a frame (no batch to build)
            t0 = time.perf_counter()
            frames = decode_single(images)
            fmt = "auto" if frames is not None else fmt
            t_load = time.perf_counter() - t0
        if frames is not None:
            # The real-time case: one frame (or a batch array, or boxes on a frame) straight into the pipeline.
            _check_not_empty(frames, boxes, fmt)
            scores, indices, (t_pre, t_net, t_k) = self._pipeline.topk(snap, frames, boxes, kk, fmt)
            preds = self._predictions(snap, scores, indices)
            self._local.timings = Timings.from_seconds(t_load, t_pre, t_net, t_k, time.perf_counter() - start,
                                                         len(preds))
            if boxes is not None:
                return preds if np.ndim(roi) == 2 else preds[0]
            return preds[0] if frame_is_single(frames, fmt) else preds
        single = is_single_image(images)
        t0 = time.perf_counter()
        n, groups = to_groups(images, self.max_batch, fmt)
        t_load = time.perf_counter() - t0
        scores = np.empty((n, kk), np.float32)
        indices = np.empty((n, kk), np.int64)
        t_pre = t_net = t_k = 0.0
        for group in groups:
            s, i, (a, b, c) = self._pipeline.topk(snap, group.pixels, None, kk, group.pixel_format)
            scores[group.indices], indices[group.indices] = s, i
            t_pre, t_net, t_k = t_pre + a, t_net + b, t_k + c
        preds = self._predictions(snap, scores, indices)
        self._local.timings = Timings.from_seconds(t_load, t_pre, t_net, t_k, time.perf_counter() - start, n)
        return preds[0] if single else preds

    def stream(self, source, *, roi=None, every=None, smooth: int = 1, k: int = 1, pixel_format: str | None = None,
               max_frames: int | None = None):
        """Classify the frames of ``source`` as they come: yields a ``StreamResult`` per frame (the frame, its
        predictions, whether it was classified, the loop's frames/s and the latency).

        ``source``: a URI (``"video.mp4"``, ``"/dev/video0"``, ``"rtsp://..."``, ``"csi://0"``, a folder; see
        ``metaedge.video.open_source``; opened and closed here) or an open ``FrameSource``. ``roi``: box(es) to
        classify in every frame. ``every``: classify every n-th frame (int, ``"3f"``) or at most every t seconds
        (float, ``"0.5s"``); frames in between carry the last predictions. ``smooth``: average the scores of
        the last n classified frames (a steadier label; the unknown state follows the averaged score).
        ``pixel_format``: overrides the source's. ``max_frames``: stop after that many frames."""
        self._check_open()
        from metaedge.runtime.stream import run_stream
        return run_stream(self, source, roi=roi, every=every, smooth=smooth, k=k, pixel_format=pixel_format,
                          max_frames=max_frames)

    def _predictions(self, snap: ClassMatrix, scores: np.ndarray, indices: np.ndarray) -> list[Prediction]:
        threshold = self._threshold_for(snap.adapted)
        labels = snap.labels
        conf = confidence(scores[:, 0], snap.metric)
        conf = [None] * len(scores) if conf is None else conf.tolist()
        preds = []
        for row_s, row_i, c in zip(scores.tolist(), indices.tolist(), conf):
            top = tuple((labels[j], s) for j, s in zip(row_i, row_s))
            preds.append(Prediction(top[0][0], top[0][1], top, threshold is not None and top[0][1] < threshold, c))
        return preds

    # ------------------------------------------------------------------ managing classes
    def forget(self, label: str) -> None:
        """Remove a class (KeyError - ``UnknownLabelError`` - if it is not enrolled)."""
        self._check_open()
        self.gallery.remove(label)

    def rename(self, old: str, new: str) -> None:
        self._check_open()
        self.gallery.rename(old, new)

    def save(self, path: str | os.PathLike | None = None) -> str:
        """Write the gallery atomically (to its own path by default); returns the path."""
        self._check_open()
        return self.gallery.save(path)

    # ------------------------------------------------------------------ adaptation
    def adapt(self, steps: int = 100, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
              scale: float = 10.0, progress: Callable[[int, int, float], None] | None = None) -> AdaptReport:
        """Fine-tune a cosine head on the stored support embeddings, starting from the (normalised)
        prototypes - weight imprinting + fine-tuning with ``metaedge.kernels.adapt_head`` - and use it for
        ``predict`` from now on. ``progress(step, steps, loss)`` is called as it goes. Classes enrolled later
        are imprinted into the head (their prototype); :meth:`reset_adaptation` returns to pure prototypes.

        Unknown rejection carries over: the new head's threshold is re-calibrated from the calibration set the
        gallery keeps (see :meth:`calibrate_unknown`) at the same target false-accept rate, in the transaction
        that installs the head; ``AdaptReport.threshold_source``/``open_set`` say what became of it.

        Measured on Omniglot (README): it helps backbones from supervised pre-training (``--method baseline``)
        a little and does not help meta-trained ones, whose prototypes are already what their episodes
        optimised."""
        self._check_open()
        options = check_hyperparameters(steps, lr, momentum, weight_decay, scale)
        start = time.perf_counter()
        # Read once, train without holding the gallery: other processes may enroll meanwhile; the classes they
        # change are imprinted into the head (as if enrolled after it), the others get the trained rows.
        training = self.gallery.training_set()
        weights, info, losses = train_head(training, progress=progress, **options)
        self.gallery.set_adapted(weights, info, expected_version=training.version, classes=training.uids)
        state = self.open_set()
        return AdaptReport(options["steps"], options["lr"], float(losses[0]), info["loss_after"],
                           time.perf_counter() - start, len(training.labels), int(info["support"]), tuple(losses),
                           state.threshold, state.source, state.explain())

    def reset_adaptation(self) -> None:
        """Drop the adapted head; ``predict`` uses the prototypes again."""
        self._check_open()
        self.gallery.clear_adapted()

    # ------------------------------------------------------------------ open set
    def calibrate_unknown(self, images_of_known, images_of_other=None, target_fpr: float = 0.05, *,
                          progress: Callable[[int, int], None] | None = None) -> CalibrationReport:
        """Set the open-set threshold from data so that about ``target_fpr`` of non-enrolled images are
        accepted as known, for every head (the prototypes, and the adapted head if there is one), and store it
        in the gallery together with the embeddings it was computed from - so that :meth:`adapt` re-calibrates
        the next head at the same rate. Returns the report for the head in use (``heads``: every head's).

        ``images_of_known``: ``{label: images}`` of enrolled classes (preferably not the enrolled shots), or a
        plain collection of images of enrolled classes. ``images_of_other``: images of objects that are
        none of the classes. Without them the negatives are *impostor* scores: for each labelled known image,
        its best score among the other classes (needs the ``{label: images}`` form and >= 2 classes).
        ``progress(done, total)`` is called after each group of images (a label's, the others) is embedded.
        """
        self._check_open()
        target_fpr, groups = calibration_groups(self.gallery, images_of_known, images_of_other, target_fpr)
        embedded = {}
        for i, (key, imgs) in enumerate(groups.items()):
            embedded[key] = self.embed(imgs)
            if progress is not None:
                progress(i + 1, len(groups))
        other = embedded.pop(OTHER_IMAGES, None)
        known = embedded.pop(None) if None in embedded else embedded
        heads = self.gallery.set_calibration(known, other, target_fpr)
        self._threshold_override = _UNSET
        mode = "adapted" if "adapted" in heads and self.gallery.adapted else "prototypes"
        r = heads[mode]
        return CalibrationReport(
            threshold=r.threshold, target_fpr=target_fpr, fpr=r.fpr, known_accept_rate=r.known_accept_rate,
            known_correct_rate=r.known_correct_rate, negatives=r.negatives, n_known=r.n_known,
            n_negative=r.n_negative, mode=mode, heads={h: c.summary() for h, c in heads.items()},
            score=score_meaning("cosine" if mode == "adapted" else self.gallery.metric),
            known_scores=r.known_scores, negative_scores=r.negative_scores)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Release the backend and the gallery (those this classifier opened). Every change to a gallery file was
        committed when its call returned. Idempotent."""
        self._closed = True
        if self._owns_backend and self._backend is not None:
            self._owns_backend = False
            self._backend.close()
        if self._owns_gallery:
            self._owns_gallery = False
            self.gallery.close()

    def __enter__(self) -> "EdgeClassifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
