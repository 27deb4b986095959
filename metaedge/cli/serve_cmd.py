"""`metaedge serve`: run the device as a service - REST API, live view, operator page, metrics, alerts."""
from __future__ import annotations

import argparse

from metaedge.cli import _sdk
from metaedge.cli.main import CliError

EPILOG = """examples:
  metaedge serve bundle/ classes.metaedge                               # http://127.0.0.1:8080/
  metaedge serve bundle/ classes.metaedge --source /dev/video0 --roi 200,120,240,240
  metaedge token create line-3 --role operator                          # then, for other machines:
  metaedge serve bundle/ classes.metaedge --host 0.0.0.0 --certfile cert.pem --keyfile key.pem \\
      --alert 'unknown_rate > 0.5 over 60s' --alert 'no_frames for 10s' --alert-webhook https://hooks.example/x

the API (all under /v1 need a token once a token store exists; roles nest viewer < operator < admin):
  POST   /v1/predict                   classify images (body: image, multipart images, or a raw frame)   viewer
  POST   /v1/classes/LABEL/shots       enroll images, or ?live=N frames of the source                    operator
  GET    /v1/classes                   the classes with shots and times                                  viewer
  DELETE /v1/classes/LABEL             forget a class                                                    operator
  PATCH  /v1/classes/LABEL             rename: {"label": NEW}                                            operator
  POST   /v1/adapt   /v1/calibrate     fine-tune the head / set the unknown threshold                    operator
  GET    /v1/history /v1/info /v1/stats /v1/alerts                                                       viewer
  GET    /v1/live /v1/live/frame.jpg /v1/live/mjpeg /v1/live/events; PUT /v1/live/roi                    viewer/operator
  GET/POST/DELETE /v1/tokens           tokens                                                            admin
  GET    /metrics (viewer)   /healthz   /readyz   /openapi.json   / (the operator page)

exit codes:
  0  stopped by SIGINT/SIGTERM
  2  bad arguments (a refused bind, TLS files that do not load, an alert rule that does not parse)
  3  the server stack is missing: pip install 'metaedge[serve]' (with --source also 'metaedge[video]')
  4  the bundle is missing or damaged, the gallery damaged or made for another bundle, the token store damaged
  5  the gallery could not be written
"""


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="run the device as a service: REST API, live view, operator page, metrics",
        description="Serve BUNDLE with the classes of GALLERY over HTTP: predict and enroll through a REST API "
                    "(OpenAPI at /openapi.json), watch and teach the device on the operator page (/), scrape "
                    "/metrics with Prometheus. With --source the server classifies that camera, stream or video "
                    "file continuously and serves the newest frame with its predictions. Access control: bearer "
                    "tokens from the token store (`metaedge token create`); without a store the server binds to "
                    "loopback addresses only (or pass --insecure). Images sent to the server are not stored "
                    "unless --keep-shots says where.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory (manifest.json + model.onnx)")
    p.add_argument("gallery", metavar="GALLERY", help="gallery file (created at the first enrollment)")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port, printed)")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes sharing the socket and the gallery (default 1); each opens its own "
                        "classifier")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="ONNX Runtime threads per network call (default: the CPU cores divided by workers x "
                        "--max-concurrent, at least 1)")
    g.add_argument("--max-concurrent", type=int, default=4, metavar="N",
                   help="image requests each worker runs at once (default 4); more wait their turn")
    g.add_argument("--certfile", default=None, metavar="PEM", help="TLS certificate (PEM); serve HTTPS")
    g.add_argument("--keyfile", default=None, metavar="PEM", help="TLS private key (PEM) of --certfile")
    g.add_argument("--read-only", action="store_true",
                   help="predictions only: enroll, forget, rename, adapt and calibrate are refused")
    g.add_argument("--no-access-log", dest="access_log", action="store_false", help="no line per request")
    _sdk.add_backend_arg(g)
    g.add_argument("--threshold", type=float, default=None, metavar="SCORE",
                   help="open-set threshold (default: the gallery's calibrated value, else the bundle's)")
    g.add_argument("--resize-mode", default=None, choices=("squeeze", "letterbox", "center_crop"),
                   help="how images of another shape fit the network input (default: the bundle's policy)")
    g.add_argument("--yuv-matrix", default="bt601", choices=("bt601", "bt709", "bt601-full", "bt709-full"),
                   help="YUV -> RGB conversion of NV12/YUYV frames (default bt601)")
    a = p.add_argument_group("access control and limits")
    a.add_argument("--tokens", default=None, metavar="FILE",
                   help="token store (default: $METAEDGE_TOKENS or ~/.config/metaedge/tokens.json); access control "
                        "is on when it exists")
    a.add_argument("--insecure", action="store_true",
                   help="allow binding to a non-loopback address without a token store (anyone who reaches it "
                        "can change the gallery)")
    a.add_argument("--rate-limit", default="50/s", metavar="RATE",
                   help="requests per token (per client address without tokens): '50/s', '600/m', '20/s:40' "
                        "(burst 40), or 'off' (default 50/s)")
    a.add_argument("--max-upload-mb", type=float, default=16.0, metavar="MB",
                   help="largest request body (default 16 MB): 413")
    a.add_argument("--max-pixels", type=int, default=4096 * 4096, metavar="N",
                   help="largest image, width x height, checked before decoding (default 4096x4096): 413")
    a.add_argument("--max-images", type=int, default=64, metavar="N", help="images per request (default 64): 413")
    a.add_argument("--keep-shots", default=None, metavar="DIR",
                   help="keep the images of every enrollment in DIR/<label>/ (default: images are never stored)")
    s = p.add_argument_group("live source")
    s.add_argument("--source", default=None, metavar="URI",
                   help="classify this camera (/dev/video0, csi://0), stream (rtsp://, http://) or video file/folder "
                        "(played in a loop at its own rate) continuously; the page shows it live")
    s.add_argument("--roi", metavar="X,Y,W,H", action="append", type=_sdk.parse_roi, default=None,
                   help="the region(s) of each frame to classify (repeat for several; the page can change it)")
    s.add_argument("--every", default=None, metavar="N|Ts",
                   help="classify every N-th frame or at most every T seconds ('0.5s'); default: every frame")
    s.add_argument("--smooth", type=int, default=1, metavar="N", help="average the scores of the last N frames")
    s.add_argument("--max-fps", type=float, default=30.0, metavar="FPS",
                   help="frames read per second at most (default 30)")
    m = p.add_argument_group("monitoring")
    m.add_argument("--alert", action="append", default=[], metavar="RULE",
                   help="an alert rule (repeatable): 'unknown_rate > 0.5 over 60s [min 20]', "
                        "'latency_p99 > 50ms over 60s', 'no_frames for 10s'")
    m.add_argument("--alert-webhook", default=None, metavar="URL", help="POST each alert event (JSON) to URL")
    p.set_defaults(func=run)


def config_from_args(args):
    from metaedge.runtime.serve.config import ServeConfig
    from metaedge.runtime.serve.tokens import default_token_path
    if args.max_upload_mb <= 0:
        raise CliError(f"--max-upload-mb: expected a size > 0, got {args.max_upload_mb}", _sdk.EXIT_USAGE)
    config = ServeConfig(
        bundle=args.bundle, gallery=args.gallery, host=args.host, port=args.port, workers=args.workers,
        backend=args.backend, threads=args.threads, inference_slots=args.max_concurrent,
        tokens=args.tokens or default_token_path(),
        insecure=args.insecure, read_only=args.read_only, certfile=args.certfile, keyfile=args.keyfile,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
        max_images=args.max_images, rate_limit=args.rate_limit, keep_shots=args.keep_shots, threshold=args.threshold,
        resize_mode=args.resize_mode, yuv_matrix=args.yuv_matrix, source=args.source,
        roi=[list(b) for b in args.roi] if args.roi else None, every=args.every, smooth=args.smooth,
        max_fps=args.max_fps, alerts=list(args.alert), alert_webhook=args.alert_webhook, access_log=args.access_log)
    try:
        return config.validate()
    except ValueError as exc:
        raise CliError(str(exc), _sdk.EXIT_USAGE) from None


def run(args) -> int:
    config = config_from_args(args)
    from metaedge.runtime.serve.server import ServeError, require_server_stack, serve
    from metaedge.runtime.serve.tokens import TokenStoreError
    require_server_stack()  # a missing package: exit 3 with the install line (main maps ImportError)
    with _sdk.errors_to_exit_codes():
        try:
            return serve(config, announce=lambda line: print(line, flush=True))
        except ServeError as exc:
            raise CliError(str(exc), _sdk.EXIT_USAGE) from None
        except TokenStoreError as exc:
            raise CliError(str(exc), _sdk.EXIT_DATA) from None
        except FileNotFoundError as exc:
            raise CliError(str(exc), _sdk.EXIT_DATA) from None
