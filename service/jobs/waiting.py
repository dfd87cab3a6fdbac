"""Reading jobs for their owners: a status body, a long-poll that answers as soon as what a poll shows
changes, and v1's wait for the job's end."""

import asyncio
import time
from typing import Any, AsyncIterator, Callable

from schemas import JobStatus, Progress, StatusBody
from service.jobs.changes import Changes
from service.jobs.errors import NotFound, WorkerFailed
from service.jobs.failures import Failure
from service.jobs.lifecycle import JobLifecycle
from service.jobs.limits import daily_usage
from service.jobs.ports import Counters, Dispatcher, JobRecords
from service.jobs.records import JobOutcome, JobRecord

STORE_POLL_INTERVAL = 0.5  # long-poll cadence where the store cannot notify (Modal): each poll is a round trip
WATCH_RECHECK_SECONDS = 30.0  # a watch re-reads the job this often even without a notification


async def run_blocking(function: Callable[..., Any], *args: Any) -> Any:
    """Store calls block (SQLite, or a network round trip on Modal): run them off the event loop."""
    return await asyncio.to_thread(function, *args)


class Waiting:
    def __init__(self, records: JobRecords, counters: Counters, dispatcher: Dispatcher, lifecycle: JobLifecycle,
                 changes: Changes | None = None, inline_reads: bool = False):
        self.records, self.counters, self.dispatcher, self.lifecycle = records, counters, dispatcher, lifecycle
        self.changes = changes  # in-process notifications, when the store can give them (embedded)
        # Reads that cost microseconds and never wait on a writer (SQLite in WAL mode, a connection per thread)
        # run on the event loop; a thread hop would cost more than the read. Writes, and every call to a
        # networked store (Modal), go through run_blocking.
        self.inline_reads = inline_reads

    async def read(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run a read-only store call from a handler: inline where reads are cheap, else off the loop."""
        return function(*args) if self.inline_reads else await run_blocking(function, *args)

    def owned(self, owner: str, job_id: str) -> JobRecord:
        record = self.records.get(job_id)
        if record is None or record.owner != owner:  # another key's job reads exactly like an unknown one
            raise NotFound(f"request {job_id} not found (unknown, expired, or not yours)")
        return record

    def status(self, record: JobRecord) -> StatusBody:
        body = StatusBody(request_id=record.id, status=record.status, metrics=record.metrics(), error=record.error,
                          warnings=record.warnings)
        if record.status == JobStatus.QUEUED:
            body.queue_position = self.records.queue_position(record)
        if record.status == JobStatus.PROCESSING and record.progress_total:
            body.progress = Progress(step=record.progress_step or 0, total=record.progress_total)
        return body

    def _view(self, job_id: str) -> tuple[JobRecord | None, tuple]:
        """The record and what a status poll shows of it: status, progress step, queue position."""
        record = self.records.get(job_id)
        if record is None:
            return None, ()
        position = self.records.queue_position(record) if record.status == JobStatus.QUEUED else None
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

    async def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        """The job's record now, then again each time what a status poll shows changes, until the job ends
        (the last record is its terminal one) or goes away. Woken by the store's notifications where it gives
        them, else the store is read every STORE_POLL_INTERVAL (Modal)."""
        subscription = self.changes.subscribe(job_id) if self.changes is not None else None
        try:
            shown = None
            while True:
                record, view = await self.read(self._view, job_id)
                if record is None:
                    return
                if view != shown:
                    shown = view
                    yield record
                    if record.status.terminal:
                        return
                if subscription is not None:
                    await subscription.wait(WATCH_RECHECK_SECONDS)
                else:
                    await asyncio.sleep(STORE_POLL_INTERVAL)
        finally:
            if subscription is not None:
                self.changes.unsubscribe(subscription)

    async def wait_until_done(self, job_id: str, timeout: float) -> JobOutcome | None:
        """For v1: the outcome once the job ends, None if it is still running after `timeout` seconds."""
        try:
            outcome = await self.dispatcher.wait(job_id, timeout)
        except WorkerFailed as exc:
            failed = await run_blocking(self.lifecycle.fail, job_id, Failure.UNAVAILABLE, str(exc))
            outcome = JobOutcome(failed) if failed else None
        if outcome is None or not outcome.record.status.terminal:
            record = await self.read(self.records.get, job_id)
            return JobOutcome(record) if record is not None and record.status.terminal else None
        return outcome

    def usage(self, owner: str, days: int) -> list[dict[str, Any]]:
        """The key's usage per UTC day, newest first, for the last `days` days (today included)."""
        return daily_usage(self.counters, owner, days)
