"""The floor under `make bench-serving`'s v2 overhead on this machine: its client against a server that does no work.

    python -m scripts.bench.floor [--jobs 60]

The v2 flow is three HTTP exchanges (submit, a long-poll status, the result), each with JSON both ways. Here a
bare FastAPI app on uvicorn (loopback, its own process) answers them at once, first doing nothing, then decoding
the two input PNGs at submit (work every server must do before the model runs). The client is
scripts.bench.serving's own (`run_client`, one client, `?wait=25`), so the figures compare directly with its
"overhead" column: no server can report less than this floor on the same machine. Writes
bench-results/floor.json.
"""

import argparse
import base64
import io
import subprocess
import sys
import time
from pathlib import Path

from scripts.bench.common import free_port, print_table, summary_ms, write_json
from scripts.bench.serving import SLUG, body, run_client

ROOT = Path(__file__).resolve().parents[2]


def stub_app(decode: bool):
    from fastapi import FastAPI, Request
    from PIL import Image

    app = FastAPI()
    done = {"status": "COMPLETED", "metrics": {"inference_time": 0.0, "queue_time": 0.0}}

    @app.post(f"/v2/{SLUG}")
    async def submit(request: Request):
        payload = await request.json()
        if decode:
            for field in ("image", "mask"):
                Image.open(io.BytesIO(base64.b64decode(payload[field]))).load()
        base = str(request.base_url).rstrip("/")
        return {"request_id": "job", "status": "QUEUED", "status_url": f"{base}/v2/requests/job/status",
                "response_url": f"{base}/v2/requests/job"}

    @app.get("/v2/requests/job/status")
    async def status(wait: float = 0):
        return {"request_id": "job", **done}

    @app.get("/v2/requests/job")
    async def result():
        return {"request_id": "job", "image": "http://127.0.0.1/files/job.jpeg", **done}

    return app


def serve(port: int, decode: bool) -> None:
    import uvicorn

    uvicorn.run(stub_app(decode), host="127.0.0.1", port=port, log_level="warning")


def measure(jobs: int, decode: bool) -> dict:
    import httpx

    port = free_port()
    args = [sys.executable, "-m", "scripts.bench.floor", "--serve", str(port)] + (["--decode"] if decode else [])
    server = subprocess.Popen(args, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):  # up to 30 s for uvicorn to listen
            try:
                httpx.get(f"{url}/docs", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the stub server did not start within 30 s")
        samples: list[dict] = []
        run_client(url, "", 5, 0, body(), samples, "?wait=25")  # warm-up
        samples.clear()
        run_client(url, "", jobs, 0, body(), samples, "?wait=25")
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    return {"decode": decode, "jobs": len(samples), "latency_ms": summary_ms([s["latency"] for s in samples])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: run the stub server on this port
    parser.add_argument("--decode", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.decode)
        return 0
    runs = [measure(args.jobs, decode=False), measure(args.jobs, decode=True)]
    print("\nv2 flow against a server that does no work (scripts.bench.serving's client, 1 client, ?wait=25); ms")
    print_table(["server", "jobs", "latency p50", "p95"],
                [["answers at once" if not r["decode"] else "decodes the inputs, then answers", r["jobs"],
                  r["latency_ms"]["p50"], r["latency_ms"]["p95"]] for r in runs])
    write_json("floor.json", {"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
