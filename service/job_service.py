"""The rules of a job's life, in one place, for the web tier and the workers alike.

Admission (rate, daily cap, credits, queue cap), the status transitions, cancel,
and what happens exactly once when a job ends (inputs deleted, credits refunded
unless the caller's content was the cause, the webhook sent). Backends only store
(service/ports.py); routes only translate HTTP (service/routes/).
"""

import asyncio
import io
import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from schemas import CancelResponse, InpaintParams, JobStatus, Progress, StatusBody
from service.changes import Changes
from service.config import Settings
from service.errors import ApiError
from service.failures import Failure, refunded
from service.jobs import JobRecord
from service import pricing
from service.limits import (add_usage, check_rate, daily_usage, refund_credits, refund_daily, spend_credits,
                            spend_daily, too_many)
from service.logs import log_event
from service.ports import Counters, InputBlobs, JobRecords, StoreUnavailable
from service.storage import ResultStorage

log = logging.getLogger(__name__)

CANCEL_CHECK_INTERVAL = 0.5  # seconds between cancel-flag reads from the store while a job runs
STORE_POLL_INTERVAL = 0.1  # long-poll cadence where the store cannot notify (Modal)
MAX_ATTEMPTS = 2  # a job whose worker went silent is run once more, then FAILED
MAX_LOCAL_CANCELS = 10_000
# Decoded inputs waiting in memory for this process's worker: at most this many jobs and pixels (image + mask).
# A job that does not fit has its stored bytes decoded by the worker instead.
MAX_HANDED_OVER_JOBS = 16
MAX_HANDED_OVER_PIXELS = 2 * 4096 * 4096  # one job at the default input pixel cap, or many photo-sized ones


@dataclass
class JobOutcome:
    record: JobRecord
    files: list[tuple[bytes, str]] = field(default_factory=list)  # (bytes, content type) per image


class WorkerFailed(Exception):
    """The worker running a job is gone (its call failed, expired or was cut off)."""


class Dispatcher(Protocol):
    state: str  # "loading" | "ready" | "error"
    error: str | None
    device: str | None

    def submit(self, job_id: str) -> None: ...
    def redispatch(self, job_id: str) -> None: ...
    def cancel(self, job_id: str) -> None: ...
    def last_dispatch(self, job_id: str) -> float | None: ...
    def call_state(self, job_id: str) -> str | None:
        """None while the call is pending or running; else why it is gone (housekeeping)."""
    async def wait(self, job_id: str, timeout: float) -> JobOutcome | None:
        """The outcome when the job ends within `timeout`, else None. Raises WorkerFailed."""


class DecodedInputs:
    """The images decoded at submit, kept for the worker in this process so that no input is decoded twice.
    Bounded by jobs and by pixels; a job that does not fit is left out (its worker decodes the stored bytes),
    so the jobs kept are the oldest, the next to run. Entries go when the worker takes them or the job ends."""

    def __init__(self, max_jobs: int = MAX_HANDED_OVER_JOBS, max_pixels: int = MAX_HANDED_OVER_PIXELS):
        self.max_jobs, self.max_pixels = max_jobs, max_pixels
        self._entries: dict[str, tuple[Any, Any]] = {}
        self.pixels = 0
        self._lock = threading.Lock()

    @staticmethod
    def _pixels(images: tuple[Any, Any]) -> int:
        return sum(image.width * image.height for image in images)

    def put(self, job_id: str, image: Any, mask: Any) -> bool:
        size = self._pixels((image, mask))
        with self._lock:
            if len(self._entries) >= self.max_jobs or self.pixels + size > self.max_pixels:
                return False
            self._entries[job_id] = (image, mask)
            self.pixels += size
            return True

    def take(self, job_id: str) -> tuple[Any, Any] | None:
        with self._lock:
            images = self._entries.pop(job_id, None)
            if images is not None:
                self.pixels -= self._pixels(images)
            return images

    def __len__(self) -> int:
        return len(self._entries)


async def run_blocking(function: Callable[..., Any], *args: Any) -> Any:
    """Store calls block (SQLite, or a network round trip on Modal): run them off the event loop."""
    return await asyncio.to_thread(function, *args)


class JobService:
    def __init__(self, settings: Settings, records: JobRecords, inputs: InputBlobs, counters: Counters,
                 storage: ResultStorage, dispatcher: Dispatcher, changes: Changes | None = None,
                 on_terminal: Callable[[JobRecord], None] | None = None, inline_reads: bool = False,
                 hand_over_inputs: bool = False):
        self.settings = settings
        self.records, self.inputs, self.counters = records, inputs, counters
        self.storage, self.dispatcher = storage, dispatcher
        self.changes = changes  # in-process notifications, when the store can give them (embedded)
        self.on_terminal = on_terminal  # e.g. webhook delivery; called once per job
        # Cancels received by this process, checked for free at every step. Bounded: on Modal the web tier
        # never ends running jobs itself, so entries of cancelled running jobs are not removed by _ended.
        self._cancelled_here: OrderedDict[str, None] = OrderedDict()
        self.fault: str | None = None  # the store's last write failure, until a write succeeds again (/health)
        # Reads that cost microseconds and never wait on a writer (SQLite in WAL mode, a connection per thread)
        # run on the event loop; a thread hop would cost more than the read. Writes, and every call to a
        # networked store (Modal), go through run_blocking.
        self.inline_reads = inline_reads
        self._prices = settings.price_table()  # list prices updated from GPU_PRICE_PER_SECOND, read once
        # Where this process's dispatcher runs the jobs (embedded), the images decoded at submit go to the worker.
        self.hand_over_inputs = hand_over_inputs
        self.decoded = DecodedInputs()
        # Called with every ended job's outcome (record, and a completed job's image bytes) once its usage and
        # refund are counted, before the rest of the end-of-job work: the embedded worker hands it to a waiting
        # v1 caller this way, from whichever thread ended the job.
        self.on_ended: Callable[[JobOutcome], None] | None = None

    async def read(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run a read-only store call from a handler: inline where reads are cheap, else off the loop."""
        return function(*args) if self.inline_reads else await run_blocking(function, *args)
    # ---- admission (web tier) -------------------------------------------------------------

    def check_rate(self, owner: str) -> None:
        check_rate(self.counters, owner, self.settings.rate_limit_per_second, self.settings.rate_limit_burst)

    def check_room(self) -> None:
        """A cheap early refusal before inputs are fetched; `admit` decides atomically."""
        if self.settings.max_queue_depth > 0 and self.records.unfinished() >= self.settings.max_queue_depth:
            raise self._queue_full()

    def _queue_full(self) -> ApiError:
        return too_many(f"the queue is full ({self.settings.max_queue_depth} jobs waiting or running); "
                        f"retry shortly", 5, time.time())

    def admit(self, owner: str, params: InpaintParams, image: bytes, mask: bytes, base_url: str,
              decoded: tuple[Any, Any] | None = None, received: float | None = None,
              **log_fields: Any) -> tuple[JobRecord, int | None]:
        """Charge, store and dispatch a validated request. Returns the record and the credits left (or None).
        `decoded`: the image and mask as decoded by validation (handed to this process's worker);
        `received`: when the request arrived (time.monotonic()), for the job's intake time.
        `log_fields` go into the job's QUEUED log line."""
        settings = self.settings
        spend_daily(self.counters, params.samples, settings.daily_image_cap)
        try:
            left = spend_credits(self.counters, owner, params.samples, settings.budget_for(owner))
        except ApiError:
            refund_daily(self.counters, params.samples, settings.daily_image_cap)
            raise
        now = time.time()
        record = JobRecord(id=str(uuid.uuid4()), owner=owner, params=params.model_dump(mode="json"),
                           created_at=now, expires_at=now + settings.result_ttl_seconds, base_url=base_url,
                           webhook_url=params.webhook_url)
        try:
            self.inputs.put(record.id, image, mask)
            if received is not None:
                record.intake_time = time.monotonic() - received
            created = self.records.create(record, settings.max_queue_depth)
        except Exception as exc:  # StoreUnavailable, or a networked store's own errors (Modal)
            self.fault = str(exc)
            try:
                self.inputs.delete(record.id)
            except Exception:
                log.warning("could not delete the inputs of refused request %s", record.id)
            self._give_back(record)
            if isinstance(exc, StoreUnavailable):
                raise
            raise StoreUnavailable(f"storing the job failed ({type(exc).__name__}: {exc})") from exc
        self.fault = None
        if not created:
            self.inputs.delete(record.id)
            self._give_back(record)
            raise self._queue_full()
        # Logged before the dispatch, so it always precedes the worker's PROCESSING line.
        log_event("job", request_id=record.id, status="QUEUED", owner=owner, samples=params.samples, **log_fields)
        if decoded is not None and self.hand_over_inputs:
            self.decoded.put(record.id, *decoded)
        try:
            self.dispatcher.submit(record.id)
        except Exception as exc:
            log.exception("dispatching job %s failed", record.id)
            self.fail(record.id, Failure.UNAVAILABLE, f"the job could not be handed to a worker ({exc})")
            refund_daily(self.counters, params.samples, settings.daily_image_cap)  # fail() gave the credits back
            raise ApiError(503, f"no worker could take the job right now ({type(exc).__name__}); "
                                f"nothing was charged, retry shortly", headers={"Retry-After": "5"}) from None
        return record, left

    def _give_back(self, record: JobRecord) -> None:
        """Undo the charges of a request that was then refused (best effort when the store is failing)."""
        try:
            refund_credits(self.counters, record)
            refund_daily(self.counters, record.samples, self.settings.daily_image_cap)
        except Exception:
            log.warning("could not give back the charges of refused request %s", record.id)

    # ---- reading ---------------------------------------------------------------------------

    def owned(self, owner: str, job_id: str) -> JobRecord:
        record = self.records.get(job_id)
        if record is None or record.owner != owner:  # another key's job reads exactly like an unknown one
            raise ApiError(404, f"request {job_id} not found (unknown, expired, or not yours)")
        return record

    def status(self, record: JobRecord) -> StatusBody:
        body = StatusBody(request_id=record.id, status=record.status, metrics=record.metrics(), error=record.error)
        if record.status == JobStatus.QUEUED:
            body.queue_position = self.records.queue_position(record.id)
        if record.status == JobStatus.PROCESSING and record.progress_total:
            body.progress = Progress(step=record.progress_step or 0, total=record.progress_total)
        return body

    def _view(self, job_id: str) -> tuple[JobRecord | None, tuple]:
        """The record and what a status poll shows of it: status, progress step, queue position."""
        record = self.records.get(job_id)
        if record is None:
            return None, ()
        position = self.records.queue_position(job_id) if record.status == JobStatus.QUEUED else None
        return record, (record.status, record.progress_step, position)

    async def wait_for_change(self, record: JobRecord, wait: float) -> JobRecord:
        """Return as soon as what a status poll shows (status, progress, queue position) differs from now,
        or after `wait` seconds."""
        deadline = time.monotonic() + wait
        if self.changes is None:  # no in-process notifications (Modal): poll the store
            _, seen = await self.read(self._view, record.id)
            while (left := deadline - time.monotonic()) > 0:
                await asyncio.sleep(min(STORE_POLL_INTERVAL, left))
                current, view = await self.read(self._view, record.id)
                if current is None or view != seen:
                    return current or record
            return record
        with self.changes.subscribe(record.id) as subscription:
            current, seen = await self.read(self._view, record.id)
            view = seen
            while current is not None and view == seen and (left := deadline - time.monotonic()) > 0:
                await subscription.wait(left)
                current, view = await self.read(self._view, record.id)
        return current or record

    async def wait_until_done(self, job_id: str, timeout: float) -> JobOutcome | None:
        """For v1: the outcome once the job ends, None if it is still running after `timeout` seconds."""
        try:
            outcome = await self.dispatcher.wait(job_id, timeout)
        except WorkerFailed as exc:
            failed = await run_blocking(self.fail, job_id, Failure.UNAVAILABLE, str(exc))
            outcome = JobOutcome(failed) if failed else None
        if outcome is None or not outcome.record.status.terminal:
            record = await self.read(self.records.get, job_id)
            return JobOutcome(record) if record is not None and record.status.terminal else None
        return outcome

    def usage(self, owner: str, days: int) -> list[dict[str, Any]]:
        """The key's usage per UTC day, newest first, for the last `days` days (today included)."""
        return daily_usage(self.counters, owner, days)

    # ---- cancel (web tier) -----------------------------------------------------------------

    def cancel(self, record: JobRecord) -> CancelResponse:
        if record.status.terminal:
            return CancelResponse(request_id=record.id, status=record.status.value,
                                  message="the job had already finished; nothing to cancel")
        self._cancelled_here[record.id] = None
        while len(self._cancelled_here) > MAX_LOCAL_CANCELS:
            self._cancelled_here.popitem(last=False)
        self.records.request_cancel(record.id)
        if record.status == JobStatus.QUEUED and self.fail(record.id, Failure.CANCELLED, "cancelled"):
            self.dispatcher.cancel(record.id)
            return CancelResponse(request_id=record.id, status="CANCELLED",
                                  message="the job had not started; it will not run")
        return CancelResponse(request_id=record.id, status="CANCELLING",
                              message="the job is running; it stops at the next denoising step and then "
                                      "reads FAILED 'cancelled'")

    # ---- the worker's side -----------------------------------------------------------------

    def start(self, job_id: str) -> JobRecord | None:
        """Move a job to PROCESSING for one attempt; None when there is nothing (more) to run here."""
        record = self.records.get(job_id)
        if record is None or record.status.terminal:
            return None
        if job_id in self._cancelled_here or self.records.cancel_requested(job_id):
            self.fail(job_id, Failure.CANCELLED, "cancelled")
            return None
        attempt = record.attempts + 1
        if not self.records.claim(f"attempt{attempt}:{job_id}"):
            log.warning("job %s: attempt %d is already running elsewhere; not running it twice", job_id, attempt)
            return None
        now = time.time()
        started = self.records.update(job_id, status=JobStatus.PROCESSING, started_at=record.started_at or now,
                                      attempts=attempt, heartbeat_at=now)
        if started is not None:
            log_event("job", request_id=job_id, status="PROCESSING", attempt=attempt)
        return started

    def cancel_check(self, job_id: str) -> Callable[[], bool]:
        """A cheap `should_stop()` for every denoising step: this process's cancels at once, the store's
        flag (another container's cancel) at most every CANCEL_CHECK_INTERVAL seconds."""
        last_read = time.monotonic()

        def should_stop() -> bool:
            nonlocal last_read
            if job_id in self._cancelled_here:
                return True
            if time.monotonic() - last_read < CANCEL_CHECK_INTERVAL:
                return False
            last_read = time.monotonic()
            return self.records.cancel_requested(job_id)

        return should_stop

    def input_images(self, job_id: str) -> tuple[Any, Any] | None:
        """The job's image and mask as PIL images, or None when its inputs are gone: the images decoded at
        submit where they were handed over in this process, else the stored bytes (lazily decoded)."""
        from PIL import Image

        if (handed := self.decoded.take(job_id)) is not None:
            return handed
        inputs = self.inputs.get(job_id)
        if inputs is None:
            return None
        return Image.open(io.BytesIO(inputs[0])), Image.open(io.BytesIO(inputs[1]))

    def progress(self, job_id: str, step: int, total: int) -> None:
        self.records.update(job_id, progress_step=step, progress_total=total, heartbeat_at=time.time())

    def usage_fields(self, gpu_seconds: float, batch_size: int, cold_start: float | None) -> dict[str, Any]:
        """What a job that ran records about its use of the GPU, priced at GPU_TYPE's rate."""
        gpu = self.settings.gpu_type
        return {"gpu_seconds": gpu_seconds, "batch_size": batch_size, "cold_start_time": cold_start,
                "cost_usd": pricing.job_cost(gpu_seconds, gpu, self._prices) if gpu else None}

    def _end_fields(self) -> dict[str, float]:
        now = time.time()  # results live for the TTL from the job's end, however long it queued or ran
        return {"finished_at": now, "expires_at": now + self.settings.result_ttl_seconds}

    def complete(self, job_id: str, files: list[tuple[bytes, str]] | None = None, **results: Any) -> JobRecord | None:
        """COMPLETED with `results`, exactly once (None when the job had already ended). `files`: the stored
        images' bytes and content types, for `on_ended`."""
        done = self.records.finish(job_id, status=JobStatus.COMPLETED, **self._end_fields(), **results)
        self.fault = None
        if done is not None:
            log_event("job", request_id=job_id, status="COMPLETED", inference_time=done.inference_time,
                      images=len(done.images))
            self._ended(JobOutcome(done, files or []))
        return done

    def fail(self, job_id: str, failure: Failure, message: str, **usage: Any) -> JobRecord | None:
        """FAILED with `message`, exactly once: None when the job had already ended. `usage`: usage_fields()
        of a job that used the GPU before it failed."""
        failed = self.records.finish(job_id, status=JobStatus.FAILED, failure=failure, error=message,
                                     **self._end_fields(), **usage)
        self.fault = None
        if failed is not None:
            log_event("job", request_id=job_id, status="FAILED", failure=failure.value, error=message)
            self._ended(JobOutcome(failed))
        return failed

    def _ended(self, outcome: JobOutcome) -> None:
        """What follows a job's end, run by the one caller that ended it. Each step is attempted whatever the
        others do: a failing store must not cost the caller their webhook. Usage and refund come before the
        outcome is handed on, so a caller who has the answer also sees them in /usage and its credits."""
        record = outcome.record
        self._cancelled_here.pop(record.id, None)
        self.decoded.take(record.id)
        steps = []
        if record.gpu_seconds is not None:
            steps.append(("adding to the key's daily usage", lambda: add_usage(self.counters, record)))
        if record.status == JobStatus.FAILED and refunded(record.failure):
            steps.append(("giving back the credits", lambda: refund_credits(self.counters, record)))
        if self.on_ended is not None:
            steps.append(("handing the outcome to its waiter", lambda: self.on_ended(outcome)))
        steps.append(("deleting the inputs", lambda: self.inputs.delete(record.id)))
        if self.on_terminal is not None:
            steps.append(("the end-of-job hook (webhook)", lambda: self.on_terminal(record)))
        for what, step in steps:
            try:
                step()
            except Exception:
                log.exception("job %s: %s failed", record.id, what)
