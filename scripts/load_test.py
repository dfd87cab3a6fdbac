"""Load test: a burst of concurrent v2 submits plus polling, against the demo server, loopback only.

    python -m scripts.load_test [--jobs 200] [--max-seconds 600] [--url http://127.0.0.1:8000 --key KEY]

Without --url it starts `python -m service --demo` in a separate process on a free
loopback port (rate and poll limits off, queue cap above the burst) and stops it afterwards.
Every accepted job is polled until COMPLETED/FAILED or the deadline. Reports
accepted / refused / completed / failed / lost (accepted, never terminal), the
number of 5xx answers, and p50/p99 latencies. Exits 1 if any job was lost or any
5xx was seen. Bounded in count (--jobs) and time (--max-seconds).
"""

import argparse
import asyncio
import sys
import time
from urllib.parse import urlsplit

import httpx

from scripts.bench.common import DemoServer, percentile, write_json
from tests.images import b64_png, box_mask, gradient_image

SLUG = "sd1.5-inpainting"


async def one_job(client, url, payload, deadline, poll, stats):
    started = time.perf_counter()
    try:
        r = await client.post(f"{url}/v2/{SLUG}", json=payload)
    except httpx.HTTPError as exc:
        stats["transport_errors"].append(type(exc).__name__)
        return
    stats["submit_s"].append(time.perf_counter() - started)
    if r.status_code >= 500:
        stats["5xx"] += 1
    if r.status_code != 200:
        stats["refused"][r.status_code] = stats["refused"].get(r.status_code, 0) + 1
        return
    stats["accepted"] += 1
    status_url = r.json()["status_url"]
    while time.monotonic() < deadline:
        await asyncio.sleep(poll)
        try:
            s = await client.get(status_url)
        except httpx.HTTPError as exc:
            stats["transport_errors"].append(type(exc).__name__)
            continue
        if s.status_code >= 500:
            stats["5xx"] += 1
            continue
        state = s.json().get("status")
        if s.status_code == 404:
            break  # an accepted job that vanished: lost
        if state in ("COMPLETED", "FAILED"):
            stats["completed" if state == "COMPLETED" else "failed"] += 1
            stats["end_to_end_s"].append(time.perf_counter() - started)
            return
    stats["lost"] += 1


async def run(url, key, jobs, max_seconds, poll):
    payload = {"image": b64_png(gradient_image()), "mask": b64_png(box_mask()), "prompt": "a red chair"}
    stats = {"accepted": 0, "refused": {}, "completed": 0, "failed": 0, "lost": 0, "5xx": 0,
             "transport_errors": [], "submit_s": [], "end_to_end_s": []}
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=jobs, max_keepalive_connections=jobs)
    async with httpx.AsyncClient(headers={"x-api-key": key}, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one_job(client, url, payload, deadline, poll, stats) for _ in range(jobs)))
        stats["wall_s"] = round(time.perf_counter() - started, 2)
    return stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--key", default="load-test-key")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--poll", type=float, default=0.5)
    args = parser.parse_args(argv)
    if args.url and urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("refusing: the load test only targets loopback addresses")

    server = None
    url = args.url
    if not url:
        server = DemoServer(args.key, {"RATE_LIMIT_PER_SECOND": "0", "STATUS_POLLS_PER_SECOND": "0",
                                        "MAX_QUEUE_DEPTH": str(args.jobs * 2)})
        server.wait_ready()
        url = server.url
    try:
        stats = asyncio.run(run(url, args.key, args.jobs, args.max_seconds, args.poll))
    finally:
        if server:
            server.stop()

    summary = {
        "jobs": args.jobs, "accepted": stats["accepted"], "refused": stats["refused"],
        "completed": stats["completed"], "failed": stats["failed"], "lost": stats["lost"], "5xx": stats["5xx"],
        "transport_errors": len(stats["transport_errors"]), "wall_s": stats["wall_s"],
        "submit_ms": {"p50": round(percentile(stats["submit_s"], 50) * 1000, 1),
                      "p99": round(percentile(stats["submit_s"], 99) * 1000, 1)},
        "end_to_end_s": {"p50": round(percentile(stats["end_to_end_s"], 50), 2),
                         "p99": round(percentile(stats["end_to_end_s"], 99), 2)},
    }
    for name, value in summary.items():
        print(f"{name:>16}: {value}")
    write_json("load_test.json", summary)
    return 1 if summary["lost"] or summary["5xx"] or summary["transport_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
