"""Housekeeping: expired records and files are deleted; jobs whose worker went silent are retried or failed.

Runs on a thread in the embedded server (`Sweeper`) and as the scheduled `sweep`
function on Modal.
"""

import logging
import threading
import time
from typing import Callable

from schemas import JobStatus
from service.failures import Failure
from service.job_service import MAX_ATTEMPTS, JobService
from service.ports import Counters

log = logging.getLogger(__name__)


def sweep_expired(jobs: JobService, now: float | None = None) -> int:
    """Delete expired records and their files. Returns how many records went."""
    now = time.time() if now is None else now
    removed = 0
    for record in jobs.records.expired(now):
        try:
            jobs.storage.delete([image.key for image in record.images])
        except Exception:
            log.exception("could not delete the files of expired job %s; will retry", record.id)
            continue
        jobs.inputs.delete(record.id)
        jobs.records.delete(record.id)
        removed += 1
    if removed:
        log.info("expiry sweep removed %d job(s)", removed)
    return removed


def reap_stale(jobs: JobService, lease: float, now: float | None = None) -> int:
    """Unfinished jobs with no sign of life for `lease` seconds whose worker call is gone: a PROCESSING job is
    dispatched again once, then FAILED; a QUEUED job whose call failed (the worker could not start) is FAILED.
    A call the platform still holds (queued behind max_containers, running, retried after preemption) is left
    alone: its own timeout bounds it. lease=0 takes every PROCESSING job (start-up recovery).
    Returns how many jobs were handled."""
    now = time.time() if now is None else now
    handled = 0
    for status in (JobStatus.PROCESSING, JobStatus.QUEUED):
        if lease <= 0 and status == JobStatus.QUEUED:
            continue
        for job_id in jobs.records.unfinished_ids(status):
            record = jobs.records.get(job_id)
            if record is None or record.status != status:
                continue
            last_seen = max(filter(None, (record.heartbeat_at, record.started_at, record.created_at,
                                          jobs.dispatcher.last_dispatch(job_id))))
            if lease > 0 and now - last_seen <= lease:
                continue
            gone = jobs.dispatcher.call_state(job_id) if lease > 0 else "the server restarted"
            if gone is None:
                continue
            handled += 1
            if status == JobStatus.QUEUED:
                jobs.fail(job_id, Failure.UNAVAILABLE, f"no worker could run the job: {gone}")
            elif max(record.attempts, record.redispatches + 1) >= MAX_ATTEMPTS:
                # redispatches bounds it too: an attempt claimed by a worker that died before recording it
                # would otherwise be dispatched again forever
                silence = f", silent for over {lease:g}s" if lease > 0 else ""
                jobs.fail(job_id, Failure.WORKER_LOST,
                          f"the worker stopped responding while running this job (retried once{silence})")
            else:
                log.warning("job %s: worker gone (%s); dispatching it again", job_id, gone)
                jobs.records.update(job_id, redispatches=record.redispatches + 1)
                jobs.dispatcher.redispatch(job_id)
    return handled


def expire_queued(jobs: JobService, now: float | None = None) -> int:
    """QUEUED jobs that waited longer than MAX_QUEUE_SECONDS end FAILED "expired in queue" (with webhook and
    refund) rather than waiting forever. Returns how many."""
    now = time.time() if now is None else now
    limit = jobs.settings.max_queue_seconds
    expired = 0
    for job_id in jobs.records.unfinished_ids(JobStatus.QUEUED):
        record = jobs.records.get(job_id)
        if record is not None and record.status == JobStatus.QUEUED and now - record.created_at > limit:
            if jobs.fail(job_id, Failure.EXPIRED, f"expired in queue: not started within {limit:g}s"):
                jobs.dispatcher.cancel(job_id)  # on Modal: no GPU container starts just to find it ended
                expired += 1
    return expired


def keep_counters_alive(counters: Counters, owners: list[str]) -> None:
    """Read every key's credit counter and usage document: on Modal a Dict entry idle
    for 7 days expires, which would hand spent credits back and lose usage. A read counts as activity."""
    for owner in owners:
        counters.modify(f"credits:{owner}", lambda doc: (None, None))
        counters.modify(f"usage:{owner}", lambda doc: (None, None))


class Sweeper:
    """Runs sweep_expired and reap_stale every `interval` seconds on a daemon thread (embedded)."""

    def __init__(self, jobs: JobService, interval: float, lease: float = 120.0,
                 check: Callable[[], str | None] = lambda: None):
        self.jobs, self.interval, self.lease, self.check = jobs, interval, lease, check
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="housekeeping", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if problem := self.check():
                    self.jobs.fault = problem
                    log.error("%s", problem)
                    continue
                sweep_expired(self.jobs)
                reap_stale(self.jobs, self.lease)
                expire_queued(self.jobs)
            except Exception:
                log.exception("housekeeping sweep failed")
