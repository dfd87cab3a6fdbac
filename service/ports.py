"""The narrow interfaces between the job service and where state lives.

Three small ports, each implemented by the embedded backend (service/sqlite_store.py:
SQLite + files) and the Modal backend (service/modal_backend.py: modal.Dict):

- `JobRecords`: the records and their once-only transitions;
- `InputBlobs`: the two input images of a job, written once at submit, deleted once at its end;
- `Counters`: small named documents changed atomically (rate buckets, credits, the daily cap).

The methods are blocking (a SQLite call, or a network round trip on Modal). The job
service calls them from worker threads, never from the event loop.
"""

from typing import Any, Callable, Protocol, TypeVar

from schemas import JobStatus
from service.jobs import JobRecord

T = TypeVar("T")


class StoreUnavailable(RuntimeError):
    """The store cannot take writes right now (disk full, database gone, network down). Callers answer 503 and
    try again later; nothing that was accepted is dropped."""


class JobRecords(Protocol):
    def create(self, record: JobRecord, max_unfinished: int = 0) -> bool:
        """Store a new QUEUED record; False (and nothing stored) while `max_unfinished` > 0 jobs are unfinished."""

    def get(self, job_id: str) -> JobRecord | None:
        """The record, None when unknown or past its expiry."""

    def update(self, job_id: str, **changes: Any) -> JobRecord | None:
        """Apply non-final changes (status forward only); None when not allowed or the job is finished."""

    def finish(self, job_id: str, **changes: Any) -> JobRecord | None:
        """Make the job COMPLETED or FAILED. Exactly one caller ever gets the record back; the rest get None."""

    def claim(self, name: str) -> bool:
        """True for the first caller with this name, False for every later one (a once-only step)."""

    def request_cancel(self, job_id: str) -> None: ...

    def cancel_requested(self, job_id: str) -> bool:
        """Should a running job stop: cancelled, or already ended by another party."""

    def unfinished(self) -> int:
        """How many jobs are QUEUED or PROCESSING (one cheap call)."""

    def queue_position(self, job_id: str) -> int:
        """How many QUEUED jobs were submitted before this one (0 = next to run)."""

    def unfinished_ids(self, status: JobStatus) -> list[str]:
        """Ids with this unfinished status, oldest first (housekeeping, not request paths)."""

    def expired(self, now: float) -> list[JobRecord]:
        """Records past their expiry (housekeeping)."""

    def delete(self, job_id: str) -> None: ...


class InputBlobs(Protocol):
    def put(self, job_id: str, image: bytes, mask: bytes) -> None: ...

    def get(self, job_id: str) -> tuple[bytes, bytes] | None: ...

    def delete(self, job_id: str) -> None: ...


class Counters(Protocol):
    def modify(self, name: str, change: Callable[[dict | None], tuple[dict | None, T]]) -> T:
        """Read-modify-write of the document `name`: change(old) -> (new or None to keep, result)."""
