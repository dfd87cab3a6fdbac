"""A job's once-only transitions and what follows its end, for the web tier, the workers and the housekeeping
alike: start (one attempt at a time), progress, cancel, complete or fail exactly once, then inputs deleted,
credits refunded unless the caller's content was the cause, usage counted, the webhook sent."""

import logging
import time
from collections import OrderedDict
from typing import Any, Callable

from schemas import CancelResponse, JobStatus
from service.config import Settings
from service.jobs import pricing
from service.jobs.failures import Failure, refunded
from service.jobs.handover import DecodedInputs
from service.jobs.limits import add_usage, refund_credits, refund_daily
from service.jobs.ports import Counters, Dispatcher, InputBlobs, JobRecords
from service.jobs.records import JobOutcome, JobRecord
from service.jobs.tallies import count_ended
from service.logs import log_event

log = logging.getLogger(__name__)

CANCEL_CHECK_INTERVAL = 0.5  # seconds between cancel-flag reads from the store while a job runs
MAX_LOCAL_CANCELS = 10_000


class JobLifecycle:
    def __init__(self, settings: Settings, records: JobRecords, inputs: InputBlobs, counters: Counters,
                 dispatcher: Dispatcher, on_terminal: Callable[[JobRecord], None] | None = None):
        self.settings = settings
        self.records, self.inputs, self.counters, self.dispatcher = records, inputs, counters, dispatcher
        self.on_terminal = on_terminal  # e.g. webhook delivery; called once per job
        # Called with every ended job's outcome (record, and a completed job's image bytes) once its usage and
        # refund are counted, before the rest of the end-of-job work: the embedded worker hands it to a waiting
        # v1 caller this way, from whichever thread ended the job.
        self.on_ended: Callable[[JobOutcome], None] | None = None
        # Cancels received by this process, checked for free at every step. Bounded: on Modal the web tier
        # never ends running jobs itself, so entries of cancelled running jobs are not removed by _ended.
        self._cancelled_here: OrderedDict[str, None] = OrderedDict()
        self.decoded = DecodedInputs()  # images decoded at submit, for a worker in this process
        self.fault: str | None = None  # the store's last write failure, until a write succeeds again (/health)
        self._prices = settings.price_table()  # list prices updated from GPU_PRICE_PER_SECOND, read once

    def cancel(self, record: JobRecord) -> CancelResponse:
        if record.status.terminal:
            return CancelResponse(request_id=record.id, status=record.status.value,
                                  message="the job had already finished; nothing to cancel")
        self.note_cancel(record.id)
        self.records.request_cancel(record.id)
        if record.status == JobStatus.QUEUED and self.fail(record.id, Failure.CANCELLED, "cancelled"):
            self.dispatcher.cancel(record.id)
            return CancelResponse(request_id=record.id, status="CANCELLED",
                                  message="the job had not started; it will not run")
        self.dispatcher.cancel_running(record.id)
        return CancelResponse(request_id=record.id, status="CANCELLING",
                              message="the job is running; it stops at the next denoising step and then "
                                      "reads FAILED 'cancelled'")

    def note_cancel(self, job_id: str) -> None:
        """Remember a cancel in this process: its running job stops at the next step, not at the next read of
        the store's flag (the worker process hears of cancels this way)."""
        self._cancelled_here[job_id] = None
        while len(self._cancelled_here) > MAX_LOCAL_CANCELS:
            self._cancelled_here.popitem(last=False)

    def start(self, job_id: str) -> JobRecord | None:
        """Move a job to PROCESSING for one attempt; None when there is nothing (more) to run here."""
        record = self.records.get(job_id)
        if record is None or record.status.terminal:
            return None
        if job_id in self._cancelled_here or self.records.cancel_requested(job_id):
            self.fail(job_id, Failure.CANCELLED, "cancelled")
            return None
        if record.past_deadline(time.time()):
            self.end_past_deadline(record)
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

    def end_past_deadline(self, record: JobRecord, **usage: Any) -> JobRecord | None:
        """FAILED for its Cancel-After: expired when it never started, else cancelled (once, as fail())."""
        failure, message = record.deadline_failure()
        return self.fail(record.id, failure, message, **usage)

    def cancelled(self, job_id: str) -> bool:
        """Has the job been cancelled (or ended by another party)? A fresh look, for just before its end."""
        return job_id in self._cancelled_here or self.records.cancel_requested(job_id)

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

    def progress(self, job_id: str, step: int, total: int) -> None:
        self.records.update(job_id, progress_step=step, progress_total=total, heartbeat_at=time.time())

    def usage_fields(self, gpu_seconds: float, batch_size: int, cold_start: float | None) -> dict[str, Any]:
        """What a job that ran records about its use of the GPU, priced at GPU_TYPE's rate."""
        gpu = self.settings.gpu_type
        return {"gpu_seconds": gpu_seconds, "batch_size": batch_size, "cold_start_time": cold_start,
                "cost_usd": pricing.job_cost(gpu_seconds, gpu, self._prices) if gpu else None}

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

    def _end_fields(self) -> dict[str, float]:
        now = time.time()  # results live for the TTL from the job's end, however long it queued or ran
        return {"finished_at": now, "expires_at": now + self.settings.result_ttl_seconds}

    def _ended(self, outcome: JobOutcome) -> None:
        """What follows a job's end, run by the one caller that ended it. Each step is attempted whatever the
        others do: a failing store must not cost the caller their webhook. Usage and refund come before the
        outcome is handed on, so a caller who has the answer also sees them in /usage and its credits."""
        record = outcome.record
        self._cancelled_here.pop(record.id, None)
        self.decoded.take(record.id)
        # The refund first: a poller sees the job's end as soon as the record is final, and its next submit
        # must find the credits back.
        steps = []
        if record.status == JobStatus.FAILED and refunded(record.failure):
            steps.append(("giving back the credits", lambda: refund_credits(self.counters, record)))
        if record.status == JobStatus.FAILED and record.gpu_seconds is None and record.started_at is None:
            steps.append(("giving back the day's images (it never ran)",
                          lambda: refund_daily(self.counters, record.samples, self.settings.daily_image_cap,
                                               now=record.created_at)))
        if record.gpu_seconds is not None:
            steps.append(("adding to the key's daily usage", lambda: add_usage(self.counters, record)))
        steps.append(("counting it into the deployment's totals", lambda: count_ended(self.counters, record)))
        if self.on_ended is not None:
            steps.append(("handing the outcome to its waiter", lambda: self.on_ended(outcome)))
        steps.append(("deleting the inputs", lambda: self.inputs.delete([record.inputs_at])))
        if self.on_terminal is not None:
            steps.append(("the end-of-job hook (webhook)", lambda: self.on_terminal(record)))
        for what, step in steps:
            try:
                step()
            except Exception:
                log.exception("job %s: %s failed", record.id, what)
