"""Housekeeping: expired records and files are deleted; jobs whose worker went silent are retried or failed.

Runs on a thread in the embedded server (`Sweeper`) and as the scheduled `sweep`
function on Modal.
"""

import logging
import threading
import time
from typing import Callable

from schemas import JobStatus
from service.jobs.errors import CallStateUnknown
from service.jobs.failures import Failure
from service.jobs import tallies
from service.jobs.ports import Counters
from service.jobs.service import MAX_ATTEMPTS, JobService

log = logging.getLogger(__name__)


SWEEP_BATCH = 1000  # expired jobs forgotten per round: their files go in a few storage calls (1000 keys each)


def sweep_expired(jobs: JobService, now: float | None = None, budget: float | None = None) -> int:
    """Forget expired jobs a batch at a time: their result files and any inputs left in a few storage calls per
    batch, their records through the store's batch delete. Stops after `budget` seconds (what is left goes
    next time). Returns how many jobs went."""
    now = time.time() if now is None else now
    started = time.monotonic()
    due = jobs.records.expired(now)
    removed = 0
    for start in range(0, len(due), SWEEP_BATCH):
        if budget is not None and time.monotonic() - started > budget:
            break
        batch = due[start:start + SWEEP_BATCH]
        try:
            jobs.storage.delete([key for job in batch for key in job.files])
            jobs.inputs.delete([job.inputs_key for job in batch])
            jobs.records.delete(batch)
        except Exception:
            log.exception("could not forget %d expired job(s); will retry", len(batch))
            break
        removed += len(batch)
    if removed:
        log.info("expiry sweep removed %d job(s) of %d due", removed, len(due))
    return removed


def reap_stale(jobs: JobService, lease: float, now: float | None = None) -> int:
    """Unfinished jobs with no sign of life for `lease` seconds whose worker call is gone: a PROCESSING job is
    dispatched again once, then FAILED; a QUEUED job whose call failed (the worker could not start) is FAILED.
    A call the platform still holds (queued behind max_containers, running, retried after preemption) is left
    alone: its own timeout bounds it. When how the call stands cannot be learnt (Modal unreachable), a PROCESSING
    job silent for longer than a job may run (the job timeout plus the lease) is taken all the same, so it never
    stays running forever. lease=0 takes every PROCESSING job (start-up recovery).
    Returns how many jobs were handled."""
    now = time.time() if now is None else now
    handled = 0
    for status in (JobStatus.PROCESSING, JobStatus.QUEUED):
        if lease <= 0 and status == JobStatus.QUEUED:
            continue
        for job_id in jobs.records.unfinished_ids(status):
            try:
                handled += _reap(jobs, job_id, status, lease, now)
            except Exception:  # one job's store or call error must not stop the sweep of the others
                log.exception("job %s: checking whether its worker is alive failed; will retry", job_id)
    return handled


def _reap(jobs: JobService, job_id: str, status: JobStatus, lease: float, now: float) -> int:
    record = jobs.records.get(job_id)
    if record is not None and record.status.terminal:  # listed as unfinished, yet it ended
        jobs.records.repair_finished(job_id)
        return 0
    if record is None or record.status != status:
        return 0
    last_seen = max(filter(None, (record.heartbeat_at, record.started_at, record.created_at,
                                  jobs.dispatcher.last_dispatch(job_id))))
    silence = now - last_seen
    if lease > 0 and silence <= lease:
        return 0
    if lease <= 0:
        gone = "the server restarted"
    else:
        try:
            gone = jobs.dispatcher.call_state(job_id)
        except CallStateUnknown as exc:
            if status != JobStatus.PROCESSING or silence <= jobs.settings.job_timeout_seconds + lease:
                log.warning("job %s: cannot tell how its call stands (%s); asking again next sweep", job_id, exc)
                return 0
            gone = f"silent for {silence:.0f}s, longer than a job may run (its call cannot be asked: {exc})"
    if gone is None:
        return 0
    if status == JobStatus.QUEUED:
        jobs.lifecycle.fail(job_id, Failure.UNAVAILABLE, f"no worker could run the job: {gone}")
    elif max(record.attempts, record.redispatches + 1) >= MAX_ATTEMPTS:
        # redispatches bounds it too: an attempt claimed by a worker that died before recording it
        # would otherwise be dispatched again forever
        silent = f", silent for over {lease:g}s" if lease > 0 else ""
        jobs.lifecycle.fail(job_id, Failure.WORKER_LOST,
                            f"the worker stopped responding while running this job (retried once{silent})")
    else:
        log.warning("job %s: worker gone (%s); dispatching it again", job_id, gone)
        jobs.dispatcher.redispatch(job_id)  # counted once it has gone out: a failed spawn uses up no retry
        jobs.records.update(job_id, redispatches=record.redispatches + 1)
    return 1


def expire_queued(jobs: JobService, now: float | None = None) -> int:
    """QUEUED jobs that waited longer than MAX_QUEUE_SECONDS, or past their Cancel-After, end FAILED "expired"
    (with webhook and refund) rather than waiting on. Returns how many."""
    now = time.time() if now is None else now
    limit = jobs.settings.max_queue_seconds
    expired = 0
    for job_id in jobs.records.unfinished_ids(JobStatus.QUEUED):
        record = jobs.records.get(job_id)
        if record is None or record.status != JobStatus.QUEUED:
            continue
        if record.past_deadline(now):
            ended = jobs.lifecycle.end_past_deadline(record)
        elif now - record.created_at > limit:
            ended = jobs.lifecycle.fail(job_id, Failure.EXPIRED, f"expired in queue: not started within {limit:g}s")
        else:
            continue
        if ended:
            jobs.dispatcher.cancel(job_id)  # on Modal: no GPU container starts just to find it ended
            expired += 1
    return expired


def keep_counters_alive(counters: Counters, owners: list[str]) -> None:
    """Read every key's credit counter and usage document, and the deployment's totals (/metrics, the spend
    cap): on Modal a Dict entry idle for 7 days expires, which would hand spent credits back, lose usage and
    reset the totals. A read counts as activity."""
    for owner in owners:
        counters.modify(f"credits:{owner}", lambda doc: (None, None))
        counters.modify(f"usage:{owner}", lambda doc: (None, None))
    counters.modify(tallies.DOCUMENT, lambda doc: (None, None))


def housekeeping_round(jobs: JobService, lease: float, budget: float | None = None,
                       keep_alive: list[str] | None = None) -> dict[str, int | None]:
    """Everything above once, each step tried whatever the others do. Returns what each did (None: it failed,
    and is tried again next round). `keep_alive`: key owners whose counters must not expire (Modal)."""
    steps = {"expired jobs removed": lambda: sweep_expired(jobs, budget=budget),
             "jobs whose worker was gone": lambda: reap_stale(jobs, lease),
             "jobs expired in the queue": lambda: expire_queued(jobs)}
    if keep_alive is not None:
        steps["keys whose counters were kept"] = lambda: keep_counters_alive(jobs.counters, keep_alive) or len(
            keep_alive)
    done: dict[str, int | None] = {}
    for what, step in steps.items():
        try:
            done[what] = step()
        except Exception:
            log.exception("housekeeping: %s: the step failed", what)
            done[what] = None
    return done


class Sweeper:
    """Runs housekeeping_round every `interval` seconds on a daemon thread (embedded)."""

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
            if problem := self.check():
                self.jobs.lifecycle.fault = problem
                log.error("%s", problem)
                continue
            housekeeping_round(self.jobs, self.lease)
