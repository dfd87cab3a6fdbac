"""Real servers on loopback for the tests: the API under uvicorn, a static image host."""

import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import uvicorn

from service.config import Settings
from service.http.app import create_app
from service.embedded import build_embedded

KEY_A = "test-key-a"
KEY_B = "test-key-b"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    def __init__(self, app, port: int):
        self.app = app
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> "ApiServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("API server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def make_settings(state_dir: Path, model_dir: Path, **overrides) -> Settings:
    values = dict(
        api_keys=[KEY_A, KEY_B],
        state_dir=state_dir,
        model_dir=model_dir,
        allow_private_urls=False,
        sweep_interval_seconds=0.2,
        shutdown_grace_seconds=0.5,
    )
    values.update(overrides)
    return Settings(**values)


@contextmanager
def api_server(settings: Settings, inpainter_factory):
    server = ApiServer(create_app(build_embedded(settings, inpainter_factory)), free_port()).start()
    try:
        yield server
    finally:
        server.stop()


class SlowInpainter:
    """Wraps a real Inpainter; waits `delay` seconds (or until `gate` is set) before running."""

    def __init__(self, inner, delay: float = 0.0, gate: threading.Event | None = None):
        self.inner, self.delay, self.gate = inner, delay, gate
        self.device = inner.device

    def _hold(self):
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(self.delay)

    def run(self, *args, **kwargs):
        self._hold()
        return self.inner.run(*args, **kwargs)

    def run_batch(self, *args, **kwargs):
        self._hold()
        return self.inner.run_batch(*args, **kwargs)


class StaticHost:
    """Serves fixed byte routes on loopback. '/redirect/<path>' answers 302 to '/<path>',
    '/goto?<url>' 302 to <url>, '/loop' 302 to itself."""

    def __init__(self, routes: dict[str, tuple[bytes, str]]):
        routes_ref = routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.startswith("/redirect/"):
                    self.send_response(302)
                    self.send_header("Location", "/" + self.path.removeprefix("/redirect/"))
                    self.end_headers()
                    return
                if self.path.startswith("/goto?"):
                    self.send_response(302)
                    self.send_header("Location", self.path.removeprefix("/goto?"))
                    self.end_headers()
                    return
                if self.path == "/loop":
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.end_headers()
                    return
                if self.path not in routes_ref:
                    self.send_response(404)
                    self.end_headers()
                    return
                body, content_type = routes_ref[self.path]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


def start_service(args: list[str], env: dict, cwd: Path, log_path: Path, timeout: float = 120) -> subprocess.Popen:
    """`python -m service *args` in a process of its own (its output appended to log_path), returned once its
    /health answers ok on env's PORT; a server that exits or never gets ready fails the test with its log."""
    url = f"http://127.0.0.1:{env['PORT']}/health"
    with open(log_path, "a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service", *args], cwd=cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).json()["status"] == "ok":
                return proc
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log_path.read_text()[-3000:]
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the server did not start:\n{log_path.read_text()[-3000:]}")
