"""One status request through the ASGI app in-process (no network, no server): microseconds per request.

    python -m scripts.bench.status_inprocess [--requests 3000]

Measures what the service itself adds to a status poll (routing, dependencies, store read, body),
without the noise of sockets and a load generator.
"""

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from schemas import MODEL_SLUG
from service.http.app import create_app
from service.embedded import build_embedded
from service.config import Settings
from service.http.inputs import FetchLimits, make_client
from tests.images import b64_png, box_mask, gradient_image

KEY = "bench-key"


class NoModel:
    """The job stays QUEUED or fails: only the web tier is measured."""

    device = None


async def call(app, method: str, path: str, body: bytes = b"") -> list[dict]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8000"), (b"x-api-key", KEY.encode()),
                         (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8000), "state": {}}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def measure(requests: int) -> float:
    settings = Settings(api_keys=[KEY], state_dir=Path(tempfile.mkdtemp(prefix="inprocess-")))
    app = create_app(build_embedded(settings, make_inpainter=NoModel))
    app.state.http = make_client(FetchLimits())
    payload = {"image": b64_png(gradient_image()), "mask": b64_png(box_mask()), "prompt": "a chair"}
    sent = await call(app, "POST", f"/v2/{MODEL_SLUG}", json.dumps(payload).encode())
    request_id = json.loads(next(m for m in sent if m["type"] == "http.response.body")["body"])["request_id"]
    path = f"/v2/requests/{request_id}/status"
    for _ in range(300):
        await call(app, "GET", path)
    started = time.perf_counter()
    for _ in range(requests):
        await call(app, "GET", path)
    return (time.perf_counter() - started) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    print(f"status request in-process: {asyncio.run(measure(args.requests)):.0f} µs")


if __name__ == "__main__":
    main()
