"""The ASGI app of `metaedge serve` (FastAPI): the ``/v1`` API, the live view, health checks, ``/metrics``, the
operator's page, JSON errors, and one middleware for request size limits, metrics and the access log.

``create_app(state)`` builds it around a :class:`~metaedge.runtime.serve.state.ServerState`;
``app_from_environment()`` is what each worker process of ``--workers N`` calls (the supervisor passes the
configuration in ``METAEDGE_SERVE_CONFIG``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from metaedge.runtime.serve.auth import need
from metaedge.runtime.serve.errors import ApiError

__all__ = ["create_app", "app_from_environment", "STATIC_DIR"]

log = logging.getLogger("metaedge.serve")
access_log = logging.getLogger("metaedge.serve.access")
STATIC_DIR = str(resources.files("metaedge.runtime.serve") / "static")
# Long-lived streams: counted, but their duration is a connection's lifetime, not a latency.
_STREAMS = {"/v1/live/mjpeg", "/v1/live/events"}
_HTTP_REASONS = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 401: "unauthorized",
                 403: "forbidden", 429: "rate_limited"}
_SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
_PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; style-src 'self'; "
             "script-src 'self'; frame-ancestors 'none'")


class _TooLarge(Exception):
    pass


def _json_body(status: int, code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message, "status": status}).encode()


class ServerMiddleware:
    """Pure ASGI (no per-request task): refuses bodies over the size limit with 413 (by Content-Length at once,
    or while a chunked body streams in), counts every request per route template and status, observes its
    latency, adds security headers, and logs one access line (path without query string: it may hold a token)."""

    def __init__(self, app, state):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        state, limit = self.state, self.state.config.max_upload_bytes
        status = {"code": 500, "started": False}
        too_large = f"the request body is larger than the server's limit of {limit} bytes (--max-upload-mb)"

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                message["headers"] = list(message.get("headers", [])) + _SECURITY_HEADERS
            await send(message)

        received = 0

        async def receive_wrapper():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge()
            return message

        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        try:
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _TooLarge()
            await self.app(scope, receive_wrapper, send_wrapper)
        except _TooLarge:
            if status["started"]:
                raise
            state.metrics.error("too_large")
            await _send_json(send_wrapper, 413, _json_body(413, "too_large", too_large))
        finally:
            self._record(scope, status["code"], time.perf_counter() - start)

    def _record(self, scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "(unmatched)"
        method = scope.get("method", "?")
        m = self.state.metrics
        m.requests.labels(endpoint, method, str(status)).inc()
        if endpoint not in _STREAMS:
            m.request_seconds.labels(endpoint, method).observe(seconds)
        if self.state.config.access_log:
            who = getattr(scope.get("state", {}).get("principal"), "name", "-") if isinstance(
                scope.get("state"), dict) else "-"
            client = scope.get("client") or ("?", 0)
            access_log.info('%s %s "%s %s" %d %.1fms', client[0], who, method, scope.get("path", ""), status,
                            seconds * 1e3)


async def _send_json(send, status: int, body: bytes, headers: dict | None = None) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _error_response(state, status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    state.metrics.error(code)
    return JSONResponse({"error": code, "message": message, "status": status}, status_code=status, headers=headers)


def _end_streams_on_stop(state) -> None:
    """Chain the ASGI server's SIGINT/SIGTERM handlers (installed while it runs) so that long-lived streams
    (MJPEG, events) end at once instead of holding the graceful shutdown until it times out."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum, frame, previous=previous):
            state.stopping = True
            previous(signum, frame)
        signal.signal(sig, handler)


SWITCH_INTERVAL_S = 0.0005


def create_app(state) -> FastAPI:
    """The FastAPI app around a :class:`~metaedge.runtime.serve.state.ServerState` (``ServerState(config, clf)``)
    - what `metaedge serve` runs; mount it in another ASGI server, or test it in-process. Without
    ``PROMETHEUS_MULTIPROC_DIR`` its metrics live in its own registry. While it runs, the process's GIL switch
    interval is ``SWITCH_INTERVAL_S`` (``sys.setswitchinterval``; see the lifespan)."""
    from metaedge.runtime.serve import api, live

    @contextlib.asynccontextmanager
    async def lifespan(app):
        _end_streams_on_stop(state)
        # Work that goes to a worker thread (ServerState.run: slow work, or work not yet timed) waits for the
        # GIL the event loop holds; with Python's default 5 ms switch interval it waited at every hand-over
        # (measured on 127.0.0.1, 1 worker, all work on threads: predict p50 2.96 -> 1.96 ms with 0.5 ms).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        yield
        state.stopping = True

    app = FastAPI(title="metaedge", version=state.version, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Few-shot recognition on the device: classify images and camera frames, enroll new "
                              "classes from a few shots, watch the live view. Send `Authorization: Bearer <token>` "
                              "(tokens: `metaedge token create NAME --role viewer|operator|admin`).")
    app.state.server = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error_response(state, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return _error_response(state, 422, "bad_request", problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = _HTTP_REASONS.get(exc.status_code, "http_error")
        return _error_response(state, exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error in %s %s", request.method, request.url.path)
        return _error_response(state, 500, "internal", f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/healthz", summary="liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="readiness: the backend is loaded and the gallery open")
    async def readyz():
        def check():
            clf = state.clf
            if clf.backend is None or getattr(clf, "_closed", False):
                raise RuntimeError("the classifier is closed")
            return len(clf)  # (reads the gallery: a store that cannot be read fails here)
        try:
            classes = await state.run(check)
        except Exception as exc:  # noqa: BLE001 - not ready, and why
            return JSONResponse({"ready": False, "reason": f"{type(exc).__name__}: {exc}"}, status_code=503)
        return {"ready": True, "backend": state.backend, "classes": classes, "pid": os.getpid()}

    @app.get("/metrics", summary="Prometheus metrics of every process of the server (viewer)",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics(principal=Depends(need("viewer"))):
        def collect():
            state.metrics.classes.set(len(state.clf))
            return state.metrics.exposition()
        body, content_type = await state.run(collect)
        return Response(body, media_type=content_type)

    app.include_router(api.router)
    app.include_router(live.router)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), headers={
            "Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/index.html", include_in_schema=False)
    async def page_alias():
        return RedirectResponse("/")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(ServerMiddleware, state=state)
    return app


def app_from_environment() -> FastAPI:
    """The app of one worker process: its own classifier on the shared gallery, settings from the supervisor."""
    from metaedge.runtime.serve.config import ServeConfig
    from metaedge.runtime.serve.server import configure_logging
    from metaedge.runtime.serve.state import ServerState, open_classifier
    config = ServeConfig.from_environment()
    configure_logging()
    return create_app(ServerState(config, open_classifier(config)))
