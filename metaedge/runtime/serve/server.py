"""Starting and stopping `metaedge serve`: checks, the run directory, the frame loop and alert monitor, and the
ASGI server (uvicorn) with one process or ``--workers N``.

The supervising process (this one) binds the socket, opens the classifier once to check the bundle and the
gallery, and runs the frame loop (``--source``) and the alert monitor. With one worker it also serves the
requests, sharing its classifier with the frame loop; with several, each worker process opens its own classifier
on the same gallery and accepts connections on a socket of its own bound to the same port (SO_REUSEPORT, on
Linux: the kernel spreads the connections; elsewhere one shared socket), and uvicorn restarts a worker that
dies. The run directory (on tmpfs where possible; removed at exit) holds what the processes share: the
Prometheus multiprocess files, the live feed, the rate-limit counters and the alert state.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile

from metaedge.runtime.serve.config import CONFIG_ENV, ServeConfig, is_loopback

__all__ = ["serve", "check_config", "require_server_stack", "configure_logging", "ServeError"]

log = logging.getLogger("metaedge.serve")
_STACK = (("fastapi", "the HTTP API"), ("uvicorn", "the HTTP server"), ("prometheus_client", "/metrics"),
          ("python_multipart", "image uploads"))


class ServeError(ValueError):
    """A setting the server cannot start with (the message says which and what to do)."""


def require_server_stack() -> None:
    """MissingDependencyError (an ImportError) naming ``pip install 'metaedge[serve]'`` when a part is missing."""
    from metaedge._optional import available, require
    for module, feature in _STACK:
        if not available(module):  # (not imported here: prometheus_client must first see its multiprocess dir)
            require(module, f"`metaedge serve` ({feature})")


def configure_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_metaedge", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        handler._metaedge = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def check_config(config: ServeConfig) -> None:
    """What must hold before anything starts (ServeError otherwise): files exist, a non-loopback bind has access
    control (or --insecure), TLS files load, workers can share the gallery."""
    config.validate()
    if not os.path.isdir(config.bundle):
        raise FileNotFoundError(f"{config.bundle}: not a bundle directory (make one with `metaedge export`)")
    has_tokens = config.tokens is not None and os.path.exists(config.tokens)
    if not is_loopback(config.host) and not has_tokens and not config.insecure:
        raise ServeError(f"--host {config.host}: other machines could reach this server, and it has no token store "
                         f"({config.tokens or 'none given'}); create a token first (metaedge token create NAME "
                         f"--role operator), or pass --insecure to serve without access control")
    if config.tls:
        import ssl
        for name, path in (("--certfile", config.certfile), ("--keyfile", config.keyfile)):
            if not os.path.isfile(path):
                raise ServeError(f"{name} {path}: no such file")
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(config.certfile, config.keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise ServeError(f"--certfile/--keyfile: cannot load the certificate and key ({exc})") from None
    if config.source is not None and not os.path.isdir(config.source):
        from metaedge._optional import require
        require("cv2", "--source (video files, cameras and streams)")  # exit 3, with the install line
    if config.keep_shots is not None:
        os.makedirs(config.keep_shots, exist_ok=True)
        if not os.access(config.keep_shots, os.W_OK):
            raise ServeError(f"--keep-shots {config.keep_shots}: not writable")


# Linux spreads the connections to one port over the listening sockets bound to it with SO_REUSEPORT (by a hash
# of the client's address and port). Elsewhere SO_REUSEPORT does not balance, and the workers share one socket.
_BALANCED_LISTENERS = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _reuseport_listener(family: int, address: tuple) -> socket.socket:
    """A worker's own socket on the supervisor's address (what a ``_WorkerListener`` becomes in a worker)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


class _WorkerListener(socket.socket):
    """The supervisor's socket with ``--workers N`` on Linux: bound with SO_REUSEPORT (it holds the port, and
    with ``--port 0`` chooses it) but never listening. uvicorn hands it to each worker process it spawns, by
    pickling; it arrives as a new socket of that worker's own on the same address (``_reuseport_listener``), so
    the kernel, not a race, decides which worker accepts a connection. With one shared socket, the worker that
    woke first accepted every waiting connection: 32 connections opened at once split 4/28 or 5/27, and two
    workers then served 1.05x the requests of one (tools/bench/serve.py)."""

    def __reduce_ex__(self, protocol):
        return _reuseport_listener, (self.family, self.getsockname())


def _bind(host: str, port: int, *, workers: int = 1) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    balanced = workers > 1 and _BALANCED_LISTENERS
    sock = (_WorkerListener if balanced else socket.socket)(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if balanced:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def _run_dir() -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="metaedge-serve-", dir=base)


def serve(config: ServeConfig, *, announce=print) -> int:
    """Run the server until SIGINT/SIGTERM; returns 0. ``announce(line)``: where the address is printed."""
    require_server_stack()
    check_config(config)
    configure_logging()
    run_dir = _run_dir()
    config.run_dir = run_dir
    # Before prometheus_client is first imported in this process (it reads the variable at import).
    os.makedirs(os.path.join(run_dir, "metrics"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(run_dir, "metrics")
    sock = None
    clf = state = loop = monitor = None
    try:
        from metaedge.runtime.serve.state import ServerState, open_classifier
        clf = open_classifier(config)
        state = ServerState(config, clf)
        sock = _bind(config.host, config.port, workers=config.workers)
        port = sock.getsockname()[1]
        os.environ[CONFIG_ENV] = config.to_json()
        if config.source is not None:
            from metaedge.runtime.serve.frameloop import FrameLoop
            loop = FrameLoop(clf, config, state.feed, state.metrics).start()
        if config.alerts:
            from metaedge.runtime.serve.alerts import AlertMonitor, parse_rule
            monitor = AlertMonitor([parse_rule(r) for r in config.alerts], state.metrics, run_dir,
                                   config.alert_webhook, config.alert_interval,
                                   server=f"{socket.gethostname()}:{port}").start()
        url_host = f"[{config.host}]" if ":" in config.host else config.host
        auth = "on" if state.auth_required else "OFF (no token store)"
        announce(f"metaedge serve: listening on {config.scheme}://{url_host}:{port}/ ({config.workers} worker(s), "
                 f"access control {auth}, {state.backend}, {len(clf)} class(es))")
        if not state.auth_required and not is_loopback(config.host):
            log.warning("serving on %s WITHOUT access control (--insecure)", config.host)
        elif not config.tls and not is_loopback(config.host):
            log.warning("serving on %s over plain HTTP: tokens cross the network in clear; use --certfile/--keyfile",
                        config.host)
        _run_until_stopped(config, state, sock)
        return 0
    finally:
        if state is not None:
            state.stopping = True
        for part in (loop, monitor):
            if part is not None:
                part.stop()
        if sock is not None:
            sock.close()
        if state is not None:
            state.close()
        if clf is not None:
            clf.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def _terminated(signum, frame):
    raise SystemExit(0)


def _run_until_stopped(config: ServeConfig, state, sock: socket.socket) -> None:
    """uvicorn until SIGINT or SIGTERM; both end here as a clean stop, so the run directory is always removed
    (uvicorn re-raises the signal it caught once it has shut down: SIGTERM then raises SystemExit here instead of
    killing the process)."""
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        _run_uvicorn(config, state, sock)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_uvicorn(config: ServeConfig, state, sock: socket.socket) -> None:
    import uvicorn
    options = dict(host=config.host, port=config.port, log_config=None, access_log=False, server_header=False,
                   timeout_graceful_shutdown=3, ssl_certfile=config.certfile, ssl_keyfile=config.keyfile,
                   proxy_headers=False, lifespan="on")
    if config.workers == 1:
        from metaedge.runtime.serve.app import create_app
        server = uvicorn.Server(uvicorn.Config(create_app(state), **options))
        server.run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess
    uv_config = uvicorn.Config("metaedge.runtime.serve.app:app_from_environment", factory=True,
                               workers=config.workers, **options)
    Multiprocess(uv_config, sockets=[sock]).run()
