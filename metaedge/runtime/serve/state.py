"""What one server process holds: its classifier, the audit seam, tokens, the rate limiter, metrics and the live
feed - built from a ``ServeConfig`` - and the mapping of library errors to API errors."""
from __future__ import annotations

import collections
import contextlib
import os
import time

from metaedge.runtime.serve.audit import AuditTrail
from metaedge.runtime.serve.config import ServeConfig, parse_rate
from metaedge.runtime.serve.errors import ApiError

__all__ = ["ServerState", "open_classifier", "api_errors", "INLINE_BELOW_S"]

# Work whose recent runs took less than this (the fastest of the last `_COST_WINDOW` runs of its kind) runs on the
# event loop itself: handing ~0.3 ms of decode + predict to a worker thread and back cost more than the work
# (thread hop + GIL hand-overs: 1 worker answered 600 requests/s of a 28x28 PNG at concurrency 32 through threads,
# 1,200-1,400 inline). The loop is held at most about this long per request; slower work (an enrollment's fsync,
# a resnet) goes to threads, where the network calls of several requests overlap. The fastest recent run, not an
# average: on a thread a cheap call is stretched by waiting for the GIL, and an average of stretched runs kept a
# cheap kind on threads for good (seen: 4 ms per 224x224 JPEG predict instead of 1.4 ms). (A first version that
# inlined only when a request was alone made two stable regimes too.)
INLINE_BELOW_S = 0.002
_COST_WINDOW = 16


def worker_threads(config: ServeConfig) -> int:
    """ONNX Runtime intra-op threads of each worker: ``--threads``, else the cores shared out among the network
    calls that may run at once (workers x concurrent calls each). A server's parallelism comes from concurrent
    requests; intra-op threads on top of that only contend (2 cores, a conv4: 1 thread x 4 calls serves 1.6x the
    requests of 2 threads x 4 calls, at the same latency for one client)."""
    if config.threads:
        return config.threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // (config.workers * config.inference_slots))


def open_classifier(config: ServeConfig):
    from metaedge.runtime.classifier import EdgeClassifier
    if not os.path.isdir(config.bundle):
        raise FileNotFoundError(f"{config.bundle}: not a bundle directory (make one with `metaedge export`)")
    clf = EdgeClassifier(config.bundle, gallery=config.gallery, backend=config.backend, autosave=True,
                         backend_options={"threads": worker_threads(config)}, resize_mode=config.resize_mode,
                         yuv_matrix=config.yuv_matrix)
    if config.threshold is not None:
        clf.unknown_threshold = config.threshold
    return clf


@contextlib.contextmanager
def api_errors():
    """Library exceptions -> ApiError with the right status."""
    from metaedge.runtime.classifier import EmptyGalleryError
    from metaedge.runtime.gallery import (GalleryError, GalleryReadOnlyError, GalleryWriteError, LabelConflictError,
                                          UnknownLabelError)
    from metaedge.runtime.images import ImageError
    try:
        yield
    except ApiError:
        raise
    except EmptyGalleryError as exc:
        raise ApiError(409, "empty_gallery", str(exc)) from None
    except UnknownLabelError as exc:
        raise ApiError(404, "unknown_class", str(exc)) from None
    except LabelConflictError as exc:
        raise ApiError(409, "class_exists", str(exc)) from None
    except GalleryReadOnlyError as exc:  # an old-format gallery file, opened read-only: convert it to change it
        raise ApiError(409, "read_only", str(exc)) from None
    except (GalleryWriteError, OSError) as exc:
        raise ApiError(503, "gallery_write", f"the gallery could not be written: {exc}") from None
    except ImageError as exc:
        raise ApiError(400, "bad_image", str(exc)) from None
    except GalleryError as exc:
        raise ApiError(500, "gallery_error", str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


class ServerState:
    """Everything a request handler needs. ``clf``: this process's classifier (several workers each open their
    own on the same gallery)."""

    def __init__(self, config: ServeConfig, clf):
        from metaedge import __version__
        from metaedge.runtime.serve.metrics import Metrics
        self.config = config
        self.clf = clf
        self.version = __version__
        self.started = time.time()
        self.audit = AuditTrail(clf.gallery)
        self.backend = clf.backend.describe()
        self.fingerprint = clf.fingerprint
        self.metrics = Metrics(backend=clf.backend.name if hasattr(clf.backend, "name") else self.backend,
                               fingerprint=self.fingerprint, version=__version__, gallery=config.gallery)
        self.metrics.classes.set(len(clf))
        self.tokens = None
        self.auth_at_start = False
        if config.tokens is not None:
            from metaedge.runtime.serve.tokens import TokenStore
            self.tokens = TokenStore(config.tokens)
            self.auth_at_start = self.tokens.exists()
            self.tokens.records()  # a damaged store fails here, at start, not at the first request
        self.limiter = None
        rate = parse_rate(config.rate_limit)
        if rate is not None and config.run_dir:
            from metaedge.runtime.serve.ratelimit import RateLimiter
            self.limiter = RateLimiter(os.path.join(config.run_dir, "ratelimit"), *rate)
        elif rate is not None:
            import tempfile

            from metaedge.runtime.serve.ratelimit import RateLimiter
            self._limiter_dir = tempfile.TemporaryDirectory(prefix="metaedge-ratelimit-")
            self.limiter = RateLimiter(self._limiter_dir.name, *rate)
        self.feed = None
        if config.source is not None and config.run_dir:
            from metaedge.runtime.serve.feed import LiveFeed
            self.feed = LiveFeed(os.path.join(config.run_dir, "live"))
        self._slots = None
        self._recent: dict[str, collections.deque] = {}   # seconds of the last runs of each kind of work
        self.overlay = None       # the live view's newest frame with labels drawn (live.py)
        self.stopping = False     # set at shutdown: long-lived streams end

    @property
    def auth_required(self) -> bool:
        """Access control is on when the token store existed at start or exists now (never off again)."""
        if self.tokens is None:
            return False
        if not self.auth_at_start and self.tokens.exists():
            self.auth_at_start = True
        return self.auth_at_start

    async def run(self, fn, *args):
        """``fn(*args)``: right here on the event loop when a recent run of this kind of work (its
        ``__qualname__``) took under ``INLINE_BELOW_S``; else on a worker thread, at most
        ``inference_slots`` at once, so the event loop stays free."""
        import anyio
        if self._slots is None:
            self._slots = anyio.CapacityLimiter(self.config.inference_slots)
        kind = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        recent = self._recent.get(kind)
        if recent and min(recent) < INLINE_BELOW_S:
            return self._timed(kind, fn, args)
        return await anyio.to_thread.run_sync(self._timed, kind, fn, args, limiter=self._slots)

    def _timed(self, kind: str, fn, args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            recent = self._recent.get(kind)
            if recent is None:
                recent = self._recent[kind] = collections.deque(maxlen=_COST_WINDOW)
            recent.append(time.perf_counter() - start)

    def close(self) -> None:
        """Release the rate limiter's files (the classifier belongs to the caller)."""
        if self.limiter is not None:
            self.limiter.close()
