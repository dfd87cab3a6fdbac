"""The Modal backends: job records in a modal.Dict, dispatch by spawning the GPU class's method.

Both take the Modal objects as arguments (a modal.Dict, a modal method), so they
are tested against stand-ins with the same method surface; app.py wires the
real ones.

Limits worth knowing: modal.Dict has no compare-and-swap, so `update` is a
read-modify-write. To keep writers from overwriting each other, the record has
one writer at a time: the web tier creates it, the GPU worker moves it past
QUEUED. What other parties write lives under keys of its own: the cancel flag
(`cancel:<id>`) and the FunctionCall id (`call:<id>`). The one remaining
overlap is a cancel racing the job's start: the web tier writes FAILED only
after cancelling the FunctionCall, and a worker that did start sees the flag
at its next step and ends FAILED "cancelled" too. Scans (queue
position, expiry) iterate the Dict: fine for the records of one retention
window, not for millions.
"""

import logging
import time
from typing import Any, Callable

import modal.exception

from schemas import JobStatus
from service.jobs import JobRecord, apply_changes
from service.worker import JobOutcome

log = logging.getLogger(__name__)

JOB = "job:"
INPUTS = "inputs:"
STATE = "state:"
CANCEL = "cancel:"
CALL = "call:"


class ModalDictJobStore:
    def __init__(self, records, on_terminal: Callable[[JobRecord], None] | None = None):
        self.records = records  # a modal.Dict (or anything with get/put/pop/items)
        self.on_terminal = on_terminal  # e.g. spawn webhook delivery

    def create(self, record: JobRecord, image: bytes, mask: bytes) -> None:
        self.records.put(INPUTS + record.id, (image, mask))
        self.records.put(JOB + record.id, record.model_dump_json())

    def _read(self, job_id: str) -> JobRecord | None:
        raw = self.records.get(JOB + job_id)
        return JobRecord.model_validate_json(raw) if raw else None

    def get(self, job_id: str) -> JobRecord | None:
        record = self._read(job_id)
        if record is None or record.expires_at <= time.time():
            return None
        return record

    def update(self, job_id: str, **changes: Any) -> JobRecord | None:
        current = self._read(job_id)
        if current is None:
            return None
        updated = apply_changes(current, changes)
        if updated is not None:
            self.records.put(JOB + job_id, updated.model_dump_json())
            if updated.status.terminal and self.on_terminal is not None:
                self.on_terminal(updated)
        return updated

    def get_inputs(self, job_id: str) -> tuple[bytes, bytes] | None:
        value = self.records.get(INPUTS + job_id)
        return (value[0], value[1]) if value else None

    def delete_inputs(self, job_id: str) -> None:
        self.records.pop(INPUTS + job_id, None)

    def _all(self) -> list[JobRecord]:
        return [JobRecord.model_validate_json(v) for k, v in self.records.items() if str(k).startswith(JOB)]

    def ids_with_status(self, status: JobStatus) -> list[str]:
        return [r.id for r in sorted(self._all(), key=lambda r: r.created_at) if r.status == status]

    def queue_position(self, job_id: str) -> int:
        record = self._read(job_id)
        if record is None:
            return 0
        return sum(1 for r in self._all() if r.status == JobStatus.QUEUED and r.created_at < record.created_at)

    def count_unfinished(self) -> int:
        return sum(1 for r in self._all() if not r.status.terminal)

    def expired(self, now: float) -> list[JobRecord]:
        return [r for r in self._all() if r.expires_at <= now]

    def delete(self, job_id: str) -> None:
        for prefix in (JOB, INPUTS, CANCEL, CALL):
            self.records.pop(prefix + job_id, None)

    def request_cancel(self, job_id: str) -> None:
        self.records.put(CANCEL + job_id, True)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.records.get(CANCEL + job_id))

    def set_call_id(self, job_id: str, call_id: str) -> None:
        self.records.put(CALL + job_id, call_id)

    def call_id(self, job_id: str) -> str | None:
        return self.records.get(CALL + job_id)

    def modify(self, name: str, change: Callable[[dict | None], tuple[dict | None, Any]]) -> Any:
        """Read-modify-write of a named document. Not atomic across containers (no CAS in modal.Dict):
        concurrent writers can let a few extra requests through a limit; they never corrupt it."""
        new_doc, result = change(self.records.get(STATE + name))
        if new_doc is not None:
            self.records.put(STATE + name, new_doc)
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


class ModalDispatcher:
    """Dispatch = `Inpainter().run.spawn(job_id)`; a v1 caller blocks on that FunctionCall."""

    state = "ready"  # GPU containers start on demand; there is nothing to load in the web tier
    error = None

    def __init__(self, store: ModalDictJobStore, spawn: Callable[[str], Any], call_from_id: Callable[[str], Any],
                 gpu: str):
        self.store = store
        self.spawn = spawn
        self.call_from_id = call_from_id
        self.device = f"modal:{gpu}"

    def submit(self, job_id: str) -> None:
        call = self.spawn(job_id)
        self.store.set_call_id(job_id, call.object_id)

    def wait(self, job_id: str, timeout: float) -> JobOutcome | None:
        call_id = self.store.call_id(job_id)
        if call_id is None:
            return None
        try:
            value = self.call_from_id(call_id).get(timeout=timeout)
        except (TimeoutError, modal.exception.TimeoutError):
            return None
        return outcome_from_wire(value) or (JobOutcome(r) if (r := self.store.get(job_id)) else None)

    def cancel(self, job_id: str) -> None:
        call_id = self.store.call_id(job_id)
        if call_id:
            try:
                self.call_from_id(call_id).cancel()
            except Exception:
                log.warning("could not cancel FunctionCall %s of job %s", call_id, job_id, exc_info=True)
