"""The ``/v1`` REST endpoints: predict, enroll, classes, adapt, calibrate, history, info, stats, alerts, tokens.

Image work (decoding, the network) runs through ``ServerState.run``: inline on the event loop when its recent runs
were cheap, else on worker threads (state.py). The image endpoints read their query parameters with query.py
(FastAPI's per-request solving cost more than a small predict). Every change runs inside
``state.audit.change(actor)`` (the audit seam): the gallery's trail names its actor.
"""
from __future__ import annotations

import datetime as _dt
import os
import time
import urllib.parse

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse

from metaedge.runtime.serve.auth import authorize, need
from metaedge.runtime.serve.errors import ApiError
from metaedge.runtime.serve.query import QueryParam, openapi_parameters, read_query
from metaedge.runtime.serve.state import api_errors
from metaedge.runtime.serve.uploads import decode_images, parse_body, parse_rois

__all__ = ["router", "IMAGE_BODY"]

router = APIRouter(prefix="/v1")

# The request bodies FastAPI cannot see (read by uploads.parse_body), described for the OpenAPI document.
IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                            "description": "a raw frame: give width, height, pixel_format"}}}}}
CALIBRATE_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "description": "file parts named 'known:<label>' (images of an enrolled class) and "
                                     "'other' (images of none of the classes)"}}}}}

# The image endpoints' query parameters (read by query.read_query: the hot path skips FastAPI's solving).
_IMAGE_QUERY = (
    QueryParam("roi", str, "x,y,w,h region(s) to classify", repeated=True),
    QueryParam("pixel_format", str, "layout of a raw frame (gray, rgb, bgr, rgba, bgra, nv12, yuyv)"),
    QueryParam("width", int, "raw frames (application/octet-stream): width of the frame", minimum=1),
    QueryParam("height", int, "raw frames: height of the frame", minimum=1))
_PREDICT_QUERY = (QueryParam("k", int, "best classes per prediction", default=1, minimum=1, maximum=100),
                  *_IMAGE_QUERY)
_ENROLL_QUERY = (*_IMAGE_QUERY,
                 QueryParam("live", int, "frames to capture from the live source", minimum=1, maximum=100),
                 QueryParam("every", float, "seconds between captured live frames", default=0.3, minimum=0,
                            maximum=10))


def _image_endpoint(query: tuple[QueryParam, ...]) -> dict:
    return {**IMAGE_BODY, "parameters": openapi_parameters(query)}


def _state(request: Request):
    return request.app.state.server


def _timings(calls: list, decode_s: float) -> dict:
    """The timing split of the predict calls of one request (``EdgeClassifier.last_timings`` of each, in
    milliseconds) after the server's own decoding of the upload: pre-processing (array conversion and the
    resize kernel), network, top-k, and the whole including decoding."""
    def total(field: str) -> float:
        return sum(getattr(t, field) for t in calls)
    decode_ms = decode_s * 1e3
    return {"decode_ms": round(decode_ms, 3), "preprocess_ms": round(total("preprocessing_ms"), 3),
            "network_ms": round(total("backbone_ms"), 3), "topk_ms": round(total("kernels_ms"), 3),
            "total_ms": round(total("total_ms") + decode_ms, 3)}


# ---------------------------------------------------------------------------------------------------- predict
@router.post("/predict", openapi_extra=_image_endpoint(_PREDICT_QUERY),
             summary="classify one image, several, or regions of one",
             description="The body is one image (image/png, image/jpeg, ...), several images as multipart/form-data "
                         "file parts, or one raw frame (application/octet-stream + width, height, pixel_format). "
                         "`roi` (x,y,w,h; repeat it) classifies regions of each image. Viewer role.")
async def predict(request: Request):
    authorize(request, "viewer")
    q = read_query(request, _PREDICT_QUERY)
    k, pixel_format, width, height = q["k"], q["pixel_format"], q["width"], q["height"]
    state = _state(request)
    parts = parse_body(await request.body(), request.headers.get("content-type"), state.config.max_images)
    boxes = parse_rois(q["roi"] or [])

    def work():
        t0 = time.perf_counter()
        arrays, fmt = decode_images(parts, state.config.max_pixels, width=width, height=height,
                                    pixel_format=pixel_format)
        decode = time.perf_counter() - t0
        clf, metrics = state.clf, state.metrics
        out, calls = [], []
        with api_errors():
            if boxes is None:  # every image whole, in one call: one image as a frame, several grouped into batches
                preds = ([clf.predict(arrays[0], k=k, pixel_format=fmt)] if len(arrays) == 1
                         else clf.predict(arrays, k=k, pixel_format=fmt))
                calls.append(clf.last_timings)
                metrics.observe_predictions("api", calls[-1], preds)
                out = [{"image": i, **p.to_dict()} for i, p in enumerate(preds)]
            else:  # the regions of each image, one call per image
                for i, arr in enumerate(arrays):
                    preds = clf.predict(arr, k=k, roi=boxes, pixel_format=fmt)
                    calls.append(clf.last_timings)
                    metrics.observe_predictions("api", calls[-1], preds)
                    out.extend({"image": i, "roi": box, **p.to_dict()} for box, p in zip(boxes, preds))
        return {"predictions": out, "threshold": clf.unknown_threshold, "classes": len(clf),
                "timings": _timings(calls, decode)}

    return JSONResponse(await state.run(work))


# ---------------------------------------------------------------------------------------------------- classes
def _keep(state, label: str, actor: str, shots: list[tuple[bytes, str]]) -> list[str]:
    """Write the enrolled images under --keep-shots DIR/<label>/ (only when the server was told to)."""
    from metaedge.runtime.fileio import atomic_write_bytes
    root = state.config.keep_shots
    folder = os.path.join(root, urllib.parse.quote(label, safe=" -_.()") or "_")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    who = urllib.parse.quote(actor, safe="-_.@")
    paths = []
    for i, (data, ext) in enumerate(shots):
        path = os.path.join(folder, f"{stamp}-{who}-{i}.{ext}")
        atomic_write_bytes(path, data)
        paths.append(path)
    return paths


_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/jpg": "jpg", "image/webp": "webp",
               "image/bmp": "bmp", "image/gif": "gif", "image/tiff": "tif", "application/octet-stream": "raw"}


@router.post("/classes/{label:path}/shots", openapi_extra=_image_endpoint(_ENROLL_QUERY), status_code=201,
             summary="enroll images of a class (a new class, or more shots of one)",
             description="Images as for predict, or `live=N`: capture N frames of the live source, `every` seconds "
                         "apart (regions: `roi`, else the live view's region). 201 for a new class, 200 for more "
                         "shots. Operator role.")
async def enroll(request: Request, label: str):
    principal = authorize(request, "operator", changes_gallery=True)
    q = read_query(request, _ENROLL_QUERY)
    pixel_format, width, height, live, every = q["pixel_format"], q["width"], q["height"], q["live"], q["every"]
    state = _state(request)
    boxes = parse_rois(q["roi"] or [])
    if live is not None:
        from metaedge.runtime.serve.live import capture_frames
        frames, jpegs, live_roi = await capture_frames(state, live, every)
        arrays, fmt = frames, "bgr"
        kept = [(j, "jpg") for j in jpegs]
        boxes = boxes if boxes is not None else live_roi
        parts = None
    else:
        parts = parse_body(await request.body(), request.headers.get("content-type"), state.config.max_images)
        arrays, fmt, kept = None, None, []

    def work():
        nonlocal arrays, fmt, kept
        if arrays is None:
            arrays, fmt = decode_images(parts, state.config.max_pixels, width=width, height=height,
                                        pixel_format=pixel_format)
            kept = [(p.data, _EXTENSIONS.get(p.content_type, "img")) for p in parts if p.is_file]
        clf = state.clf
        shots = len(arrays) * (len(boxes) if boxes else 1)
        with api_errors():
            existed = label in clf
            with state.audit.change(principal.name):
                info = clf.enroll(label, arrays, roi=boxes, pixel_format=fmt)
        state.metrics.changes.labels("enroll").inc()
        state.metrics.classes.set(len(clf))
        saved = _keep(state, info.label, principal.name, kept) if state.config.keep_shots else []
        return existed, {"class": info.to_dict(), "added": shots, "new": not existed, "kept": len(saved)}

    existed, body = await state.run(work)
    return JSONResponse(body, status_code=200 if existed else 201)


def _open_set(clf) -> dict:
    """The open-set state (the head in use, its threshold and where it comes from, each head's record) and the
    same in one line, as `metaedge classes list` shows it."""
    state = clf.open_set()
    return {**state.to_dict(), "explain": state.explain()}


@router.get("/classes", summary="the enrolled classes with their shots and times, and the open-set state (viewer)")
async def classes(request: Request, principal=Depends(need("viewer"))):
    state = _state(request)

    def work():  # (a store may read its database: off the event loop)
        clf = state.clf
        return [c.to_dict() for c in clf.classes()], clf.adapted, _open_set(clf)

    items, adapted, open_set = await state.run(work)
    state.metrics.classes.set(len(items))
    return {"classes": items, "count": len(items), "adapted": adapted, "open_set": open_set}


@router.delete("/classes/{label:path}", summary="forget a class (operator)")
async def forget(request: Request, label: str, principal=Depends(need("operator", changes_gallery=True))):
    state = _state(request)

    def work():
        clf = state.clf
        with api_errors():
            info = clf.gallery.class_info(label)  # (UnknownLabelError: 404)
            with state.audit.change(principal.name):
                clf.forget(label)
        state.metrics.changes.labels("forget").inc()
        state.metrics.classes.set(len(clf))
        return {"forgotten": label, "shots": info.shots, "classes": len(clf)}

    return await state.run(work)


@router.patch("/classes/{label:path}", summary="rename a class (operator)")
async def rename(request: Request, label: str,
                 body: dict = Body(..., examples=[{"label": "new name"}], description='{"label": NEW}'),
                 principal=Depends(need("operator", changes_gallery=True))):
    state = _state(request)
    new = body.get("label") if isinstance(body, dict) else None
    if not isinstance(new, str):
        raise ApiError(400, "bad_request", 'expected a JSON body {"label": "<new name>"}')

    def work():
        clf = state.clf
        with api_errors():
            if label not in clf:
                from metaedge.runtime.gallery import UnknownLabelError
                raise UnknownLabelError(f"no class {label!r} is enrolled")
            if new != label and new in clf:
                raise ApiError(409, "class_exists", f"a class {new!r} exists already (forget it first)")
            with state.audit.change(principal.name):
                clf.rename(label, new)
        state.metrics.changes.labels("rename").inc()
        return {"old": label, "new": new}

    return await state.run(work)


# ---------------------------------------------------------------------------------------------------- adapt, calibrate
@router.post("/adapt", summary="fine-tune the head on the enrolled shots, or reset it (operator)")
async def adapt(request: Request, body: dict | None = Body(None, examples=[{"steps": 100, "lr": 0.1},
                                                                             {"reset": True}]),
                principal=Depends(need("operator", changes_gallery=True))):
    state = _state(request)
    body = dict(body or {})
    reset = bool(body.pop("reset", False))
    allowed = {"steps", "lr", "momentum", "weight_decay", "scale"}
    if set(body) - allowed:
        raise ApiError(400, "bad_request", f"adapt: unknown settings {sorted(set(body) - allowed)} (expected "
                                           f"{sorted(allowed)} or reset)")

    def work():
        clf = state.clf
        with api_errors():
            with state.audit.change(principal.name):
                result = None if reset else clf.adapt(**body).to_dict()
                if reset:
                    clf.reset_adaptation()
        state.metrics.changes.labels("adapt").inc()
        return {"reset": True, "adapted": False} if reset else {"adapted": True, "report": result}

    return await state.run(work)


@router.post("/calibrate", openapi_extra=CALIBRATE_BODY,
             summary="set the open-set threshold from labelled images (operator)")
async def calibrate(request: Request, target_fpr: float = Query(0.05, gt=0, lt=1),
                    principal=Depends(need("operator", changes_gallery=True))):
    state = _state(request)
    parts = parse_body(await request.body(), request.headers.get("content-type"), state.config.max_images)
    if not any(p.field.startswith("known:") for p in parts):
        raise ApiError(400, "bad_request", "calibrate: send images of enrolled classes as file parts named "
                                           "'known:<label>' (and, optionally, images of none of them as 'other')")

    def work():
        known: dict[str, list] = {}
        other: list = []
        for part in parts:
            if not part.is_file:
                continue
            (arr,), _ = decode_images([part], state.config.max_pixels)
            if part.field.startswith("known:"):
                known.setdefault(part.field[len("known:"):], []).append(arr)
            elif part.field == "other":
                other.append(arr)
            else:
                raise ApiError(400, "bad_request", f"calibrate: file part {part.field!r}: expected 'known:<label>' "
                                                   f"or 'other'")
        with api_errors():
            with state.audit.change(principal.name):
                report = state.clf.calibrate_unknown(known, other or None, target_fpr=target_fpr)
        state.metrics.changes.labels("calibrate").inc()
        return report.to_dict()

    return await state.run(work)


# ---------------------------------------------------------------------------------------------------- reading
@router.get("/history", summary="the gallery's audit trail: who changed what, when (viewer)")
async def history(request: Request, label: str | None = None, limit: int = Query(100, ge=1, le=10_000),
                  principal=Depends(need("viewer"))):
    state = _state(request)
    with api_errors():
        entries = await state.run(lambda: state.audit.history(label=label, limit=limit))
    return {"entries": entries}


@router.get("/info", summary="the server, its bundle, backend, gallery and limits (viewer)")
async def info(request: Request, principal=Depends(need("viewer"))):
    state = _state(request)
    clf, cfg = state.clf, state.config
    spec = clf.spec

    def gallery():  # (a store may read its database: off the event loop)
        return {"path": cfg.gallery, "classes": len(clf), "adapted": clf.adapted,
                "unknown_threshold": clf.unknown_threshold, "open_set": _open_set(clf)}

    return {
        "version": state.version, "pid": os.getpid(), "started": state.started,
        "you": {"name": principal.name, "role": principal.role},
        "backend": state.backend,
        "bundle": {"path": cfg.bundle, "fingerprint": state.fingerprint, "backbone": spec.backbone,
                   "input_shape": list(spec.input_shape), "embedding_dim": spec.embedding_dim, "metric": spec.metric},
        "gallery": await state.run(gallery),
        "server": {"workers": cfg.workers, "tls": cfg.tls, "access_control": state.auth_required,
                   "read_only": cfg.read_only, "keep_shots": cfg.keep_shots is not None,
                   "rate_limit": cfg.rate_limit, "max_upload_bytes": cfg.max_upload_bytes,
                   "max_pixels": cfg.max_pixels, "max_images": cfg.max_images, "source": cfg.source,
                   "alerts": list(cfg.alerts)},
    }


@router.get("/stats", summary="counters for charts: predictions, unknown, latency histogram, frames (viewer)")
async def stats(request: Request, principal=Depends(need("viewer"))):
    state = _state(request)
    totals = await state.run(state.metrics.totals)
    return {"time": time.time(), **totals}


@router.get("/alerts", summary="alert rules, what fires now and recent events (viewer)")
async def alerts(request: Request, principal=Depends(need("viewer"))):
    from metaedge.runtime.serve.alerts import read_alerts
    state = _state(request)
    if not state.config.run_dir:
        return {"rules": [], "firing": [], "events": []}
    return read_alerts(state.config.run_dir)


# ---------------------------------------------------------------------------------------------------- tokens
def _store(state):
    if state.tokens is None:
        raise ApiError(409, "no_token_store", "this server was started without a token store")
    return state.tokens


@router.get("/tokens", summary="the tokens (names, roles, ids; never the tokens) (admin)")
async def tokens(request: Request, principal=Depends(need("admin"))):
    return {"tokens": [r.to_dict() for r in _store(_state(request)).records()]}


@router.post("/tokens", status_code=201, summary="make a token; the response holds it, once (admin)")
async def create_token(request: Request, body: dict = Body(..., examples=[{"name": "line-3", "role": "operator"}]),
                       principal=Depends(need("admin"))):
    from metaedge.runtime.serve.tokens import TokenError
    store = _store(_state(request))
    try:
        record, token = await _state(request).run(store.create, body.get("name"), body.get("role", "viewer"))
    except TokenError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    return {**record.to_dict(), "token": token}


@router.delete("/tokens/{name}", summary="revoke a token (admin)")
async def revoke_token(request: Request, name: str, principal=Depends(need("admin"))):
    from metaedge.runtime.serve.tokens import TokenError
    try:
        record = await _state(request).run(_store(_state(request)).revoke, name)
    except TokenError as exc:
        raise ApiError(404, "unknown_token", str(exc)) from None
    return record.to_dict()
