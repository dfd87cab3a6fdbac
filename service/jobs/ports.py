"""The narrow interfaces between the job rules and the parts they run on. The job layer names only these;
the implementations live in service/stores/ and only the composition root (service/backend.py) picks them.

- `JobRecords`: the records and their once-only transitions;
- `InputBlobs`: the two input images of a job, written once at submit, deleted once at its end;
- `Counters`: small named documents changed atomically (rate buckets, credits, the daily cap);
- `PendingWebhooks`: webhook deliveries not yet ended (embedded; on Modal each is a function call);
- `ResultStorage`: where result images go, and the URLs they are fetched from;
- `Dispatcher`: how a stored job reaches a worker, and how its end is awaited.

Store methods are blocking (a SQLite call, or a network round trip on Modal). The job
service calls them from worker threads, never from the event loop.
"""

from typing import Any, Callable, Protocol, TypeVar

from schemas import JobStatus
from service.jobs.records import ExpiredJob, JobOutcome, JobRecord, PendingWebhook

T = TypeVar("T")


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

    def bind_key(self, name: str, job_id: str, fingerprint: str, stale_before: float) -> tuple[str, str]:
        """Bind the idempotency key `name` to this job, atomically: returns the (job id, fingerprint) bound now,
        this job's when the key was free. A binding made before `stale_before` whose job is gone (expired, or
        its submit never stored it) counts as free. Forgotten with the job (`delete`)."""

    def unbind_key(self, name: str, job_id: str) -> None:
        """Free the key if it is still bound to this job (its submit was refused: the job does not exist)."""

    def request_cancel(self, job_id: str) -> None: ...

    def cancel_requested(self, job_id: str) -> bool:
        """Should a running job stop: cancelled, or already ended by another party."""

    def unfinished(self) -> int:
        """How many jobs are QUEUED or PROCESSING (cheap: no scan on a request path)."""

    def queue_position(self, record: JobRecord) -> int:
        """How many QUEUED jobs were submitted before this QUEUED one (0 = next to run)."""

    def unfinished_ids(self, status: JobStatus) -> list[str]:
        """Ids with this unfinished status, oldest first (housekeeping, not request paths)."""

    def repair_finished(self, job_id: str) -> None:
        """A finished job still listed by unfinished_ids: do what its end left undone (a store that tidies after
        the once-only end can be cut off between the two)."""

    def expired(self, now: float) -> list[ExpiredJob]:
        """Finished jobs past their expiry, soonest expired first (housekeeping)."""

    def delete(self, jobs: list[ExpiredJob]) -> None:
        """Forget these expired jobs and everything the store kept beside their records (housekeeping)."""


class InputBlobs(Protocol):
    """A job's image and mask under its record's `inputs_key`, which carries a random token: where inputs sit in
    the result storage, a result URL (which names the job) must not lead to them."""

    def put(self, key: str, image: bytes, mask: bytes) -> None: ...

    def get(self, key: str) -> tuple[bytes, bytes] | None:
        """The image and mask bytes; None when they are gone."""

    def delete(self, keys: list[str]) -> None:
        """Delete these inputs (those already gone are skipped)."""


class Counters(Protocol):
    def modify(self, name: str, change: Callable[[dict | None], tuple[dict | None, T]]) -> T:
        """Read-modify-write of the document `name`: change(old) -> (new or None to keep, result)."""


class PendingWebhooks(Protocol):
    """Webhook deliveries kept until they end (delivered or given up), so that a restart resumes them."""

    def add(self, job_id: str, owner: str, url: str, at: float) -> None:
        """A delivery due at `at` (once per job: adding it again changes nothing)."""

    def due(self, now: float, limit: int) -> list[PendingWebhook]:
        """Deliveries due by `now`, soonest first."""

    def retry(self, job_id: str, attempts: int, at: float) -> None: ...

    def done(self, job_id: str) -> None: ...


class ResultStorage(Protocol):
    served_here: bool  # the web tier answers /files/<key> (local disk, a modal.Volume); else clients fetch url()

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store an object; StorageError after retries."""

    def url(self, key: str, base_url: str, expires_in: int) -> str: ...

    def read(self, key: str) -> bytes: ...

    def delete(self, keys: list[str]) -> None: ...


class Dispatcher(Protocol):
    state: str  # "loading" | "ready" | "error"
    error: str | None
    device: str | None

    def submit(self, job_id: str) -> None: ...

    def hold(self, job_id: str) -> None:
        """A low-priority job: run it only when no normal job waits (and, on Modal, never start a container
        for it)."""

    def redispatch(self, job_id: str) -> None: ...

    def cancel(self, job_id: str) -> None:
        """A queued job was cancelled: do not run it (it ended already)."""

    def cancel_running(self, job_id: str) -> None:
        """A running job was cancelled: tell its worker now where that is cheap (else it reads the flag)."""

    def last_dispatch(self, job_id: str) -> float | None: ...

    def call_state(self, job_id: str) -> str | None:
        """None while the call is pending or running; else why it is gone (housekeeping). CallStateUnknown when
        that cannot be learnt right now."""

    async def wait(self, job_id: str, timeout: float) -> JobOutcome | None:
        """The outcome when the job ends within `timeout`, else None. Raises WorkerFailed when its worker is gone."""
