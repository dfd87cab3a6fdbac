"""Serving overhead of the embedded default on the tiny model.

    python -m scripts.bench.serving [--clients 1,8,32] [--jobs-per-client 3] [--interval 0.02]

Starts `python -m service --demo` in a separate process with the per-key poll limit off (the clients below poll
far faster than it allows; it is measured by scripts/bench/polling.py), or uses --url/--key, then:
1. v2: N clients each submit jobs and poll status as the Segmind SDK's AsyncJob.wait
   does (status URL until COMPLETED, then the result URL), every --interval seconds.
2. v1: sequential sync calls.
3. Status endpoint throughput at concurrency 32 with wrk (a separate process).
Reports client-observed submit->COMPLETED, the job's own inference_time and
queue_time, and overhead = client latency - inference_time (the model call), the
same definition as the side-by-side comparison with other servers (for v1 the
model call is the x-generation-time header); "beyond queue" also takes the
queue_time off (what the service and the client's polling add when jobs wait
behind others), and "overhead_time" is what the service reports of its own time
(metrics.overhead_time). p50/p95/p99; jobs/s. Writes JSON to
bench-results/serving.json.
"""

import argparse
import re
import shutil
import subprocess
import sys
import threading
import time

import httpx

from scripts.bench.common import DemoServer, print_table, summary_ms, write_json
from tests.images import b64_png, box_mask, gradient_image

SLUG = "sd1.5-inpainting"


def body() -> dict:
    return {"image": b64_png(gradient_image()), "mask": b64_png(box_mask()), "prompt": "a red chair", "seed": 1}


def run_client(url, key, jobs, interval, payload, out, wait_param):
    with httpx.Client(headers={"x-api-key": key}, timeout=120) as client:
        for _ in range(jobs):
            start = time.perf_counter()
            submitted = client.post(f"{url}/v2/{SLUG}", json=payload).json()
            status_url = submitted["status_url"] + wait_param
            while True:
                state = client.get(status_url).json()
                if state["status"] in ("COMPLETED", "FAILED"):
                    break
                if interval:
                    time.sleep(interval)
            result = client.get(submitted["response_url"]).json()
            latency = time.perf_counter() - start
            metrics = result.get("metrics") or {}
            out.append({"latency": latency, "inference": metrics.get("inference_time") or 0.0,
                        "queue": metrics.get("queue_time") or 0.0, "reported": metrics.get("overhead_time") or 0.0,
                        "status": result["status"]})


def bench_v2(url, key, clients, jobs, interval, wait_param=""):
    payload = body()
    samples: list[dict] = []
    threads = [threading.Thread(target=run_client, args=(url, key, jobs, interval, payload, samples, wait_param))
               for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    done = [s for s in samples if s["status"] == "COMPLETED"]
    return {
        "clients": clients,
        "jobs": len(samples),
        "completed": len(done),
        "jobs_per_s": round(len(done) / elapsed, 2),
        "latency_ms": summary_ms([s["latency"] for s in done]),
        "inference_ms": summary_ms([s["inference"] for s in done]),
        "queue_ms": summary_ms([s["queue"] for s in done]),
        "overhead_ms": summary_ms([s["latency"] - s["inference"] for s in done]),
        "beyond_queue_ms": summary_ms([s["latency"] - s["inference"] - s["queue"] for s in done]),
        "overhead_time_ms": summary_ms([s["reported"] for s in done]),
    }


def bench_v1(url, key, n):
    payload = body()
    latencies, inference = [], []
    with httpx.Client(headers={"x-api-key": key}, timeout=120) as client:
        for _ in range(n):
            start = time.perf_counter()
            r = client.post(f"{url}/v1/{SLUG}", json=payload)
            latencies.append(time.perf_counter() - start)
            inference.append(float(r.headers["x-generation-time"]))
    return {"calls": n, "latency_ms": summary_ms(latencies), "inference_ms": summary_ms(inference),
            "overhead_ms": summary_ms([a - b for a, b in zip(latencies, inference)])}


def bench_status_rps(url, key, seconds, connections):
    with httpx.Client(headers={"x-api-key": key}, timeout=120) as client:
        submitted = client.post(f"{url}/v2/{SLUG}", json=body()).json()
        while client.get(submitted["status_url"]).json()["status"] not in ("COMPLETED", "FAILED"):
            time.sleep(0.05)
    if not shutil.which("wrk"):
        return {"skipped": "wrk not installed (apt-get install wrk)"}
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-H", f"x-api-key: {key}", submitted["status_url"]],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    latency = re.search(r"Latency\s+(\S+)", out).group(1)
    return {"connections": connections, "seconds": seconds, "requests_per_s": rps, "avg_latency": latency,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--key", default="bench-key")
    parser.add_argument("--server-module", default="service",
                        help="the server to start: service (the worker in its own process) or "
                             "scripts.bench.thread_worker_server (the worker on a server thread)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--jobs-per-client", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between status polls")
    parser.add_argument("--long-poll", type=float, default=0, help="use ?wait=N long-polling instead of sleeping")
    parser.add_argument("--v1-calls", type=int, default=10)
    parser.add_argument("--rps-seconds", type=int, default=5)
    args = parser.parse_args(argv)

    server = None
    url, key = args.url, args.key
    if not url:
        server = DemoServer(key, {"STATUS_POLLS_PER_SECOND": "0"}, module=args.server_module)
        server.wait_ready()
        url = server.url
    try:
        # Warm-up: first request pays lazy scheduler creation etc.
        bench_v1(url, key, 2)
        wait_param = f"?wait={args.long_poll:g}" if args.long_poll else ""
        interval = 0 if args.long_poll else args.interval
        v2 = [bench_v2(url, key, int(c), args.jobs_per_client, interval, wait_param)
              for c in args.clients.split(",")]
        v1 = bench_v1(url, key, args.v1_calls)
        rps = bench_status_rps(url, key, args.rps_seconds, 32)
    finally:
        if server:
            server.stop()

    mode = f"long-poll wait={args.long_poll:g}s" if args.long_poll else f"poll every {args.interval * 1000:g} ms"
    print(f"\nv2 submit -> COMPLETED ({mode}); ms p50/p95/p99")
    rows = []
    for r in v2:
        fmt = lambda d: f"{d['p50']}/{d['p95']}/{d['p99']}"  # noqa: E731
        rows.append([r["clients"], r["completed"], r["jobs_per_s"], fmt(r["latency_ms"]), fmt(r["inference_ms"]),
                     fmt(r["queue_ms"]), fmt(r["overhead_ms"]), fmt(r["beyond_queue_ms"]),
                     fmt(r["overhead_time_ms"])])
    print("overhead = latency - inference_time; beyond queue = overhead - queue_time; "
          "overhead_time = the service's own report")
    print_table(["clients", "jobs", "jobs/s", "latency", "inference", "queue", "overhead", "beyond queue",
                 "overhead_time"], rows)
    print(f"\nv1 sync ({v1['calls']} calls): latency {v1['latency_ms']}  inference {v1['inference_ms']}  "
          f"overhead {v1['overhead_ms']}")
    print(f"status endpoint: {rps}")
    write_json("serving.json", {"mode": mode, "v2": v2, "v1": v1, "status_endpoint": rps})
    return 0


if __name__ == "__main__":
    sys.exit(main())
