"""Job state in modal.Dicts (the Modal backend's stores).

Everything takes the Dicts as arguments, so tests run it over stand-ins that cost and fail the way modal.Dict
does (tests/standins.py); app.py wires the real ones. On a real Dict each call is a network round trip,
`items()` streams one entry per message and `len()` is documented as expensive, so no request path scans:

- records:  `job:<id>` the live record (the web tier creates it, then only the GPU worker writes it),
            `final:<id>` the finished record, `cancel:<id>`, `call:<id>` (FunctionCall id, dispatch time),
            `claim:<name>` once-only steps, `queue:tail` / `queue:head` (see queue_position),
            `idem:<name>` an Idempotency-Key's binding {job, fp, at} (forgotten with its job);
- active:   `<id>` -> {created_at, status} for unfinished jobs only: its len() is the queue depth;
- expiry:   `<id>` -> {at, files, keys} for finished jobs until the sweep forgets them: the sweep reads this
            small index, never the records;
- counters: rate buckets, credits, the daily cap, usage.

modal.Dict has no compare-and-swap, but `put(key, value, skip_if_exists=True)` tells
the one caller that created the key. Every step that must happen once is built on
that: a job's end is the creation of `final:<id>` (so a late write to `job:<id>`
can never move a finished job back, and refund and webhook follow the one winner),
and each attempt is a `claim:attempt<n>:<id>` (so two copies of one spawn never
both run). Readers look at `final:` first.

Counters are read-modify-write: concurrent web containers can let a few extra requests through a rate limit,
and a spend racing a refund of the same key can lose one of the two updates (credits off by a job's samples),
never corrupt them. The queue depth is read at most once a second per container, so near the queue cap
concurrent submits can overshoot it by what arrives in that second.
"""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from schemas import JobStatus
from service.jobs.errors import StoreUnavailable
from service.jobs.records import ExpiredJob, JobRecord, apply_changes

log = logging.getLogger(__name__)

JOB, FINAL, CANCEL, CALL, CLAIM, IDEM = "job:", "final:", "cancel:", "call:", "claim:", "idem:"
HELD = "held:"  # a low-priority job kept back from Modal until running containers have room (modal_dispatch)
BIND_TRIES = 3  # reads of a key's binding while others free or take it over at the same moment
TAIL, HEAD = "queue:tail", "queue:head"
DEPTH_MAX_AGE = 1.0  # seconds a container reuses the queue depth it read (len() is an expensive call)
DELETE_THREADS = 16  # concurrent Dict calls while the sweep forgets expired jobs (each is a round trip)


class CachedDepth:
    """The `active` Dict's len(), read at most every DEPTH_MAX_AGE seconds per process and kept up to date with
    this process's own creates and ends in between."""

    def __init__(self, active, max_age: float = DEPTH_MAX_AGE):
        self.active, self.max_age = active, max_age
        self._value, self._read_at = 0, float("-inf")
        self._lock = threading.Lock()

    def get(self) -> int:
        with self._lock:
            if time.monotonic() - self._read_at > self.max_age:
                self._value, self._read_at = self.active.len(), time.monotonic()
            return self._value

    def add(self, change: int) -> None:
        with self._lock:
            self._value = max(0, self._value + change)


class DictKeyBindings:
    """JobRecords' Idempotency-Key bindings: `idem:<name>` entries in the records Dict, for DictRecords (whose
    `dict`, `get` and `claim` they use)."""

    def bind_key(self, name: str, job_id: str, fingerprint: str, stale_before: float) -> tuple[str, str]:
        """put(skip_if_exists) creates the binding for one caller. A stale one is taken over by the one caller
        that claims its takeover (a once-only step per stale binding)."""
        mine = {"job": job_id, "fp": fingerprint, "at": time.time()}
        bound = mine
        for _ in range(BIND_TRIES):
            if self.dict.put(IDEM + name, mine, skip_if_exists=True):
                return job_id, fingerprint
            bound = self.dict.get(IDEM + name)
            if bound is None:  # freed meanwhile (a refused submit): try again
                continue
            if bound["at"] >= stale_before or self.get(bound["job"]) is not None:
                break
            if self.claim(f"idem-takeover:{name}:{bound['job']}"):
                self.dict.put(IDEM + name, mine)
                return job_id, fingerprint
        if bound is None:
            raise StoreUnavailable(f"the Idempotency-Key's binding kept changing ({BIND_TRIES} reads); retry")
        return bound["job"], bound["fp"]

    def unbind_key(self, name: str, job_id: str) -> None:
        self._unbind(IDEM + name, job_id)

    def _unbind(self, key: str, job_id: str) -> None:
        """Pop a binding only while it is this job's: a stale one may have been taken over by a newer job."""
        bound = self.dict.get(key)
        if bound is not None and bound["job"] == job_id:
            self.dict.pop(key, None)


class DictRecords(DictKeyBindings):
    """JobRecords over modal.Dicts (`records`, the `active` index and the `expiry` index)."""

    def __init__(self, records, active, expiry):
        self.dict, self.active, self.expiry = records, active, expiry
        self.depth = CachedDepth(active)

    def create(self, record: JobRecord, max_unfinished: int = 0) -> bool:
        if max_unfinished > 0 and self.depth.get() >= max_unfinished:
            return False
        # A ticket in submission order. Two containers racing here may hand out the same number: two jobs then
        # show the same queue position, nothing worse.
        record.ticket = (self.dict.get(TAIL) or 0) + 1
        self.dict.put(TAIL, record.ticket)
        self.dict.put(JOB + record.id, record.model_dump_json())
        self.active.put(record.id, {"created_at": record.created_at, "status": record.status.value})
        self.depth.add(1)
        return True

    def _live(self, job_id: str) -> JobRecord | None:
        raw = self.dict.get(JOB + job_id)
        return JobRecord.model_validate_json(raw) if raw else None

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.dict.get(FINAL + job_id) or self.dict.get(JOB + job_id)
        record = JobRecord.model_validate_json(raw) if raw else None
        return None if record is None or record.expired(time.time()) else record

    def update(self, job_id: str, **changes: Any) -> JobRecord | None:
        current = self._live(job_id)
        updated = apply_changes(current, changes) if current is not None else None
        if updated is None or updated.status.terminal:
            return None
        self.dict.put(JOB + job_id, updated.model_dump_json())
        if updated.status != current.status:
            self.active.put(job_id, {"created_at": updated.created_at, "status": updated.status.value})
            if self.dict.contains(FINAL + job_id):  # it ended between our read and our write: undo the entry
                self.active.pop(job_id, None)
                return None
            if current.status == JobStatus.QUEUED and updated.ticket is not None:
                self._advance_head(updated.ticket)
        return updated

    def _advance_head(self, ticket: int) -> None:
        """The queue's head is the highest ticket that has started. Racing starts may set it a little low for a
        moment; the next start corrects it. Only queue positions read it, so failing here must not fail a start."""
        try:
            if ticket > (self.dict.get(HEAD) or 0):
                self.dict.put(HEAD, ticket)
        except Exception:
            log.warning("moving the queue's head to %d failed", ticket, exc_info=True)

    def finish(self, job_id: str, **changes: Any) -> JobRecord | None:
        current = self._live(job_id)
        finished = apply_changes(current, changes) if current is not None else None
        if finished is None or not finished.status.terminal:
            return None
        if not self.dict.put(FINAL + job_id, finished.model_dump_json(), skip_if_exists=True):
            return None  # another party ended it first
        self.depth.add(-1)
        self._tidy(finished)
        return finished

    def _tidy(self, finished: JobRecord) -> None:
        """After the end: the expiry index entry, the live record marked finished (later updates see it and
        stop), the `active` entry gone. Each step is tried whatever the others do, and must not keep the caller
        from what follows an end; the sweep finishes what was left (repair_finished)."""
        steps = (
            ("indexing it for expiry", lambda: self.expiry.put(finished.id, {
                "at": finished.expires_at, "files": [image.key for image in finished.images],
                "inputs": finished.inputs_at, "keys": self._kept_beside(finished)})),
            ("marking its live record finished", lambda: self.dict.put(JOB + finished.id, finished.model_dump_json())),
            ("taking it off the active index", lambda: self.active.pop(finished.id, None)),
        )
        for what, step in steps:
            try:
                step()
            except Exception:
                log.warning("job %s ended, but %s failed", finished.id, what, exc_info=True)

    def repair_finished(self, job_id: str) -> None:
        raw = self.dict.get(FINAL + job_id)
        if raw:
            self._tidy(JobRecord.model_validate_json(raw))

    @staticmethod
    def _kept_beside(record: JobRecord) -> list[str]:
        """The records Dict's keys of a finished job, for the sweep. A cancel flag set on a job that then
        completed is not listed: like any Dict entry nobody reads, it expires after 7 days."""
        claims = [f"{CLAIM}attempt{n}:{record.id}" for n in range(1, max(record.attempts, record.redispatches + 1) + 1)]
        cancelled = [CANCEL + record.id] if record.failure is not None and record.failure.value == "cancelled" else []
        bound = [IDEM + record.idempotency_key] if record.idempotency_key else []
        held = [HELD + record.id] if record.low_priority else []
        return [JOB + record.id, FINAL + record.id, CALL + record.id, *cancelled, *claims, *bound, *held]

    def claim(self, name: str) -> bool:
        return self.dict.put(CLAIM + name, time.time(), skip_if_exists=True)

    def request_cancel(self, job_id: str) -> None:
        self.dict.put(CANCEL + job_id, True)

    def cancel_requested(self, job_id: str) -> bool:
        """True when the job should stop: cancelled, or already ended by someone else (e.g. expired)."""
        return bool(self.dict.get(CANCEL + job_id)) or self.dict.contains(FINAL + job_id)

    def unfinished(self) -> int:
        return self.depth.get()

    def queue_position(self, record: JobRecord) -> int:
        """Jobs submitted before this one that have not started: its ticket less the queue's head, at most the
        unfinished jobs but this one. One Dict call, however long the queue. Approximate: a job that ended
        without starting (cancelled, expired) counts until the queue passes it."""
        if record.low_priority:  # behind every job that is not done, whichever its lane (an upper bound)
            return max(0, self.depth.get() - 1)
        if record.ticket is None:
            return 0
        behind_head = record.ticket - (self.dict.get(HEAD) or 0) - 1
        return max(0, min(behind_head, self.depth.get() - 1))

    def unfinished_ids(self, status: JobStatus) -> list[str]:
        """Housekeeping only: one stream of the `active` index."""
        entries = sorted(self.active.items(), key=lambda item: item[1]["created_at"])
        return [job_id for job_id, entry in entries if entry["status"] == status.value]

    def expired(self, now: float) -> list[ExpiredJob]:
        """Housekeeping only: one stream of the small `expiry` index, never the records."""
        due = sorted((entry["at"], job_id, entry) for job_id, entry in self.expiry.items() if entry["at"] <= now)
        return [ExpiredJob(job_id, entry["files"], entry["inputs"], tuple(entry["keys"])) for _, job_id, entry in due]

    def delete(self, jobs: list[ExpiredJob]) -> None:
        """Each job's keys, then its index entry (so a failure part-way leaves it to the next sweep), with
        DELETE_THREADS jobs in flight at once: modal.Dict has no batch delete."""
        def forget(job: ExpiredJob) -> None:
            try:
                for key in job.store_keys:
                    if key.startswith(IDEM):
                        self._unbind(key, job.id)
                    else:
                        self.dict.pop(key, None)
                self.expiry.pop(job.id, None)
            except Exception:  # this one job is tried again next sweep; the others go on
                log.warning("forgetting expired job %s failed", job.id, exc_info=True)

        with ThreadPoolExecutor(DELETE_THREADS, thread_name_prefix="sweep") as pool:
            list(pool.map(forget, jobs))


class DictCounters:
    """Counters in a modal.Dict (read-modify-write; see the module docstring)."""

    def __init__(self, counters):
        self.dict = counters

    def modify(self, name: str, change: Callable[[dict | None], tuple[dict | None, Any]]) -> Any:
        new_doc, result = change(self.dict.get(name))
        if new_doc is not None:
            self.dict.put(name, new_doc)
        return result
