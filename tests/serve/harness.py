"""A real `metaedge serve` in a fresh process on 127.0.0.1 (any free port), and real HTTP clients for it."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Server:
    """``metaedge serve BUNDLE GALLERY --port 0 ARGS...``; ``url`` once /readyz answers 200. A context manager:
    leaving it sends SIGINT and waits for a clean exit (``returncode``, ``stdout``, ``stderr`` then hold it)."""

    def __init__(self, bundle, gallery, *args, tokens=None, workdir, env=None, ready_timeout: float = 120.0,
                 expect_start: bool = True):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self._out = open(os.path.join(self.workdir, "server.out"), "w+")
        self._err = open(os.path.join(self.workdir, "server.err"), "w+")
        token_args = ["--tokens", str(tokens if tokens is not None else os.path.join(self.workdir, "no-tokens.json"))]
        argv = [sys.executable, "-m", "metaedge", "serve", str(bundle), str(gallery), "--port", "0", *token_args,
                *map(str, args)]
        # every DeprecationWarning printed (Python hides them outside __main__), so tests can see the server use
        # none of metaedge's deprecated API (deprecated_uses)
        full_env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    "PYTHONWARNINGS": "always::DeprecationWarning", **(env or {})}
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self._out, stderr=self._err, env=full_env)
        self.returncode = None
        self.url = None
        if expect_start:
            self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.stderr[-4000:]}")
            if self.url is None:
                m = re.search(r"listening on (https?://\S+?)/ ", self.stdout)
                if m:
                    self.url = m.group(1)
            if self.url is not None:
                try:
                    r = httpx.get(self.url + "/readyz", verify=False, timeout=2)
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server was not ready within {timeout} s:\n{self.stderr[-4000:]}")

    @property
    def stdout(self) -> str:
        with open(self._out.name) as f:  # (the server process writes it; this side only reads)
            return f.read()

    @property
    def stderr(self) -> str:
        with open(self._err.name) as f:
            return f.read()

    def deprecated_uses(self) -> list[str]:
        """The DeprecationWarnings the server printed that metaedge raised (third-party ones are not ours)."""
        return [line for line in self.stderr.splitlines() if "DeprecationWarning" in line
                and ("metaedge" in line.split("DeprecationWarning")[-1] or "/metaedge/" in line)]

    def wait(self, timeout: float = 60.0) -> int:
        self.returncode = self.proc.wait(timeout)
        return self.returncode

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.returncode = self.proc.returncode
        return self.returncode

    def client(self, token: str | None = None, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 60.0), **kwargs)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self._out.close()
        self._err.close()


def png(image) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(image, quality: int = 90) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_token(tokens_path, name: str, role: str) -> str:
    from metaedge.runtime.serve.tokens import TokenStore
    return TokenStore(tokens_path).create(name, role)[1]
