"""Camera-like test material: coloured glyph objects pasted into bigger textured scenes at known positions, and
video files / MJPEG streams made from them (real encoded files and a real HTTP server on 127.0.0.1)."""
from __future__ import annotations

import http.server
import socketserver
import threading
import time

import numpy as np

from metaedge.train.data.synthetic import _class_strokes, _render  # the glyph renderer of SyntheticGlyphs

# Pairs of classes share a shape and differ only in colour (R,G,B): read with the wrong channel order, a red
# object looks like its blue twin.
COLOURS = [(220, 40, 40), (40, 40, 220), (40, 190, 60), (230, 200, 40)]


def objects(num_shapes: int = 3, shots: int = 6, size: int = 64, seed: int = 0):
    """{label: [uint8 RGB [size, size, 3] images]}: each shape in each of two colours (red/blue pairs etc.)."""
    out = {}
    for shape in range(num_shapes):
        rng = np.random.default_rng([seed, shape])
        masks = _render(_class_strokes(rng), rng, shots, size).astype(np.float64) / 255.0  # strokes bright
        for c in (0, 1) if shape % 2 == 0 else (2, 3):
            colour = np.asarray(COLOURS[c], np.float64)
            paper = np.full(3, 235.0)
            imgs = paper + masks[..., None] * (colour - paper)
            out[f"shape{shape}-{'rbgy'[c]}"] = [np.clip(np.round(im), 0, 255).astype(np.uint8) for im in imgs]
    return out


def scene(obj: np.ndarray, box, height: int = 240, width: int = 320, seed: int = 0) -> np.ndarray:
    """An RGB frame with textured background and ``obj`` resized into ``box`` = (x, y, w, h)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    bg = np.stack([90 + 40 * np.sin(xx / 17.0 + seed), 100 + 35 * np.cos(yy / 13.0), 110 + 30 * np.sin((xx + yy) / 23.0)],
                  axis=-1) + rng.normal(0, 6, (height, width, 3))
    frame = np.clip(bg, 0, 255).astype(np.uint8)
    x, y, w, h = box
    from PIL import Image
    frame[y:y + h, x:x + w] = np.asarray(Image.fromarray(obj).resize((w, h), Image.BILINEAR))
    return frame


def write_video(path, frames_rgb, fps: float = 10.0) -> str:
    """RGB frames -> a lossless FFV1 .mkv (or whatever the extension picks) written with OpenCV."""
    import cv2
    h, w = frames_rgb[0].shape[:2]
    codec = {"mkv": "FFV1", "avi": "MJPG", "mp4": "mp4v"}[str(path).rsplit(".", 1)[1]]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    assert writer.isOpened()
    for f in frames_rgb:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    return str(path)


class MjpegServer:
    """A real MJPEG-over-HTTP camera on 127.0.0.1 (multipart/x-mixed-replace, like IP cameras): frame i shows
    gray level 8 i. ``drop()`` cuts every connection (a lost stream); ``stop()`` shuts it down."""

    def __init__(self, fps: float = 50.0, port: int = 0):
        import cv2
        server = self
        self.served = 0
        self._cut = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while not server._cut.is_set():
                        img = np.full((48, 64, 3), (server.served * 8) % 256, np.uint8)
                        jpg = cv2.imencode(".jpg", img)[1].tobytes()
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(jpg) + jpg + b"\r\n")
                        server.served += 1
                        time.sleep(1.0 / fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def drop(self) -> None:
        self._cut.set()
        time.sleep(0.2)
        self._cut.clear()

    def stop(self) -> None:
        self._cut.set()
        self._server.shutdown()
        self._server.server_close()
