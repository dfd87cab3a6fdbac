"""Does polling slow a job? A job's denoising speed on the embedded demo server, idle and while clients poll.

    python -m scripts.bench.polling [--long-pollers 300] [--tight-pollers 2] [--steps 100] [--runs 2]

For each worker placement, the default (`python -m service --demo`: the worker in a process of its own) and the
former one (scripts/bench/thread_worker_server.py: the worker on a thread of the server process):
- idle: one 100-step job at a time, waited for with one long-poll; its `inference_time`;
- loaded: the same while --long-pollers clients loop on `GET /status?wait=30` of the running job (each change
  wakes them all) and --tight-pollers loop on `GET /status` with no wait, all with the job's own key (a job is
  visible to its key only). With the per-key poll limit off this measures the isolation itself; then again with
  the limit at its default, the second line. The pollers run in a process of their own (asyncio); on a 2-core
  machine they compete with the server and the worker for the cores, as real clients on the same host would.
Prints seconds per job idle and loaded, their ratio (the goal: within 1.2), and the polls answered and refused
per second.
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
SETUPS = {  # name: (server module, status polls per second and key; 0 = no limit)
    "worker in its own process, no poll limit": ("service", "0"),
    "worker on a server thread (former), no poll limit": ("scripts.bench.thread_worker_server", "0"),
    "worker in its own process, poll limit (default)": ("service", None),
}


def job_body(steps: int) -> dict:
    return {"image": b64_png(gradient_image()), "mask": b64_png(box_mask()), "prompt": "a chair", "seed": 1,
            "num_inference_steps": steps}


def wait_for_end(client: httpx.Client, request_id: str) -> dict:
    """Long-poll the job to its end (backing off as told when the key's poll limit answers 429); its result."""
    while True:
        answer = client.get(f"/v2/requests/{request_id}/status", params={"wait": 30})
        if answer.status_code == 429:
            time.sleep(float(answer.headers["retry-after"]))
        elif answer.json()["status"] in ("COMPLETED", "FAILED"):
            break
    while (result := client.get(f"/v2/requests/{request_id}")).status_code == 429:
        time.sleep(float(result.headers["retry-after"]))
    return result.json()


def run_job(url: str, key: str, steps: int) -> float:
    """Submit, long-poll to the end, return the job's inference_time."""
    with httpx.Client(base_url=url, headers={"x-api-key": key}, timeout=120) as client:
        request_id = client.post(f"/v2/{SLUG}", json=job_body(steps)).json()["request_id"]
        result = wait_for_end(client, request_id)
        assert result["status"] == "COMPLETED", result
        return result["metrics"]["inference_time"]


def pollers(url: str, key: str, target, long_pollers: int, tight: int, stop, counts) -> None:
    """Runs in its own process until `stop` is set, connected and polling before the measured job starts: each
    poller waits for `target` (the job id) to be set, then polls it; counts answered polls and 429s."""

    async def loop(key: str, wait: float):
        async with httpx.AsyncClient(base_url=url, headers={"x-api-key": key}, timeout=60) as client:
            await client.get("/health")  # connected
            with counts.get_lock():
                counts[2] += 1
            while not target.value and not stop.is_set():
                await asyncio.sleep(0.01)
            while not stop.is_set():
                try:
                    answer = await client.get(f"/v2/requests/{target.value.decode()}/status", params={"wait": wait})
                    with counts.get_lock():
                        counts[0 if answer.status_code in (200, 422) else 1] += 1
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)

    async def main():
        await asyncio.gather(*(loop(key, 30) for _ in range(long_pollers)), *(loop(key, 0) for _ in range(tight)))

    asyncio.run(main())


def measure(module: str, poll_limit: str | None, args) -> dict:
    server = DemoServer(module=module, extra_env={} if poll_limit is None else {"STATUS_POLLS_PER_SECOND": poll_limit})
    try:
        server.wait_ready(timeout=300)
        run_job(server.url, server.key, args.steps)  # warm-up
        idle = [run_job(server.url, server.key, args.steps) for _ in range(args.runs)]
        loaded = [loaded_job(server, args) for _ in range(args.runs)]
        seconds = [run[0] for run in loaded]
        return {"idle_s": round(statistics.median(idle), 3), "loaded_s": round(statistics.median(seconds), 3),
                "ratio": round(statistics.median(seconds) / statistics.median(idle), 2),
                "polls_per_s": round(statistics.median(run[1] for run in loaded), 1),
                "refused_per_s": round(statistics.median(run[2] for run in loaded), 1)}
    finally:
        server.stop()


def loaded_job(server: DemoServer, args) -> tuple[float, float, float]:
    """One job while the pollers watch it (each of its changes wakes every long-poll): its inference_time, and the
    polls answered and refused per second while it ran."""
    context = multiprocessing.get_context("spawn")
    stop, counts, target = context.Event(), context.Array("l", 3), context.Array("c", 64)
    proc = context.Process(target=pollers, daemon=True,
                           args=(server.url, server.key, target, args.long_pollers, args.tight_pollers, stop, counts))
    proc.start()
    try:
        deadline = time.monotonic() + 120
        while counts[2] < args.long_pollers + args.tight_pollers and time.monotonic() < deadline:
            time.sleep(0.05)  # every poller connected
        with httpx.Client(base_url=server.url, headers={"x-api-key": server.key}, timeout=120) as client:
            request_id = client.post(f"/v2/{SLUG}", json=job_body(args.steps)).json()["request_id"]
            target.value = request_id.encode()
            started = time.monotonic()
            result = wait_for_end(client, request_id)
            elapsed, answered, refused = time.monotonic() - started, counts[0], counts[1]
        assert result["status"] == "COMPLETED", result
        return result["metrics"]["inference_time"], answered / elapsed, refused / elapsed
    finally:
        stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long-pollers", type=int, default=300)
    parser.add_argument("--tight-pollers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    rows = {}
    for name, (module, poll_limit) in SETUPS.items():
        rows[name] = measure(module, poll_limit, args)
        print(name, rows[name], flush=True)
    print(f"\n{args.steps}-step job on the tiny model; {args.long_pollers} long-pollers and {args.tight_pollers} "
          f"tight pollers on it while it runs; median of {args.runs}")
    print_table(["setup", "idle s", "loaded s", "loaded / idle", "polls answered/s", "429/s"],
                [[name, r["idle_s"], r["loaded_s"], r["ratio"], r["polls_per_s"], r["refused_per_s"]]
                 for name, r in rows.items()])
    write_json("polling.json", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
