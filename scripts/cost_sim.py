"""What bursty traffic costs on Modal: a discrete-event simulation of the GPU containers' autoscaler.

    python -m scripts.cost_sim --bursts 3 200 --scaledown-window 2,60,300
    python -m scripts.cost_sim --poisson 600 --hours 2 --gpu-json bench-results/gpu.json
    python -m scripts.cost_sim --bursts 3 200 --sweep --latency-target 60 --png bench-results/cost_sim.png
    python -m scripts.cost_sim --bursts 3 200 --hours 24 --low-share 0.25
    python -m scripts.cost_sim --bursts 3 200 --hours 24 --low-bulk 2000

Inputs: arrival times (a CSV, or generated: Poisson at a rate, or N bursts of M requests per hour);
seconds per image at each batch size for a GPU type (from `make bench-gpu`'s JSON, from
--s-per-image, else the published figures below); cold-start seconds; the deploy knobs of
service/config.py (scaledown window, min/max/buffer containers, max queue depth) plus a batch
size and a batch wait in the manner of `@modal.batched(max_batch_size, wait_ms)`.

Prints $ per 1000 images, the idle share of billed GPU time, cold starts, p50/p95/p99 latency
(arrival to result, in seconds) and the jobs refused by the queue cap. With --low-share or
--low-bulk, also the low-priority jobs completed and expired and their wait p50/p95 (p50..p99 are
then normal jobs' latency), and the same requests all sent as normal beside it.

The model (how Modal documents its autoscaler, simplified):
- Each request is one image, one input to the GPU function. A container runs one batch at a
  time; a batch takes up to `batch_size` queued inputs, and starts when that many are queued or
  when the oldest has waited `batch_wait` since a container was free for it (Modal's @batched:
  "the lesser of a fixed time or a fixed number of requests"). batch_size 1 = no batching.
- Autoscaler: after every event it wants ceil((queued + running inputs) / batch_size) containers,
  plus `buffer_containers` while there is any work, clamped to [min_containers, max_containers].
  It starts the missing ones at once (Modal reacts within about a second; we take zero); a new
  container takes `cold_start` seconds before it can run anything. Min containers are warm at t=0.
- A container that has been idle for `scaledown_window` seconds stops if the autoscaler wants
  fewer containers than are running; longest-idle first. Work goes to the oldest free container.
- Billing: every container is billed per second of its life, cold start and idle window
  included, at its GPU's list price (service/pricing.py). CPU/memory charges are left out.
- The cap: like the service's MAX_QUEUE_DEPTH, a request arriving while `max_queue_depth` jobs
  are queued or running is refused (429) and never runs. 0 = no cap. max_containers is not a
  refusal: work beyond it waits in the queue.
- The spend cap: like the service's SPEND_CAP_USD_PER_DAY, a request arriving once the jobs that ended
  this day (t = 0 is 00:00 UTC; days of 86400 s) cost `spend_cap` USD or more is refused (429) and never
  runs; queued and running work finishes. A job's cost is its share of its batch's GPU seconds at the list
  price, as in its metrics.cost_usd: cold starts and idle windows are billed but not counted against the
  cap, so the bill can pass it. 0 = no cap.
- The low lane (a request's priority "low"): low jobs wait in the service, not on Modal, and count
  toward neither the autoscaler's demand nor its buffer while they wait. One is handed to Modal only
  when no normal input is queued and a running, ready container is idle; it then runs at once on that
  container, up to `batch_size` low jobs in a batch, with no batch wait. Once running it is an input
  like any other: Modal counts it, so a normal job arriving meanwhile may start a container, and with
  buffer_containers > 0 running low work keeps a buffer (which can start one; at 0 a low job never
  starts a container). A low job still waiting after `max_queue_seconds` (MAX_QUEUE_SECONDS) ends
  FAILED "expired", refunded and not run. Low jobs count toward the queue cap and the spend cap.
  The service checks for spare capacity after each GPU call and in its periodic sweep; we check after
  every event, so a low job arriving to an idle container starts at once rather than at the next sweep.
- The simulation ends when all work is done and every container above the minimum has stopped,
  or at the trace's duration if later; min containers are billed until then.
Simplifications: no autoscaler delay, no per-request overhead outside the GPU batch (web tier,
storage, polling), a batch's time is batch_size x s/image at that size (interpolated between
measured sizes), one GPU type, no preemption or container failures, no GPU capacity shortage.

Published figures (used when there is no GPU benchmark JSON): Hugging Face diffusers'
"Accelerated PyTorch 2.0" benchmark page (diffusers 0.17.0.dev0, torch 2.0, fp16, SD inpainting
512x512, 50 steps, no compile): iterations per second of the whole batch through the whole
pipeline -- A100 22.24 (batch 1), 11.67 (batch 4), 3.04 (batch 16); T4 6.91 (batch 1),
1.81 (batch 4). s/image = steps / (it/s x batch); the page does not say which A100 memory size,
so both A100 types use it. Scaling 50-step figures to fewer steps slightly underestimates (the
VAE and text encoder do not shrink with steps). Other GPUs need --gpu-json or --s-per-image.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import math
import random
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from scripts.bench.common import percentile, print_table
from service.jobs.pricing import normalize_gpu, price_per_second

SEGMIND_USD_PER_IMAGE = 0.002  # Segmind's sd1.5-inpainting, about $0.002 per image

PUBLISHED_IT_PER_S = {  # GPU -> {batch size: it/s of the whole batch, 512x512 inpainting}; see docstring
    "A100-40GB": {1: 22.24, 4: 11.67, 16: 3.04},
    "A100-80GB": {1: 22.24, 4: 11.67, 16: 3.04},
    "T4": {1: 6.91, 4: 1.81},
}


@dataclass(frozen=True)
class Knobs:
    scaledown_window: float = 60.0
    min_containers: int = 0
    max_containers: int = 4
    buffer_containers: int = 0
    batch_size: int = 1
    batch_wait: float = 0.0  # seconds
    max_queue_depth: int = 1000  # 0 = no cap
    cold_start: float = 10.0  # seconds from "start a container" to "it can run a batch"
    spend_cap: float = 0.0  # USD of job cost per day (SPEND_CAP_USD_PER_DAY); 0 = no cap
    max_queue_seconds: float = 3600.0  # a low job not started within this ends "expired" (MAX_QUEUE_SECONDS)

    def __post_init__(self):
        if not 2 <= self.scaledown_window <= 3600:
            raise ValueError(f"scaledown_window must be 2..3600 s (Modal's range), got {self.scaledown_window}")
        if not 0 <= self.min_containers <= self.max_containers or self.max_containers < 1:
            raise ValueError(f"need 0 <= min_containers <= max_containers and max_containers >= 1, "
                             f"got min {self.min_containers}, max {self.max_containers}")
        if self.buffer_containers < 0 or self.batch_size < 1 or self.batch_wait < 0 or self.max_queue_depth < 0:
            raise ValueError("buffer_containers, batch_wait and max_queue_depth must be >= 0 and batch_size >= 1")
        if not 0 <= self.spend_cap < math.inf:
            raise ValueError(f"spend_cap must be a finite number >= 0 (0 = off), got {self.spend_cap}")
        if self.cold_start < 0:
            raise ValueError(f"cold_start must be >= 0, got {self.cold_start}")
        if not 0 < self.max_queue_seconds < math.inf:
            raise ValueError(f"max_queue_seconds must be a finite number > 0, got {self.max_queue_seconds}")


@dataclass
class Container:
    requested_at: float
    ready_at: float
    idle_since: float | None = None  # None while starting or busy
    stopped_at: float | None = None
    batch: list = field(default_factory=list)  # (arrival, index) of the inputs it is running
    low: bool = False  # the batch is of low-priority jobs
    busy_seconds: float = 0.0
    timer_at: float | None = None


@dataclass
class Result:
    latencies: list[float]  # arrival -> result, per completed normal request
    waits: list[float]  # arrival -> its batch starts (normal requests)
    refused: int  # by the queue cap
    cold_starts: int
    billed_seconds: float
    busy_seconds: float
    cold_seconds: float
    cost: float
    end: float
    capped: int = 0  # refused by the spend cap
    low_latencies: list[float] = field(default_factory=list)  # as latencies, for completed low jobs
    low_waits: list[float] = field(default_factory=list)
    expired: int = 0  # low jobs not started within max_queue_seconds

    @property
    def images(self) -> int:
        return len(self.latencies) + len(self.low_latencies)

    @property
    def usd_per_1000_images(self) -> float:
        return self.cost / self.images * 1000 if self.images else float("nan")

    @property
    def idle_share(self) -> float:
        return (self.billed_seconds - self.busy_seconds - self.cold_seconds) / self.billed_seconds if self.billed_seconds else 0.0

    def latency(self, p: float) -> float:
        return percentile(self.latencies, p)

    def low_wait(self, p: float) -> float:
        return percentile(self.low_waits, p) if self.low_waits else float("nan")


def simulate(arrivals: list[float], service_seconds: Callable[[int], float], knobs: Knobs,
             usd_per_second: float, duration: float = 0.0, low_arrivals: list[float] = ()) -> Result:
    """Runs the model in the module docstring. `service_seconds(n)` is the GPU time of a batch of n;
    `arrivals` are normal requests, `low_arrivals` low-priority ones."""
    events: list = []
    seq = 0

    def push(at: float, kind: str, payload=None):
        nonlocal seq
        heapq.heappush(events, (at, seq, kind, payload))
        seq += 1

    for index, at in enumerate(sorted(arrivals)):
        push(at, "arrive", index)
    for index, at in enumerate(sorted(low_arrivals)):
        push(at, "arrive-low", index)
    containers = [Container(requested_at=0.0, ready_at=0.0, idle_since=0.0) for _ in range(knobs.min_containers)]
    for c in containers:
        push(knobs.scaledown_window, "idle-check", c)
    queue: deque = deque()
    low_queue: deque = deque()  # held by the service, not handed to Modal
    in_service = 0
    latencies: list[float] = []
    waits: list[float] = []
    low_latencies: list[float] = []
    low_waits: list[float] = []
    refused = cold_starts = capped = expired = 0
    now = last_done = 0.0
    spent: dict[int, float] = {}  # day -> USD of the jobs that ended on it

    def start_batch(c: "Container", t: float, lane: deque, low: bool, lane_waits: list[float]) -> None:
        """Container `c` takes a batch from `lane` at time t."""
        nonlocal in_service
        c.batch = [lane.popleft() for _ in range(min(knobs.batch_size, len(lane)))]
        c.low = low
        seconds = service_seconds(len(c.batch))
        c.busy_seconds += seconds
        c.idle_since = None
        in_service += len(c.batch)
        lane_waits.extend(t - arrival for arrival, _ in c.batch)
        push(t + seconds, "done", c)

    def reconcile(t: float):
        nonlocal cold_starts, expired
        while low_queue and t >= low_queue[0][0] + knobs.max_queue_seconds - 1e-9:
            low_queue.popleft()
            expired += 1
        live = [c for c in containers if c.stopped_at is None]
        for c in live:  # oldest first
            if c.idle_since is not None and not queue and low_queue:  # no backlog, spare capacity: hand low work
                start_batch(c, t, low_queue, True, low_waits)
                continue
            if c.idle_since is None or not queue:
                continue
            batch_opens = max(c.idle_since, queue[0][0]) + knobs.batch_wait
            if len(queue) >= knobs.batch_size or t >= batch_opens - 1e-9:
                start_batch(c, t, queue, False, waits)
            elif c.timer_at != batch_opens:
                c.timer_at = batch_opens
                push(batch_opens, "batch-timer", c)
        demand = len(queue) + in_service  # waiting low jobs are not Modal's; running ones are
        wanted = math.ceil(demand / knobs.batch_size) + (knobs.buffer_containers if demand else 0)
        wanted = min(knobs.max_containers, max(knobs.min_containers, wanted))
        for _ in range(wanted - len(live)):
            c = Container(requested_at=t, ready_at=t + knobs.cold_start)
            containers.append(c)
            live.append(c)
            cold_starts += 1
            push(c.ready_at, "ready", c)
        idle = sorted((c for c in live if c.idle_since is not None), key=lambda c: c.idle_since)
        for c in idle:
            if len(live) <= wanted:
                break
            if t >= c.idle_since + knobs.scaledown_window - 1e-9:
                c.stopped_at = t
                live.remove(c)

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind in ("arrive", "arrive-low"):
            if knobs.spend_cap and spent.get(int(now // 86400), 0.0) >= knobs.spend_cap:
                capped += 1
            elif knobs.max_queue_depth and len(queue) + len(low_queue) + in_service >= knobs.max_queue_depth:
                refused += 1
            elif kind == "arrive":
                queue.append((now, payload))
            else:
                low_queue.append((now, payload))
                push(now + knobs.max_queue_seconds, "expire")
        elif kind in ("ready", "done"):
            c = payload
            if kind == "done":
                last_done = now
                day = int(now // 86400)
                spent[day] = spent.get(day, 0.0) + service_seconds(len(c.batch)) * usd_per_second
                (low_latencies if c.low else latencies).extend(now - arrival for arrival, _ in c.batch)
                in_service -= len(c.batch)
                c.batch = []
            c.idle_since = now
            push(now + knobs.scaledown_window, "idle-check", c)
        reconcile(now)

    # Idle checks that stop nothing do not extend the bill of min containers.
    end = max([duration, last_done, *(c.stopped_at for c in containers if c.stopped_at is not None)])
    billed = sum((c.stopped_at if c.stopped_at is not None else end) - c.requested_at for c in containers)
    cold = sum(c.ready_at - c.requested_at for c in containers)
    busy = sum(c.busy_seconds for c in containers)
    return Result(latencies=latencies, waits=waits, refused=refused, cold_starts=cold_starts, billed_seconds=billed,
                  busy_seconds=busy, cold_seconds=cold, cost=billed * usd_per_second, end=end, capped=capped,
                  low_latencies=low_latencies, low_waits=low_waits, expired=expired)


# --- traces -------------------------------------------------------------------------------------

def poisson_trace(per_hour: float, hours: float, rng: random.Random) -> list[float]:
    times, t = [], rng.expovariate(per_hour / 3600) if per_hour > 0 else math.inf
    while t < hours * 3600:
        times.append(t)
        t += rng.expovariate(per_hour / 3600)
    return times


def burst_trace(bursts_per_hour: int, per_burst: int, hours: float, burst_seconds: float,
                rng: random.Random) -> list[float]:
    """`bursts_per_hour` evenly spaced bursts; each `per_burst` arrivals uniform over `burst_seconds`."""
    times = []
    for k in range(int(round(hours * bursts_per_hour))):
        start = k * 3600 / bursts_per_hour
        times.extend(start + rng.uniform(0, burst_seconds) for _ in range(per_burst))
    return sorted(times)


def read_trace_csv(path: Path) -> list[float]:
    """First column: seconds (any origin) or ISO-8601 timestamps; rows that are neither (a header) are skipped."""
    times = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row or not row[0].strip():
                continue
            cell = row[0].strip()
            try:
                times.append(float(cell))
            except ValueError:
                try:
                    times.append(datetime.fromisoformat(cell.replace("Z", "+00:00")).timestamp())
                except ValueError:
                    continue
    if not times:
        raise ValueError(f"{path}: no arrival times found (first column: seconds or ISO-8601 timestamps)")
    origin = min(times)
    return sorted(t - origin for t in times)


# --- seconds per image --------------------------------------------------------------------------

def published_table(gpu: str, steps: int) -> dict[int, float]:
    key = normalize_gpu(gpu)
    if key not in PUBLISHED_IT_PER_S:
        raise ValueError(f"no published s/image for {gpu}: pass --gpu-json (from `make bench-gpu` on that GPU) "
                         f"or --s-per-image (e.g. 1:0.9,4:0.45); published: {', '.join(PUBLISHED_IT_PER_S)}")
    return {b: steps / (its * b) for b, its in PUBLISHED_IT_PER_S[key].items()}


def parse_table(raw: str) -> dict[int, float]:
    """'1:0.9,4:0.45' -> {1: 0.9, 4: 0.45} (batch size: seconds per image)."""
    table = {}
    for part in raw.split(","):
        batch, sep, seconds = part.partition(":")
        try:
            table[int(batch)] = float(seconds)
        except ValueError:
            raise ValueError(f"--s-per-image: {part!r} is not batch:seconds (e.g. 1:0.9)") from None
        if int(batch) < 1 or float(seconds) <= 0:
            raise ValueError(f"--s-per-image: {part!r} needs batch >= 1 and seconds > 0")
    return table


def load_bench_json(path: Path, mode: str = "eager", size: int = 512, steps: int = 20) -> tuple[str | None, dict[int, float]]:
    """(GPU type, {batch: s/image}) from scripts/bench/gpu.py's JSON, rescaled to `steps`."""
    data = json.loads(Path(path).read_text())
    table = {}
    for row in data.get("rows", []):
        if row.get("error") or row["mode"] != mode or row["size"] != size:
            continue
        per_image = row["s_per_image_p50"] + (row.get("safety_checker_s_per_image") or 0.0)
        table[row["batch"]] = per_image * steps / row["steps"]
    if not table:
        modes = sorted({(r["mode"], r["size"]) for r in data.get("rows", []) if not r.get("error")})
        raise ValueError(f"{path}: no rows for mode {mode!r} at {size}px; it has {modes}")
    return data.get("gpu_type"), table


def s_per_image(table: dict[int, float], batch: int) -> float:
    """Per-image seconds at `batch`, linear between measured batch sizes, flat outside them."""
    sizes = sorted(table)
    if batch <= sizes[0]:
        return table[sizes[0]]
    if batch >= sizes[-1]:
        return table[sizes[-1]]
    hi = next(s for s in sizes if s >= batch)
    lo = max(s for s in sizes if s <= batch)
    if hi == lo:
        return table[lo]
    return table[lo] + (table[hi] - table[lo]) * (batch - lo) / (hi - lo)


def table_service(table: dict[int, float]) -> Callable[[int], float]:
    return lambda n: n * s_per_image(table, n)


# --- CLI ----------------------------------------------------------------------------------------

def floats(raw: str) -> list[float]:
    return [float(x) for x in raw.split(",") if x.strip()]


def ints(raw: str) -> list[int]:
    return [int(x) for x in raw.split(",") if x.strip()]


def summary_row(label: list, r: Result, low: bool = False) -> list:
    row = [*label, r.images, r.refused, r.capped, r.cold_starts, f"{r.usd_per_1000_images:.3f}", f"{r.idle_share:.0%}",
           f"{r.latency(50):.1f}", f"{r.latency(95):.1f}", f"{r.latency(99):.1f}"]
    if low:
        row += [len(r.low_latencies), r.expired, f"{r.low_wait(50):.0f}", f"{r.low_wait(95):.0f}"]
    return row


SUMMARY_HEADERS = ["images", "refused", "spend-capped", "cold starts", "$/1k img", "idle share", "p50 s", "p95 s", "p99 s"]
LOW_HEADERS = ["low done", "low expired", "low wait p50 s", "low wait p95 s"]  # p50..p99 above: normal jobs


def sweep_png(points: list[tuple[int, float, Result]], target: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for max_c in sorted({m for m, _, _ in points}):
        series = sorted(((w, r) for m, w, r in points if m == max_c), key=lambda x: x[0])
        xs = [r.latency(95) for _, r in series]
        ys = [r.usd_per_1000_images for _, r in series]
        ax.plot(xs, ys, marker="o", label=f"max_containers={max_c}")
        for (w, _), x, y in zip(series, xs, ys):
            ax.annotate(f"{w:g}s", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.axhline(SEGMIND_USD_PER_IMAGE * 1000, color="grey", linestyle="--", label="Segmind ~$2/1000 images")
    ax.axvline(target, color="red", linestyle=":", label=f"p95 target {target:g}s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("p95 latency, arrival to result (s, log scale)")
    ax.set_ylabel("$ per 1000 images (log scale)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def recommend(points: list[tuple[int, float, Result]], target: float) -> tuple[int, float, Result] | None:
    """Cheapest (max_containers, window) whose p95 meets the target with nothing refused."""
    ok = [p for p in points if p[2].latency(95) <= target and p[2].refused == 0]
    return min(ok, key=lambda p: (p[2].usd_per_1000_images, p[2].latency(95))) if ok else None


def print_savings(arrivals: list[float], table: dict[int, float], knobs: Knobs, usd: float, duration: float,
                  capped: Result, low: list[float] = ()) -> None:
    """The same traffic without the spend cap, beside it: what the cap saves and what it refuses."""
    free = simulate(arrivals, table_service(table), replace(knobs, spend_cap=0.0), usd, duration, low)
    print(f"spend cap ${knobs.spend_cap:g}/day: bill ${capped.cost:.2f} instead of ${free.cost:.2f} "
          f"(saves ${free.cost - capped.cost:.2f}, {1 - capped.cost / free.cost if free.cost else 0:.0%}); "
          f"{capped.images} of {free.images} images delivered, {capped.capped} requests refused with 429")


def split_low(arrivals: list[float], share: float, rng: random.Random) -> tuple[list[float], list[float]]:
    """(normal, low): each request sent as low priority with probability `share`."""
    if not 0 <= share <= 1:
        raise ValueError(f"--low-share must be 0..1, got {share}")
    normal, low = [], []
    for at in arrivals:
        (low if rng.random() < share else normal).append(at)
    return normal, low


def print_low_savings(normal: list[float], low: list[float], table: dict[int, float], knobs: Knobs, usd: float,
                      duration: float, split: Result) -> None:
    """The same requests all sent as normal, beside the split: what the low lane saves and what it costs."""
    same = simulate(sorted(normal + low), table_service(table), knobs, usd, duration)
    print(f"low lane: {len(low)} of {len(normal) + len(low)} requests low; bill ${split.cost:.2f} instead of "
          f"${same.cost:.2f} all normal (saves ${same.cost - split.cost:.2f}, "
          f"{1 - split.cost / same.cost if same.cost else 0:.0%}); $/1k images {split.usd_per_1000_images:.3f} vs "
          f"{same.usd_per_1000_images:.3f}; cold starts {split.cold_starts} vs {same.cold_starts}; normal p95 "
          f"{split.latency(95):.1f}s vs {same.latency(95):.1f}s; low jobs {len(split.low_latencies)} done, "
          f"{split.expired} expired (wait p50 {split.low_wait(50):.0f}s, p95 {split.low_wait(95):.0f}s)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    trace = parser.add_argument_group("traffic (one of)")
    trace.add_argument("--trace-csv", type=Path, help="arrival times, first column: seconds or ISO-8601")
    trace.add_argument("--poisson", type=float, metavar="PER_HOUR", help="Poisson arrivals at this rate")
    trace.add_argument("--bursts", type=int, nargs=2, metavar=("N", "M"), default=None,
                       help="N bursts of M requests per hour (default 3 200)")
    trace.add_argument("--hours", type=float, default=1.0, help="length of a generated trace")
    trace.add_argument("--burst-seconds", type=float, default=60.0, help="a burst's arrivals spread over this long")
    trace.add_argument("--seed", type=int, default=0)
    gpu = parser.add_argument_group("GPU")
    gpu.add_argument("--gpu", default="A100-80GB", help="GPU type for the price (service/pricing.py)")
    gpu.add_argument("--gpu-json", type=Path, help="s/image from scripts/bench/gpu.py's JSON (sets --gpu)")
    gpu.add_argument("--mode", default="eager", help="row mode to take from --gpu-json")
    gpu.add_argument("--s-per-image", help="batch:seconds per image, e.g. 1:0.9,4:0.45")
    gpu.add_argument("--steps", type=int, default=20, help="denoising steps per image (the API default is 20)")
    gpu.add_argument("--cold-start", type=float, default=10.0,
                     help="seconds until a new container runs work (an assumption: not measured on Modal yet)")
    knobs = parser.add_argument_group("deploy knobs (defaults: service/config.py)")
    knobs.add_argument("--scaledown-window", default="60", help="seconds; a comma list prints one row each")
    knobs.add_argument("--min-containers", type=int, default=0)
    knobs.add_argument("--max-containers", type=int, default=4)
    knobs.add_argument("--buffer-containers", type=int, default=0)
    knobs.add_argument("--batch-size", type=int, default=1)
    knobs.add_argument("--batch-wait-ms", type=float, default=0.0)
    knobs.add_argument("--max-queue-depth", type=int, default=1000, help="the cap: refuse beyond this; 0 = off")
    knobs.add_argument("--spend-cap", type=float, default=0.0,
                       help="SPEND_CAP_USD_PER_DAY: refuse once the day's jobs cost this much; 0 = off. Prints "
                            "the same traffic without it too, and what it saves")
    knobs.add_argument("--low-share", type=float, default=0.0,
                       help="fraction of requests sent with priority low (e.g. bulk imports): they run only on an "
                            "idle running container. Prints the same requests all normal too")
    knobs.add_argument("--low-bulk", type=int, default=0, metavar="N",
                       help="N more requests with priority low, uniform over the trace (a bulk import)")
    knobs.add_argument("--max-queue-seconds", type=float, default=3600.0,
                       help="MAX_QUEUE_SECONDS: a low job not started within this ends expired")
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--sweep", action="store_true", help="scaledown window x max containers; draws a PNG")
    sweep.add_argument("--windows", default="2,10,30,60,120,300,600")
    sweep.add_argument("--max-containers-grid", default="1,2,4,8")
    sweep.add_argument("--latency-target", type=float, default=60.0, help="p95 seconds for the recommendation")
    sweep.add_argument("--png", type=Path, default=Path("bench-results/cost_sim_sweep.png"))
    args = parser.parse_args(argv)

    try:
        rng = random.Random(args.seed)
        if args.trace_csv:
            arrivals, label = read_trace_csv(args.trace_csv), f"trace {args.trace_csv}"
        elif args.poisson is not None:
            arrivals, label = poisson_trace(args.poisson, args.hours, rng), f"Poisson {args.poisson:g}/h"
        else:
            n, m = args.bursts or (3, 200)
            arrivals = burst_trace(n, m, args.hours, args.burst_seconds, rng)
            label = f"{n} bursts/h of {m} requests over {args.burst_seconds:g}s"
        duration = max(args.hours * 3600 if not args.trace_csv else 0.0, max(arrivals, default=0.0))
        normal, low = split_low(arrivals, args.low_share, rng)
        low = sorted(low + [rng.uniform(0, duration) for _ in range(args.low_bulk)])
        gpu_type = args.gpu
        if args.s_per_image:
            table, source = parse_table(args.s_per_image), "--s-per-image"
        elif args.gpu_json:
            detected, table = load_bench_json(args.gpu_json, args.mode, 512, args.steps)
            gpu_type, source = detected or gpu_type, f"{args.gpu_json} ({args.mode})"
        else:
            table, source = published_table(gpu_type, args.steps), "published diffusers benchmark"
        usd = price_per_second(gpu_type)

        def knobs_for(window: float, max_containers: int) -> Knobs:
            return Knobs(scaledown_window=window, min_containers=args.min_containers, max_containers=max_containers,
                         buffer_containers=args.buffer_containers, batch_size=args.batch_size,
                         batch_wait=args.batch_wait_ms / 1000, max_queue_depth=args.max_queue_depth,
                         cold_start=args.cold_start, spend_cap=args.spend_cap,
                         max_queue_seconds=args.max_queue_seconds)

        windows = floats(args.windows) if args.sweep else floats(args.scaledown_window)
        grid = ints(args.max_containers_grid) if args.sweep else [args.max_containers]
        points = [(m, w, simulate(normal, table_service(table), knobs_for(w, m), usd, duration, low))
                  for m in grid for w in windows]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    bulk = f" + {args.low_bulk} low spread over the trace" if args.low_bulk else ""
    print(f"{label}{bulk}: {len(normal) + len(low)} requests ({len(low)} low) over {duration / 3600:.2f} h; "
          f"{gpu_type} at ${usd}/s; "
          f"s/image {', '.join(f'b{b}={s:.3f}' for b, s in sorted(table.items()))} ({source}, {args.steps} steps); "
          f"cold start {args.cold_start:g}s; min {args.min_containers}, buffer {args.buffer_containers}, "
          f"batch {args.batch_size}/{args.batch_wait_ms:g}ms, queue cap {args.max_queue_depth or 'off'}")
    lane = [*LOW_HEADERS] if low else []
    print_table(["max containers", "scaledown s", *SUMMARY_HEADERS, *lane],
                [summary_row([m, f"{w:g}"], r, bool(low)) for m, w, r in points])
    if args.spend_cap and not args.sweep:
        print_savings(normal, table, knobs_for(windows[0], grid[0]), usd, duration, points[0][2], low)
    if low and not args.sweep:
        print_low_savings(normal, low, table, knobs_for(windows[0], grid[0]), usd, duration, points[0][2])
    print(f"Segmind: ~${SEGMIND_USD_PER_IMAGE * 1000:.2f} per 1000 images")
    if args.sweep:
        title = f"{label}, {gpu_type}, cold start {args.cold_start:g}s, batch {args.batch_size}"
        sweep_png(points, args.latency_target, args.png, title)
        print(f"wrote {args.png}")
        best = recommend(points, args.latency_target)
        if best:
            m, w, r = best
            print(f"recommended for p95 <= {args.latency_target:g}s: max_containers={m}, scaledown_window={w:g} "
                  f"(${r.usd_per_1000_images:.3f}/1000 images, p95 {r.latency(95):.1f}s)")
        else:
            print(f"no setting in the sweep meets p95 <= {args.latency_target:g}s without refusals; "
                  f"raise max containers, use a faster GPU or min_containers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
