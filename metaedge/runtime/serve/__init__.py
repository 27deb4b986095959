"""`metaedge serve`: the device as a service - an HTTP API (predict, enroll, classes, adapt, calibrate, history),
the live view of a camera, an operator's web page, Prometheus metrics, alert rules, bearer tokens with roles.

Modules (one job each): ``config`` (the settings), ``server`` (start/stop, workers, the run directory),
``app`` (the ASGI app, middleware, errors), ``api`` and ``live`` (the endpoints), ``auth`` and ``tokens``
(access control), ``ratelimit``, ``uploads`` (request bodies -> images), ``state`` (what a process holds),
``audit`` (the seam to the gallery's audit trail), ``metrics``, ``alerts``, ``feed`` and ``frameloop`` (the live
source), ``static/`` (the page). Needs the ``[serve]`` extra (FastAPI, uvicorn, prometheus-client,
python-multipart); ``tokens`` and ``config`` work without it. No torch.

Embedding the server in your own process::

    from metaedge.runtime.serve import ServeConfig, serve
    serve(ServeConfig("bundle/", "classes.metaedge", source="/dev/video0"))   # until SIGINT/SIGTERM
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from metaedge._lazy import lazy_exports

if TYPE_CHECKING:
    from metaedge.runtime.serve.app import create_app
    from metaedge.runtime.serve.config import ServeConfig
    from metaedge.runtime.serve.server import serve
    from metaedge.runtime.serve.state import ServerState
    from metaedge.runtime.serve.tokens import TokenStore

_LAZY = {"ServeConfig": "metaedge.runtime.serve.config", "serve": "metaedge.runtime.serve.server",
         "create_app": "metaedge.runtime.serve.app", "ServerState": "metaedge.runtime.serve.state",
         "TokenStore": "metaedge.runtime.serve.tokens"}
__all__ = sorted(_LAZY)

if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY, (), globals())
