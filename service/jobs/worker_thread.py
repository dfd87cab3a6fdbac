"""The embedded server's worker: one thread over a persistent queue (the job store) that loads the model
once and runs jobs with `run_jobs`; v1 callers get their job's outcome handed over in memory."""

import logging
import threading
from collections import deque
import time
from typing import Any, Callable

from schemas import JobStatus
from service.config import GPU_BATCH_MAX_IMAGES
from service.jobs.errors import StoreUnavailable
from service.jobs.failures import Failure
from service.jobs.records import JobOutcome
from service.jobs.service import JobService
from service.jobs.worker import run_jobs

log = logging.getLogger(__name__)

STORE_RETRY_SECONDS = 1.0  # when the store cannot be written (disk full), wait this long before retrying a job


class OutcomeHandover:
    """Outcomes of jobs a v1 caller waits for, with the image bytes, handed from whichever thread ended the job
    to the waiting handler, so v1 need not read the files back."""

    def __init__(self, jobs: JobService):
        self.jobs = jobs
        self.running: set[str] = set()  # jobs the worker holds now: their outcome is handed over
        self._waiting: set[str] = set()
        self._outcomes: dict[str, JobOutcome] = {}
        self._lock = threading.Lock()

    def give(self, outcome: JobOutcome) -> None:
        """Give the job's v1 waiter (if any) its outcome, and wake it."""
        job_id = outcome.record.id
        with self._lock:
            if job_id in self._waiting:
                self._outcomes[job_id] = outcome
        self.jobs.changes.notify(job_id)

    async def wait(self, job_id: str, timeout: float) -> JobOutcome | None:
        """Wait on the store's change notifications (no thread held while waiting)."""
        deadline = time.monotonic() + timeout
        self._waiting.add(job_id)
        try:
            with self.jobs.changes.subscribe(job_id) as subscription:
                while True:
                    if (outcome := self._outcomes.pop(job_id, None)) is not None:
                        return outcome
                    # While the worker holds the job its outcome is handed over here, so the record is not read
                    # at every progress write: that read would contend with the worker for the interpreter.
                    if job_id not in self.running:
                        record = await self.jobs.waiting.read(self.jobs.records.get, job_id)
                        # Ended, and no worker took it up during the read (else its outcome, with the bytes, is
                        # handed over a moment later).
                        if record is None or (record.status.terminal and job_id not in self.running):
                            return self._outcomes.pop(job_id, None) or (JobOutcome(record) if record else None)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    await subscription.wait(left)
        finally:
            with self._lock:
                self._waiting.discard(job_id)
                self._outcomes.pop(job_id, None)


class RoundQueue:
    """The jobs waiting for this process's worker, taken a round at a time: the first live job and, with batching
    on, those queued behind it in the same lane (at most `max_images` in all, waiting at most `wait` seconds for
    company). Two lanes: a low-priority job is taken only when no normal one waits. Jobs that ended while queued
    (cancelled) are dropped as they come off, taking no seat. Whether a round's jobs can share a call is
    run_jobs' business. `dispatched` holds when each waiting job was queued."""

    def __init__(self, ended: Callable[[str], bool], wait: float, low: Callable[[str], bool] = lambda job_id: False):
        self.ended, self.wait, self.low = ended, wait, low
        self.dispatched: dict[str, float] = {}
        self._lanes: tuple[deque[str], deque[str]] = (deque(), deque())  # normal, low
        self._closed = False
        self._changed = threading.Condition()

    def put(self, job_id: str) -> None:
        lane = self._lanes[1] if self.low(job_id) else self._lanes[0]
        with self._changed:
            self.dispatched[job_id] = time.time()
            lane.append(job_id)
            self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def next_round(self, max_images: int) -> list[str] | None:
        """The next round's job ids, blocking until there is one; None once closed."""
        while (taken := self._take(None)) is not None:
            first, lane = taken
            if not self._dropped(first):
                return [first, *self._company(lane, max_images)]
        return None

    def _take(self, timeout: float | None, lane: deque | None = None) -> tuple[str, deque] | None:
        """The next job (of `lane`, else normal before low) with its lane; None when timed out, or closed with
        nothing left (jobs queued before close() are still taken, as before)."""
        lanes = (lane,) if lane is not None else self._lanes
        with self._changed:
            if not self._changed.wait_for(lambda: self._closed or any(lanes), timeout) or not any(lanes):
                return None
            chosen = next(queued for queued in lanes if queued)
            return chosen.popleft(), chosen

    def _company(self, lane: deque, max_images: int) -> list[str]:
        company: list[str] = []
        deadline = time.monotonic() + self.wait
        while len(company) + 1 < max_images:
            taken = self._take(max(0.0, deadline - time.monotonic()), lane)
            if taken is None:
                break
            if not self._dropped(taken[0]):
                company.append(taken[0])
        return company

    def _dropped(self, job_id: str) -> bool:
        if self.ended(job_id):
            self.dispatched.pop(job_id, None)
            return True
        return False


class EmbeddedDispatcher:
    """One job (or one batch) at a time per model instance."""

    def __init__(self, inpainter_factory: Callable[[], Any], shutdown_grace: float = 10.0,
                 job_timeout: float = 600.0, batch_max_images: int | None = 1, batch_wait_ms: float = 10.0):
        self.inpainter_factory = inpainter_factory
        self.shutdown_grace = shutdown_grace
        self.job_timeout = job_timeout
        self.batch_max_images = batch_max_images  # None: decided by the device once the model is loaded
        self.queue = RoundQueue(lambda job_id: self.jobs.lifecycle.cancelled(job_id), batch_wait_ms / 1000,
                                low=self._low_priority)
        self.jobs: JobService | None = None  # set by bind(): the service and its dispatcher refer to each other
        self.handover: OutcomeHandover | None = None
        self.inpainter = None
        self.state = "loading"
        self.error: str | None = None
        self.device: str | None = None
        self._load_seconds: float | None = None  # the model load the first jobs waited for (metrics)
        self.on_state: Callable[[], None] = lambda: None  # the state changed (it runs in a worker process)
        self.on_start: Callable[[str], None] = lambda job_id: None  # a job's group came up
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def bind(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.handover = OutcomeHandover(jobs)
        jobs.lifecycle.on_ended = self.handover.give  # v1 gets its answer before the worker's end-of-job chores

    def _low_priority(self, job_id: str) -> bool:
        try:
            record = self.jobs.records.get(job_id)
        except Exception:  # the store briefly unreachable: the normal lane, the job is not lost
            log.warning("job %s: reading its priority failed", job_id, exc_info=True)
            return False
        return record is not None and record.low_priority

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="inpaint-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.queue.close()
        if self._thread:
            self._thread.join(self.shutdown_grace)

    def _recover(self) -> None:
        """Requeue what a previous process left: jobs it died in the middle of (retried once), then queued jobs."""
        from service.jobs.housekeeping import reap_stale

        reap_stale(self.jobs, lease=0)  # at start-up no PROCESSING job has a live worker
        for job_id in self.jobs.records.unfinished_ids(JobStatus.QUEUED):
            self.submit(job_id)

    def submit(self, job_id: str) -> None:
        self.queue.put(job_id)

    redispatch = hold = submit  # the queue puts a low-priority job in its low lane

    def cancel(self, job_id: str) -> None:
        """Nothing to do: the worker checks the job's cancel flag before it starts and at every step."""

    def cancel_running(self, job_id: str) -> None:
        """Nothing to do: this process's cancels are seen at the next step."""

    def last_dispatch(self, job_id: str) -> float | None:
        return self.queue.dispatched.get(job_id)

    def call_state(self, job_id: str) -> str | None:
        if job_id in self.queue.dispatched:  # still waiting in this process's queue
            return None
        return "the worker stopped responding"  # taken by the worker thread, then silent: stuck or gone

    async def wait(self, job_id: str, timeout: float) -> JobOutcome | None:
        return await self.handover.wait(job_id, timeout)

    def _load(self) -> bool:
        started = time.monotonic()
        try:
            self.inpainter = self.inpainter_factory()
            self._load_seconds = time.monotonic() - started
            self.device = getattr(self.inpainter, "device", None)
            if self.batch_max_images is None:
                on_gpu = str(self.device).startswith("cuda")
                self.batch_max_images = GPU_BATCH_MAX_IMAGES if on_gpu else 1
                log.info("dynamic batching: up to %d image(s) per call on %s", self.batch_max_images, self.device)
            self.state = "ready"
            return True
        except Exception as exc:
            log.exception("the model failed to load")
            self.error = f"the model failed to load: {exc}"
            self.state = "error"
            return False
        finally:
            self.on_state()

    def _loop(self) -> None:
        try:
            self._recover()  # here, not in start(): start() runs on the event loop, the store must not
        except Exception:  # e.g. a full disk: the lease reaper handles what is left once the store works
            log.exception("recovering the previous run's jobs failed; the housekeeping will retry them")
        loaded = self._load()
        while (job_ids := self.queue.next_round(self.batch_max_images)) is not None:
            try:
                if loaded:
                    self._run(job_ids)
                else:
                    for job_id in job_ids:
                        self.queue.dispatched.pop(job_id, None)
                        self.jobs.lifecycle.fail(job_id, Failure.UNAVAILABLE, self.error or "the model is unavailable")
            except StoreUnavailable as exc:  # e.g. disk full: keep the jobs, wait, try again
                self.jobs.lifecycle.fault = str(exc)
                log.error("jobs %s: %s; retrying in %.0fs", ", ".join(job_ids), exc, STORE_RETRY_SECONDS)
                if not self._stopping.wait(STORE_RETRY_SECONDS):
                    for job_id in job_ids:
                        self.submit(job_id)
            except Exception:  # the worker outlives any job
                log.exception("jobs %s: unexpected error in the worker; it goes on with the next jobs",
                              ", ".join(job_ids))

    def _started(self, job_id: str) -> None:
        self.queue.dispatched.pop(job_id, None)
        self.on_start(job_id)

    def _run(self, job_ids: list[str]) -> None:
        self.handover.running.update(job_ids)
        try:
            # A job stays "dispatched" (waiting here, not silent) until its group starts.
            outcomes = run_jobs(job_ids, self.jobs, self.inpainter, self.job_timeout, self.batch_max_images,
                                self._load_seconds, on_start=self._started)
            self._load_seconds = None  # only the first jobs waited for the load
            for outcome in outcomes.values():  # again: for a waiter that came after the job ended
                if outcome is not None:
                    self.handover.give(outcome)
        finally:
            self.handover.running.difference_update(job_ids)
            for job_id in job_ids:
                self.queue.dispatched.pop(job_id, None)
                # A waiter that checked while the job was running reads its record now (also when the round
                # failed: its jobs are retried, or the waiter times out as it should).
                self.jobs.changes.notify(job_id)
