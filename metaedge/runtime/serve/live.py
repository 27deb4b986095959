"""The ``/v1/live`` endpoints: the newest frame of ``--source`` with its predictions, as a JPEG, an MJPEG stream
(for ``<img>``, VLC, ffplay) and Server-Sent Events (the predictions of every frame, for the operator page), the
region of interest, and frames captured for enrollment.

Each worker reads the live feed the frame loop publishes (``feed.py``); a stream polls it every 20 ms and sends
each new frame once. ``overlay=1`` draws the labels, scores and regions into the JPEG (decoded, drawn and
re-encoded once per frame and worker, whatever the number of viewers).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from metaedge.runtime.serve.auth import need
from metaedge.runtime.serve.errors import ApiError

__all__ = ["router", "capture_frames"]

router = APIRouter(prefix="/v1/live")
_POLL = 0.02
_HEARTBEAT = 10.0
_BOUNDARY = "metaedgeframe"


def _feed(state):
    if state.feed is None:
        raise ApiError(404, "no_live_source", "this server has no live source (start it with --source URI)")
    return state.feed


async def next_frame(state, after: int, timeout: float) -> tuple[dict, bytes] | None:
    """The first published frame with ``seq > after`` (and pixels), waiting up to ``timeout`` seconds."""
    feed = _feed(state)
    deadline = time.monotonic() + timeout
    while True:
        latest = feed.latest()
        if latest is not None and latest[0].get("seq", 0) > after and latest[1]:
            return latest
        if time.monotonic() >= deadline or state.stopping:
            return None
        await asyncio.sleep(_POLL)


class _Overlay:
    """The newest frame with its predictions drawn on, made once per frame."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seq = None
        self._jpeg = b""

    def get(self, meta: dict, jpeg: bytes, quality: int) -> bytes:
        with self._lock:
            if meta["seq"] != self._seq:
                self._jpeg, self._seq = draw(meta, jpeg, quality), meta["seq"]
            return self._jpeg


def draw(meta: dict, jpeg: bytes, quality: int) -> bytes:
    import cv2

    from metaedge.runtime.results import Prediction
    from metaedge.runtime.video import draw_predictions
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    preds = [Prediction(p["label"], p["score"], tuple((t["label"], t["score"]) for t in p["topk"]), p["unknown"],
                        p.get("confidence")) for p in meta.get("predictions") or []]
    if preds:
        draw_predictions(image, preds, meta.get("roi"), fps=meta.get("fps"))
    elif meta.get("roi"):
        for x, y, w, h in meta["roi"]:
            cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), (200, 200, 200), 2)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


async def _frame_bytes(state, meta: dict, jpeg: bytes, overlay: bool) -> bytes:
    if not overlay:
        return jpeg
    if state.overlay is None:
        state.overlay = _Overlay()
    return await state.run(state.overlay.get, meta, jpeg, state.config.jpeg_quality)


def _public(meta: dict) -> dict:
    return {**meta, "age_s": round(time.time() - meta.get("time", time.time()), 3)}


@router.get("", summary="the live source's state, newest predictions and frame rate (viewer)")
async def live(request: Request, principal=Depends(need("viewer"))):
    latest = _feed(request.app.state.server).latest()
    if latest is None:
        return {"status": "starting", "seq": 0, "predictions": []}
    return _public(latest[0])


@router.get("/frame.jpg", summary="the newest frame as JPEG (viewer)",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
async def frame(request: Request, after: int = Query(0, ge=0, description="wait for a frame newer than this seq"),
                timeout: float = Query(10.0, ge=0, le=60), overlay: bool = Query(False),
                principal=Depends(need("viewer"))):
    state = request.app.state.server
    got = await next_frame(state, after, timeout)
    if got is None:
        raise ApiError(503, "no_frame", f"no new frame from the live source within {timeout:g} s")
    meta, jpeg = got
    body = await _frame_bytes(state, meta, jpeg, overlay)
    return Response(body, media_type="image/jpeg", headers={
        "Cache-Control": "no-store", "X-Frame-Seq": str(meta["seq"]), "X-Frame-Index": str(meta.get("index", -1))})


@router.get("/mjpeg", summary="the live view as an MJPEG stream (multipart/x-mixed-replace) (viewer)",
            response_class=StreamingResponse,
            responses={200: {"content": {f"multipart/x-mixed-replace; boundary={_BOUNDARY}": {}}}})
async def mjpeg(request: Request, overlay: bool = Query(True, description="draw labels and regions"),
                fps: float = Query(30.0, gt=0, le=120, description="at most this many frames per second"),
                principal=Depends(need("viewer"))):
    state = request.app.state.server
    _feed(state)

    async def parts():
        seq, interval = 0, 1.0 / fps
        while not state.stopping:
            got = await next_frame(state, seq, _HEARTBEAT)
            if got is None:
                continue
            meta, jpeg = got
            seq = meta["seq"]
            body = await _frame_bytes(state, meta, jpeg, overlay)
            yield (f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n"
                   f"X-Frame-Seq: {seq}\r\n\r\n").encode() + body + b"\r\n"
            await asyncio.sleep(interval)

    return StreamingResponse(parts(), media_type=f"multipart/x-mixed-replace; boundary={_BOUNDARY}",
                             headers={"Cache-Control": "no-store"})


@router.get("/events", summary="Server-Sent Events: the predictions and state of every new frame (viewer)",
            response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
async def events(request: Request, principal=Depends(need("viewer"))):
    state = request.app.state.server
    _feed(state)

    async def stream():
        seq = 0
        yield b"retry: 2000\n\n"
        while not state.stopping:
            latest = await _next_meta(state, seq, _HEARTBEAT)
            if latest is None:
                yield b": ping\n\n"
                continue
            seq = latest["seq"]
            yield f"id: {seq}\nevent: frame\ndata: {json.dumps(_public(latest))}\n\n".encode()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _next_meta(state, after: int, timeout: float) -> dict | None:
    """Like next_frame, for state updates too (a source that went down has no new pixels)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not state.stopping:
        latest = state.feed.latest()
        if latest is not None and latest[0].get("seq", 0) > after:
            return latest[0]
        await asyncio.sleep(_POLL)
    return None


@router.put("/roi", summary="set the live region(s) of interest; null for the whole frame (operator)")
async def set_roi(request: Request, body: dict = Body(..., examples=[{"roi": [120, 80, 200, 200]}, {"roi": None}]),
                  principal=Depends(need("operator"))):
    state = request.app.state.server
    feed = _feed(state)
    roi = body.get("roi") if isinstance(body, dict) else None
    boxes = None
    if roi is not None:
        raw = [roi] if roi and not isinstance(roi[0], (list, tuple)) else roi
        try:
            boxes = [[int(v) for v in box] for box in raw]
        except (TypeError, ValueError):
            boxes = []
        if not boxes or any(len(b) != 4 or b[0] < 0 or b[1] < 0 or b[2] < 1 or b[3] < 1
                            or any(int(v) != v for v in b) for b in boxes):
            raise ApiError(400, "bad_roi", 'expected {"roi": [x, y, w, h]}, several boxes, or null')
        latest = feed.latest()
        if latest is not None and latest[0].get("width"):
            w, h = latest[0]["width"], latest[0]["height"]
            outside = [b for b in boxes if b[0] + b[2] > w or b[1] + b[3] > h]
            if outside:
                raise ApiError(400, "bad_roi", f"box {outside[0]} reaches outside the {w}x{h} frame")
    feed.set_control(roi=boxes, by=principal.name)
    return JSONResponse({"roi": boxes})


async def capture_frames(state, count: int, every: float) -> tuple[list[np.ndarray], list[bytes], list | None]:
    """``count`` new frames of the live source, ``every`` seconds apart -> (BGR arrays, their JPEGs, the live
    region at the last one)."""
    import cv2
    feed = _feed(state)
    latest = feed.latest()
    seq = latest[0].get("seq", 0) if latest is not None else 0
    frames, jpegs, meta = [], [], {}
    for i in range(count):
        got = await next_frame(state, seq, 10.0)
        if got is None:
            raise ApiError(503, "no_frame", f"the live source delivered no frame within 10 s (captured {i} of "
                                            f"{count})")
        meta, jpeg = got
        seq = meta["seq"]
        frames.append(await state.run(lambda data=jpeg: cv2.imdecode(np.frombuffer(data, np.uint8),
                                                                      cv2.IMREAD_COLOR)))
        jpegs.append(jpeg)
        if i + 1 < count and every > 0:
            await asyncio.sleep(every)
    return frames, jpegs, meta.get("roi")
