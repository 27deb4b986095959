"""`metaedge serve`: the device as a service - an HTTP API (predict, enroll, classes, adapt, calibrate, history),
the live view of a camera, an operator's web page, Prometheus metrics, alert rules, bearer tokens with roles.

Modules (one job each): ``config`` (the settings), ``server`` (start/stop, workers, the run directory),
``app`` (the ASGI app, middleware, errors), ``api`` and ``live`` (the endpoints), ``auth`` and ``tokens``
(access control), ``ratelimit``, ``uploads`` (request bodies -> images), ``state`` (what a process holds),
``audit`` (the seam to the gallery's audit trail), ``metrics``, ``alerts``, ``feed`` and ``frameloop`` (the live
source), ``static/`` (the page). Needs the ``[serve]`` extra (FastAPI, uvicorn, prometheus-client,
python-multipart); ``tokens`` and ``config`` work without it. No torch.
"""
