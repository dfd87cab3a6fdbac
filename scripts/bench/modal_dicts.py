"""What the Modal backend's request paths and expiry sweep cost in modal.Dict calls, on tests/standins.py's
StandInDict (no Modal account needed).

    python -m scripts.bench.modal_dicts [--sizes 10,1000,10000] [--expired 10000] [--latency 0.002]

1. With N unfinished (QUEUED) jobs already in the Dicts, the Dict cost of: one v2 submit (the job layer's
   admit), one QUEUED status poll (the record read plus the status body with its queue position), one round of
   a long-poll on Modal (`_view`) and /health's queue depth (`records.unfinished()`). Cost is what StandInDict
   counts: `calls` (round trips), `streamed` (entries sent by an items()/keys() stream, one message each) and
   `counted` (entries the server counts for a len(), documented as expensive). The N jobs are written through
   the records store directly (it is quicker than admitting them); the measured submit goes through admit.
   Where the queue depth is cached per process (the reworked backend reads len() at most once a second), the
   first read after filling the queue and a read within that second are both shown.
2. The expiry sweep (`sweep_expired`): forgetting --expired finished jobs past their expiry (each COMPLETED,
   dispatched, claimed, with one result image in LocalStorage under a throwaway STATE_DIR), timed with
   --latency seconds per Dict call, its calls counted, and its time modelled at 10 ms per call for a
   sequential implementation (calls x 0.01 s).

Writes bench-results/modal_dicts.json.
"""

import argparse
import itertools
import logging
import secrets
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import service
from schemas import InpaintParams, JobStatus
from scripts.bench.common import print_table, write_json
from service.backend import build_modal
from service.config import Settings
from tests.images import box_mask, gradient_image, png_bytes
from service.jobs.housekeeping import sweep_expired
from service.jobs.records import JobRecord, StoredImage
from tests.standins import StandInDict, standin_dicts

OWNER = "0123456789abcdef01234567"  # what key_owner() makes of a key: a hash, never the key
MODELLED_LATENCY = 0.01  # seconds per Dict call for the modelled sequential sweep time


class FakeCall:
    def __init__(self, object_id: str):
        self.object_id = object_id

    def cancel(self) -> None:
        pass


class NeverRuns:
    """Plays `Inpainter().run.spawn(job_id)` without running anything: jobs stay QUEUED."""

    def __init__(self):
        self._ids = itertools.count()
        self.spawned = 0

    def spawn(self, job_id: str) -> FakeCall:
        self.spawned += 1
        return FakeCall(f"fc-bench-{next(self._ids)}")

    def from_id(self, call_id: str) -> FakeCall:
        return FakeCall(call_id)


class Api:
    """The job layer's entry points that the measured requests use."""

    def __init__(self, jobs):
        self.jobs = jobs

    def admit(self, image: bytes, mask: bytes) -> JobRecord:
        record, _ = self.jobs.admission.admit(OWNER, InpaintParams(prompt="a chair"), image, mask, "http://bench")
        return record

    def status_poll(self, job_id: str):
        """What GET /v2/requests/<id>/status does for a QUEUED job: the record read, then the status body."""
        return self.jobs.waiting.status(self.jobs.records.get(job_id))

    def view(self, job_id: str):
        return self.jobs.waiting._view(job_id)

    def depth(self) -> int:
        return self.jobs.records.unfinished()

    def sweep(self) -> int:
        return sweep_expired(self.jobs)


def make_backend(state_dir: Path) -> tuple[Api, dict[str, StandInDict]]:
    settings = Settings(api_keys=["bench-key"], state_dir=state_dir, rate_limit_per_second=0, max_queue_depth=0,
                        s3_bucket=None)
    dicts = standin_dicts()
    spawner = NeverRuns()
    backend = build_modal(settings, dicts, spawn=spawner.spawn, call_from_id=spawner.from_id, gpu="bench")
    return Api(backend.jobs), dicts


def snapshot(dicts: dict[str, StandInDict]) -> dict[str, tuple[int, int, int]]:
    return {name: (d.calls, d.streamed, d.counted) for name, d in dicts.items()}


def cost_since(dicts: dict[str, StandInDict], before: dict[str, tuple[int, int, int]]) -> dict:
    per_dict = {}
    for name, d in dicts.items():
        calls, streamed, counted = (now - then for now, then in zip((d.calls, d.streamed, d.counted), before[name]))
        if calls or streamed or counted:
            per_dict[name] = {"calls": calls, "streamed": streamed, "counted": counted}
    total = {field: sum(entry[field] for entry in per_dict.values()) for field in ("calls", "streamed", "counted")}
    return {**total, "cost": sum(total.values()), "per_dict": per_dict}


def measured(dicts: dict[str, StandInDict], action):
    before = snapshot(dicts)
    result = action()
    return result, cost_since(dicts, before)


def fill_queue(api: Api, count: int) -> None:
    """`count` QUEUED jobs written through the records store (no inputs, no dispatch: nothing here reads them)."""
    now = time.time()
    params = InpaintParams(prompt="a chair").model_dump(mode="json")
    for index in range(count):
        api.jobs.records.create(JobRecord(id=str(uuid.uuid4()), owner=OWNER, params=params,
                                          created_at=now - count + index, expires_at=now + 3600))


def request_paths(unfinished: int, image: bytes, mask: bytes) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-modal-dicts-") as state:
        api, dicts = make_backend(Path(state))
        fill_queue(api, unfinished)
        rows = []

        def row(operation: str, action, note: str = ""):
            result, cost = measured(dicts, action)
            rows.append({"unfinished": unfinished, "operation": operation, "note": note, **cost})
            return result

        first = row("/health depth, first read", api.depth)
        cached = row("/health depth, within 1 s", api.depth, "steady state: a second read right after the first")
        assert first == cached == unfinished, (first, cached, unfinished)
        record = row("v2 submit (admit)", lambda: api.admit(image, mask))
        body = row("status poll, QUEUED", lambda: api.status_poll(record.id))
        _, view = row("long-poll round (_view)", lambda: api.view(record.id))
        assert body.status == JobStatus.QUEUED and body.queue_position == unfinished, body
        assert view[2] == unfinished, view
        for entry in rows:
            entry["queue_position"] = body.queue_position
        return rows


def finished_jobs(api: Api, count: int, image: bytes) -> None:
    """`count` jobs as a real worker leaves them: created, dispatched, claimed, started, one result image stored,
    COMPLETED, and already past their expiry."""
    now = time.time()
    params = InpaintParams(prompt="a chair").model_dump(mode="json")
    records = api.jobs.records
    for index in range(count):
        job_id = str(uuid.uuid4())
        created = now - 7200 - count + index
        records.create(JobRecord(id=job_id, owner=OWNER, params=params, created_at=created,
                                 expires_at=created + 3600))
        api.jobs.dispatcher.submit(job_id)  # call:<id>, as a real dispatch leaves it
        records.claim(f"attempt1:{job_id}")  # the worker's once-only attempt claim
        records.update(job_id, status=JobStatus.PROCESSING, started_at=created + 1, attempts=1)
        key = f"{job_id}/{secrets.token_urlsafe(18)}/0.png"
        api.jobs.storage.put(key, image, "image/png")
        done = records.finish(job_id, status=JobStatus.COMPLETED, finished_at=created + 5, expires_at=now - 60,
                              images=[StoredImage(key=key, content_type="image/png", file_size=len(image), seed=1)])
        assert done is not None


def expiry_sweep(count: int, latency: float, image: bytes) -> dict:
    result = timed_sweep(count, latency, image)
    # The same sweep with no Dict latency: what is left is this machine's own work (local files, CPU).
    result["seconds_at_0_latency"] = timed_sweep(count, 0.0, image)["seconds"] if latency else result["seconds"]
    return result


def timed_sweep(count: int, latency: float, image: bytes) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-modal-dicts-") as state:
        api, dicts = make_backend(Path(state))
        finished_jobs(api, count, image)
        results_dir = Path(state) / "results"
        files_before = sum(1 for p in results_dir.rglob("*") if p.is_file())
        entries_before = {name: len(d._data) for name, d in dicts.items()}
        for d in dicts.values():
            d.latency = latency
        started = time.perf_counter()
        removed, cost = measured(dicts, api.sweep)
        seconds = time.perf_counter() - started
        for d in dicts.values():
            d.latency = 0.0
        files_after = sum(1 for p in results_dir.rglob("*") if p.is_file())
        entries_after = {name: len(d._data) for name, d in dicts.items()}
        return {"expired": count, "removed": removed, "latency_s": latency, "seconds": round(seconds, 2),
                "modelled_sequential_s_at_10ms": round(cost["calls"] * MODELLED_LATENCY, 1),
                "files_before": files_before, "files_after": files_after,
                "dict_entries_before": entries_before, "dict_entries_after": entries_after, **cost}


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,1000,10000", help="unfinished jobs in the Dicts, comma-separated")
    parser.add_argument("--expired", type=int, default=10_000, help="expired finished jobs for the sweep")
    parser.add_argument("--latency", type=float, default=0.002, help="seconds per Dict call during the sweep")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("service").setLevel(logging.WARNING)
    image, mask = png_bytes(gradient_image(64, 64)), png_bytes(box_mask(64, 64, (16, 16, 48, 48)))
    rev = git_rev()
    print(f"code: git {rev}, service from {Path(service.__file__).parent}\n")

    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    paths = [entry for size in sizes for entry in request_paths(size, image, mask)]
    print("Dict cost per operation with N unfinished (QUEUED) jobs in the Dicts "
          "(calls = round trips, streamed = entries sent by items()/keys(), counted = entries len() counts)")
    print_table(["N", "operation", "calls", "streamed", "counted", "cost", "Dicts called"],
                [[e["unfinished"], e["operation"], e["calls"], e["streamed"], e["counted"], e["cost"],
                  " ".join(f"{name}:{v['calls']}" for name, v in e["per_dict"].items()) or "-"] for e in paths])
    print("/health depth: the queue depth is cached per process for 1 s; 'first read' is the len() after the "
          "queue was filled, 'within 1 s' the steady state between reads.")
    print("The measured submit is the (N+1)th job; the status poll and _view read that job (queue position N).")

    sweep = expiry_sweep(args.expired, args.latency, image)
    print(f"\nExpiry sweep: {sweep['expired']} expired COMPLETED jobs, one result image each, "
          f"{args.latency * 1000:g} ms per Dict call")
    print_table(["expired", "removed", "calls", "streamed", "counted", f"measured s @ {args.latency * 1000:g} ms",
                 "measured s @ 0 ms", "modelled s @ 10 ms, sequential", "files left", "Dict entries left"],
                [[sweep["expired"], sweep["removed"], sweep["calls"], sweep["streamed"], sweep["counted"],
                  sweep["seconds"], sweep["seconds_at_0_latency"], sweep["modelled_sequential_s_at_10ms"],
                  sweep["files_after"],
                  " ".join(f"{k}:{v}" for k, v in sweep["dict_entries_after"].items() if v) or "-"]])
    print("Dict calls per job: " + " ".join(f"{name}:{v['calls'] / max(sweep['removed'], 1):g}"
                                            for name, v in sweep["per_dict"].items()))
    print("'@ 0 ms' is the same sweep with no Dict latency: this machine's own work (local files, CPU), "
          "which S3 and Modal would replace with their own.")
    print("The measured time is the sweep's own, with its concurrent deletes; the modelled time is what the same "
          "calls would take one after another.")

    write_json("modal_dicts.json", {"git": rev, "args": vars(args), "request_paths": paths, "expiry_sweep": sweep})


if __name__ == "__main__":
    main()
