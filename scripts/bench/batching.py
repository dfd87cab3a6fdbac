"""Dynamic batching off vs on, same run, on the embedded demo server (tiny model).

    python -m scripts.bench.batching [--clients 8] [--jobs-per-client 6] [--rounds 2] [--max-images 4]

Two servers (`python -m service --demo`): BATCH_MAX_IMAGES=1 (off) and BATCH_MAX_IMAGES=--max-images (on),
rounds alternating between them. Each round: --clients concurrent v1 clients, each sending --jobs-per-client
requests back to back (throughput, jobs/s); then one client sending the same number sequentially (latency,
the cost of waiting for company when there is none). Prints jobs/s, latency p50/p95 and the batch sizes the
jobs ran in. Then, in this process, reproducibility: four requests run alone twice and together in one
batch; prints whether alone gives the same bytes twice and the largest pixel difference batch vs alone.
Writes bench-results/batching.json.
"""

import argparse
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from scripts.bench.common import DemoServer, percentile, print_table, write_json
from tests.images import b64_png, box_mask, gradient_image

SLUG = "sd1.5-inpainting"


def call(client: httpx.Client, url: str, payload: dict) -> tuple[float, int]:
    started = time.perf_counter()
    answer = client.post(f"{url}/v1/{SLUG}", json={**payload, "base64": True})
    answer.raise_for_status()
    request_id = answer.headers["x-request-id"]
    latency = time.perf_counter() - started
    record = client.get(f"{url}/v2/requests/{request_id}/status").json()
    return latency, record["metrics"]["batch_size"]


def round_trip(server: DemoServer, clients: int, jobs: int, payload: dict) -> dict:
    headers = {"x-api-key": server.key}

    def one_client(_):
        with httpx.Client(headers=headers, timeout=300) as client:
            return [call(client, server.url, payload) for _ in range(jobs)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for per_client in pool.map(one_client, range(clients)) for r in per_client]
    elapsed = time.perf_counter() - started
    with httpx.Client(headers=headers, timeout=300) as client:
        single = [call(client, server.url, payload)[0] for _ in range(jobs)]
    return {"jobs_per_s": len(results) / elapsed, "latencies": [r[0] for r in results],
            "batch_sizes": [r[1] for r in results], "single_latencies": single}


def reproducibility(model_dir: str) -> dict:
    """Four single-image requests (different prompts and seeds, one with only_masked): alone twice, then in
    one batch. Pixel differences are per channel, 0..255."""
    import numpy as np
    import torch

    from inference import Inpainter
    from schemas import InpaintParams

    torch.manual_seed(0)
    model = Inpainter(model_dir, device="cpu", dtype=torch.float32, safety_checker=False)
    image, mask = gradient_image(), box_mask()
    requests = [InpaintParams(prompt="a red chair", seed=1), InpaintParams(prompt="a lamp", seed=2),
                InpaintParams(prompt="a cat", seed=3, negative_prompt="blurry"),
                InpaintParams(prompt="a vase", seed=4, only_masked=True)]

    def arrays(outputs):
        return [np.asarray(o.images[0].convert("RGB")).astype(int) for o in outputs]

    alone = arrays([model.run(r, image, mask) for r in requests])
    again = arrays([model.run(r, image, mask) for r in requests])
    batched = arrays(model.run_batch([(r, image, mask) for r in requests]))
    diffs = [np.abs(a - b) for a, b in zip(alone, batched)]
    return {"alone_twice_same_bytes": all(np.array_equal(a, b) for a, b in zip(alone, again)),
            "batch_vs_alone_max_diff": [int(d.max()) for d in diffs],
            "batch_vs_alone_mean_diff": [round(float(d.mean()), 4) for d in diffs]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs-per-client", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-images", type=int, default=4)
    parser.add_argument("--wait-ms", type=float, default=10.0)
    parser.add_argument("--model-dir", default=".models/tiny-sd-inpainting", help="for the reproducibility check")
    args = parser.parse_args(argv)
    if args.clients == 0:  # only the reproducibility check
        print(reproducibility(args.model_dir))
        return 0

    payload = {"image": b64_png(gradient_image()), "mask": b64_png(box_mask()), "prompt": "a red chair", "seed": 1}
    modes = {"off": 1, "on": args.max_images}
    servers = {mode: DemoServer(extra_env={"BATCH_MAX_IMAGES": str(size), "BATCH_WAIT_MS": str(args.wait_ms),
                                           "RATE_LIMIT_PER_SECOND": "0"})
               for mode, size in modes.items()}
    collected = {mode: {"rates": [], "latencies": [], "batch_sizes": [], "single_latencies": []} for mode in modes}
    try:
        for server in servers.values():
            server.wait_ready()
        for server in servers.values():  # warm-up
            round_trip(server, 2, 1, payload)
        for _ in range(args.rounds):
            for mode, server in servers.items():
                result = round_trip(server, args.clients, args.jobs_per_client, payload)
                bucket = collected[mode]
                bucket["rates"].append(result["jobs_per_s"])
                for name in ("latencies", "batch_sizes", "single_latencies"):
                    bucket[name].extend(result[name])
    finally:
        for server in servers.values():
            server.stop()

    rows, report = [], {}
    for mode, bucket in collected.items():
        rate = sum(bucket["rates"]) / len(bucket["rates"])
        lat, single = bucket["latencies"], bucket["single_latencies"]
        sizes = dict(sorted(Counter(bucket["batch_sizes"]).items()))
        report[mode] = {"max_images": modes[mode], "jobs_per_s": round(rate, 3),
                        "rates_per_round": [round(r, 3) for r in bucket["rates"]],
                        "latency_ms_p50": round(percentile(lat, 50) * 1000, 1),
                        "latency_ms_p95": round(percentile(lat, 95) * 1000, 1),
                        "single_client_ms_p50": round(percentile(single, 50) * 1000, 1),
                        "single_client_ms_p95": round(percentile(single, 95) * 1000, 1),
                        "jobs_by_batch_size": sizes}
        r = report[mode]
        rows.append([f"{mode} (max {modes[mode]})", len(lat), f"{rate:.2f}", r["latency_ms_p50"], r["latency_ms_p95"],
                     r["single_client_ms_p50"], r["single_client_ms_p95"], sizes])
    print(f"\n{args.clients} concurrent v1 clients x {args.jobs_per_client} jobs, {args.rounds} rounds alternating; "
          f"then 1 client x {args.jobs_per_client} jobs")
    print_table(["batching", "jobs", "jobs/s", "p50 ms", "p95 ms", "1-client p50 ms", "1-client p95 ms",
                 "jobs by batch size"], rows)
    repro = reproducibility(args.model_dir)
    print(f"\nreproducibility (tiny model, CPU): alone twice, same bytes: {repro['alone_twice_same_bytes']}; "
          f"batch of 4 vs alone, max pixel difference per request: {repro['batch_vs_alone_max_diff']}, "
          f"mean: {repro['batch_vs_alone_mean_diff']}")
    write_json("batching.json", {"args": vars(args), "results": report, "reproducibility": repro})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
