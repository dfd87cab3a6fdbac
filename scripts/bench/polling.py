"""Does polling slow a job? A job's denoising speed on the embedded demo server, idle and while clients poll.

    python -m scripts.bench.polling [--long-pollers 300] [--tight-pollers 2] [--steps 100] [--runs 2]

For each worker placement, the default (`python -m service --demo`: the worker in a process of its own) and the
former one (scripts/bench/thread_worker_server.py: the worker on a thread of the server process):
- idle: one 100-step job at a time, waited for with one long-poll; its `inference_time`;
- loaded: the same while --long-pollers clients loop on `GET /status?wait=30` of the running job (each change
  wakes them all) and --tight-pollers loop on `GET /status` with no wait. Every poller has its own API key,
  so the per-key poll limit never steps in: this measures the isolation itself. The pollers run in a process
  of their own (asyncio); on a 2-core machine they compete with the server and the worker for the cores, as
  real clients on the same host would.
Prints seconds per job idle and loaded, their ratio (the goal: within 1.2), and the polls answered per second.
Writes bench-results/polling.json.
"""

import argparse
import asyncio
import multiprocessing
import statistics
import time

import httpx

from scripts.bench.common import DemoServer, print_table, write_json
from tests.images import b64_png, box_mask, gradient_image

SLUG = "sd1.5-inpainting"
PLACEMENTS = {"own process (default)": "service", "server thread (former)": "scripts.bench.thread_worker_server"}


def job_body(steps: int) -> dict:
    return {"image": b64_png(gradient_image()), "mask": b64_png(box_mask()), "prompt": "a chair", "seed": 1,
            "num_inference_steps": steps}


def run_job(url: str, key: str, steps: int) -> float:
    """Submit, long-poll to the end, return the job's inference_time."""
    with httpx.Client(base_url=url, headers={"x-api-key": key}, timeout=120) as client:
        request_id = client.post(f"/v2/{SLUG}", json=job_body(steps)).json()["request_id"]
        while client.get(f"/v2/requests/{request_id}/status", params={"wait": 30}).json()["status"] not in (
                "COMPLETED", "FAILED"):
            pass
        result = client.get(f"/v2/requests/{request_id}").json()
        assert result["status"] == "COMPLETED", result
        return result["metrics"]["inference_time"]


def pollers(url: str, keys: list[str], target: str, long_pollers: int, tight: int, stop, counts) -> None:
    """Runs in its own process until `stop` is set; counts answered polls and 429s."""

    async def loop(key: str, wait: float):
        async with httpx.AsyncClient(base_url=url, headers={"x-api-key": key}, timeout=60) as client:
            while not stop.is_set():
                try:
                    answer = await client.get(f"/v2/requests/{target}/status", params={"wait": wait})
                    with counts.get_lock():
                        counts[0 if answer.status_code in (200, 422) else 1] += 1
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)

    async def main():
        await asyncio.gather(*(loop(keys[i], 30) for i in range(long_pollers)),
                             *(loop(keys[long_pollers + i], 0) for i in range(tight)))

    asyncio.run(main())


def measure(module: str, args) -> dict:
    keys = [f"bench-key-{i}" for i in range(args.long_pollers + args.tight_pollers + 1)]
    server = DemoServer(key=keys[-1], module=module, extra_env={"API_KEYS": ",".join(keys)})
    try:
        server.wait_ready(timeout=300)
        run_job(server.url, server.key, args.steps)  # warm-up
        idle = [run_job(server.url, server.key, args.steps) for _ in range(args.runs)]
        loaded = []  # the pollers watch the measured job itself: each of its changes wakes every long-poll
        context = multiprocessing.get_context("spawn")
        for _ in range(args.runs):
            with httpx.Client(base_url=server.url, headers={"x-api-key": server.key}, timeout=120) as client:
                request_id = client.post(f"/v2/{SLUG}", json=job_body(args.steps)).json()["request_id"]
            stop, counts = context.Event(), context.Array("l", 2)
            proc = context.Process(target=pollers, args=(server.url, keys, request_id, args.long_pollers,
                                                         args.tight_pollers, stop, counts))
            started = time.monotonic()
            proc.start()
            with httpx.Client(base_url=server.url, headers={"x-api-key": server.key}, timeout=120) as client:
                while client.get(f"/v2/requests/{request_id}/status", params={"wait": 30}).json()["status"] not in (
                        "COMPLETED", "FAILED"):
                    pass
                loaded.append(client.get(f"/v2/requests/{request_id}").json()["metrics"]["inference_time"])
            elapsed = time.monotonic() - started
            stop.set()
            proc.join(30)
            if proc.is_alive():
                proc.terminate()
        return {"idle_s": round(statistics.median(idle), 3), "loaded_s": round(statistics.median(loaded), 3),
                "ratio": round(statistics.median(loaded) / statistics.median(idle), 2),
                "polls_per_s": round(counts[0] / elapsed, 1), "refused_per_s": round(counts[1] / elapsed, 1)}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long-pollers", type=int, default=300)
    parser.add_argument("--tight-pollers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    rows = {}
    for placement, module in PLACEMENTS.items():
        rows[placement] = measure(module, args)
        print(placement, rows[placement], flush=True)
    print(f"\n{args.steps}-step job on the tiny model; {args.long_pollers} long-pollers and {args.tight_pollers} "
          f"tight pollers (a key each) while it runs; median of {args.runs}")
    print_table(["worker", "idle s", "loaded s", "loaded / idle", "polls answered/s", "429/s"],
                [[name, r["idle_s"], r["loaded_s"], r["ratio"], r["polls_per_s"], r["refused_per_s"]]
                 for name, r in rows.items()])
    write_json("polling.json", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
