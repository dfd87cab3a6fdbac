"""The Modal backend: state in modal.Dicts, dispatch by spawning the GPU class's method.

Everything takes the Modal objects as arguments, so tests run it over stand-ins
with modal.Dict's method surface (tests/standins.py); app.py wires the real ones.

Four Dicts, so no request path ever scans big values:
- records:  `job:<id>` the live record (the web tier creates it, then only the GPU worker writes it),
            `final:<id>` the finished record, `cancel:<id>`, `call:<id>` (FunctionCall id, dispatch time),
            `claim:<name>` once-only steps;
- active:   `<id>` -> {created_at, status} for unfinished jobs only: its len() is the queue depth;
- inputs:   `<id>` -> (image, mask) bytes, popped when the job ends;
- counters: rate buckets, credits, the daily cap.

modal.Dict has no compare-and-swap, but `put(key, value, skip_if_exists=True)` tells
the one caller that created the key. Every step that must happen once is built on
that: a job's end is the creation of `final:<id>` (so a late write to `job:<id>`
can never move a finished job back, and refund and webhook follow the one winner),
and each attempt is a `claim:attempt<n>:<id>` (so two copies of one spawn never
both run). Readers look at `final:` first.

Counters are read-modify-write: concurrent web containers can let a few extra
requests through a rate limit, and a spend racing a refund of the same key can
lose one of the two updates (credits off by a job's samples), never corrupt them. The queue cap reads len() then
creates: near the cap, concurrent containers can overshoot by their number.
"""

import asyncio
import logging
import time
from typing import Any, Callable

from schemas import JobStatus
from service.job_service import JobOutcome, WorkerFailed, run_blocking
from service.jobs import JobRecord, apply_changes

log = logging.getLogger(__name__)

JOB, FINAL, CANCEL, CALL, CLAIM = "job:", "final:", "cancel:", "call:", "claim:"
ATTEMPT_CLAIMS = ("attempt1", "attempt2", "attempt3")


class DictRecords:
    """JobRecords over modal.Dicts (`records` and the `active` index)."""

    def __init__(self, records, active):
        self.dict = records
        self.active = active

    def create(self, record: JobRecord, max_unfinished: int = 0) -> bool:
        if max_unfinished > 0 and self.active.len() >= max_unfinished:
            return False
        self.dict.put(JOB + record.id, record.model_dump_json())
        self.active.put(record.id, {"created_at": record.created_at, "status": record.status.value})
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
        return updated

    def finish(self, job_id: str, **changes: Any) -> JobRecord | None:
        current = self._live(job_id)
        finished = apply_changes(current, changes) if current is not None else None
        if finished is None or not finished.status.terminal:
            return None
        if not self.dict.put(FINAL + job_id, finished.model_dump_json(), skip_if_exists=True):
            return None  # another party ended it first
        try:  # the job has ended; these only tidy up, and must not keep the caller from what follows an end
            self.dict.put(JOB + job_id, finished.model_dump_json())  # later updates see it finished and stop
            self.active.pop(job_id, None)
        except Exception:
            log.warning("job %s ended, but tidying its live record failed", job_id, exc_info=True)
        return finished

    def claim(self, name: str) -> bool:
        return self.dict.put(CLAIM + name, time.time(), skip_if_exists=True)

    def request_cancel(self, job_id: str) -> None:
        self.dict.put(CANCEL + job_id, True)

    def cancel_requested(self, job_id: str) -> bool:
        """True when the job should stop: cancelled, or already ended by someone else (e.g. expired)."""
        return bool(self.dict.get(CANCEL + job_id)) or self.dict.contains(FINAL + job_id)

    def unfinished(self) -> int:
        return self.active.len()

    def _active_entries(self) -> list[tuple[str, dict]]:
        return sorted(self.active.items(), key=lambda item: item[1]["created_at"])

    def queue_position(self, job_id: str) -> int:
        mine = self.active.get(job_id)
        if mine is None:
            return 0
        return sum(1 for _, entry in self._active_entries()
                   if entry["status"] == "QUEUED" and entry["created_at"] < mine["created_at"])

    def unfinished_ids(self, status: JobStatus) -> list[str]:
        return [job_id for job_id, entry in self._active_entries() if entry["status"] == status.value]

    def expired(self, now: float) -> list[JobRecord]:
        """Housekeeping only: one pass over the records Dict (small JSON values; inputs live elsewhere)."""
        found: dict[str, JobRecord] = {}
        for key, value in self.dict.items():
            if isinstance(key, str) and key.startswith((JOB, FINAL)):
                record = JobRecord.model_validate_json(value)
                if record.expired(now) and (key.startswith(FINAL) or record.id not in found):
                    found[record.id] = record
        return list(found.values())

    def delete(self, job_id: str) -> None:
        for key in (JOB, FINAL, CANCEL, CALL):
            self.dict.pop(key + job_id, None)
        for step in ATTEMPT_CLAIMS:
            self.dict.pop(f"{CLAIM}{step}:{job_id}", None)
        self.active.pop(job_id, None)


class DictInputs:
    """InputBlobs in their own modal.Dict, one entry per image (each up to INPUT_MAX_BYTES, 20 MiB by default)."""

    def __init__(self, inputs):
        self.dict = inputs

    def put(self, job_id: str, image: bytes, mask: bytes) -> None:
        self.dict.put(f"{job_id}:image", image)
        self.dict.put(f"{job_id}:mask", mask)

    def get(self, job_id: str) -> tuple[bytes, bytes] | None:
        image, mask = self.dict.get(f"{job_id}:image"), self.dict.get(f"{job_id}:mask")
        return (image, mask) if image is not None and mask is not None else None

    def delete(self, job_id: str) -> None:
        self.dict.pop(f"{job_id}:image", None)
        self.dict.pop(f"{job_id}:mask", None)


class DictCounters:
    """Counters in a modal.Dict (read-modify-write; see the module docstring)."""

    def __init__(self, counters):
        self.dict = counters

    def modify(self, name: str, change: Callable[[dict | None], tuple[dict | None, Any]]) -> Any:
        new_doc, result = change(self.dict.get(name))
        if new_doc is not None:
            self.dict.put(name, new_doc)
        return result


def outcome_to_wire(outcome: JobOutcome | None) -> dict | None:
    """What the GPU method returns to a blocking (v1) caller: plain, picklable data."""
    if outcome is None:
        return None
    return {"record": outcome.record.model_dump(mode="json"), "files": outcome.files}


def outcome_from_wire(value: dict | None) -> JobOutcome | None:
    if value is None:
        return None
    return JobOutcome(JobRecord.model_validate(value["record"]), [tuple(f) for f in value["files"]])


def describe_call_error(exc: BaseException) -> str:
    name = type(exc).__name__
    return f"the GPU worker failed ({name}: {exc})" if str(exc) else f"the GPU worker failed ({name})"


class ModalDispatcher:
    """Dispatch = `Inpainter().run.spawn(job_id)`; the FunctionCall id is kept under `call:<id>`."""

    state = "ready"  # GPU containers start on demand; there is nothing to load in the web tier
    error = None

    def __init__(self, records: DictRecords, spawn: Callable[[str], Any], call_from_id: Callable[[str], Any],
                 gpu: str, batched: bool = False):
        self.records = records
        self.spawn = spawn
        self.call_from_id = call_from_id
        self.device = f"modal:{gpu}"
        # With modal.batched, cancelling one input's FunctionCall cancels the whole batch it runs in (Modal
        # cancels the container's input context, which holds every input of the batch), so calls are never
        # cancelled: a cancelled job's input still reaches a container, finds the job ended and returns at once.
        self.batched = batched

    def submit(self, job_id: str) -> None:
        call = self.spawn(job_id)
        self.records.dict.put(CALL + job_id, {"id": call.object_id, "at": time.time()})

    def _call(self, job_id: str):
        entry = self.records.dict.get(CALL + job_id)
        return self.call_from_id(entry["id"]) if entry else None

    def redispatch(self, job_id: str) -> None:
        self.cancel(job_id)
        self.submit(job_id)

    def cancel(self, job_id: str) -> None:
        if self.batched:
            return
        call = self._call(job_id)
        if call is not None:
            try:
                call.cancel()
            except Exception:
                log.warning("could not cancel the FunctionCall of job %s", job_id, exc_info=True)

    def last_dispatch(self, job_id: str) -> float | None:
        entry = self.records.dict.get(CALL + job_id)
        return entry["at"] if entry else None

    def call_state(self, job_id: str) -> str | None:
        call = self._call(job_id)
        if call is None:
            return "the job was never handed to a worker"
        try:
            call.get(timeout=0)
        except TimeoutError:  # the builtin one: the call is still pending or running
            return None
        except BaseException as exc:  # noqa: BLE001 - OutputExpiredError, FunctionTimeoutError, remote errors
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return describe_call_error(exc)
        return "the worker returned without finishing the job"

    async def wait(self, job_id: str, timeout: float) -> JobOutcome | None:
        call = await run_blocking(self._call, job_id)
        if call is None:
            return None
        try:
            value = await call.get.aio(timeout=timeout)
        except TimeoutError:  # the builtin one: still running. Modal's TimeoutError subclasses mean it is gone.
            return None
        except BaseException as exc:  # noqa: BLE001 - remote errors, InputCancellation (a BaseException)
            if isinstance(exc, (KeyboardInterrupt, SystemExit, asyncio.CancelledError)):
                raise
            raise WorkerFailed(describe_call_error(exc)) from exc
        return outcome_from_wire(value)
