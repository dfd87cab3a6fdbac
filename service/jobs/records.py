"""Job records: what a request is, where it stands, what it produced.

Status only moves forward: QUEUED -> PROCESSING -> COMPLETED | FAILED; a change
that would move it back, or touch a finished job, is ignored (`apply_changes`).
The stores that keep records implement service/jobs/ports.py.
"""

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from schemas import JobStatus
from service.jobs.failures import Failure


class StoredImage(BaseModel):
    key: str
    content_type: str
    file_size: int
    seed: int


class JobRecord(BaseModel):
    id: str
    owner: str  # a hash of the API key that created it; never the key itself
    status: JobStatus = JobStatus.QUEUED
    params: dict[str, Any]  # the validated request, minus the image/mask payloads
    created_at: float
    expires_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    error: str | None = None
    failure: Failure | None = None
    images: list[StoredImage] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=list)
    inference_time: float | None = None  # the pipeline call (a batch's call, when the job ran in one)
    mask_time: float | None = None  # the mask model's seconds (mask_prompt), before the pipeline call
    gpu_seconds: float | None = None  # this job's share of the worker's busy time (model call + storing)
    cost_usd: float | None = None  # gpu_seconds at the configured price of GPU_TYPE (None when unset)
    batch_size: int | None = None  # jobs in the pipeline call this job ran in
    cold_start_time: float | None = None  # seconds of model loading this job waited for (first jobs only)
    intake_time: float | None = None  # the web tier's own seconds from the request's arrival to storing the job
    ticket: int | None = None  # its place in the order of submission, where the store numbers jobs (Modal)
    inputs_key: str | None = None  # where its input images are kept (InputBlobs); unguessable from its id
    progress_step: int | None = None
    progress_total: int | None = None
    heartbeat_at: float | None = None  # last sign of life from the worker running it
    redispatches: int = 0  # times the housekeeping sent it to a worker again (bounded by MAX_ATTEMPTS)
    base_url: str = ""  # the public base URL at submission (for URLs in webhook bodies)
    webhook_url: str | None = None
    warnings: list[str] = Field(default_factory=list)  # about inputs accepted as they are (a stretched mask)
    idempotency_key: str | None = None  # the store's name of the Idempotency-Key it was submitted under
    deadline: float | None = None  # from Cancel-After: not finished by then, it ends FAILED
    cancel_after: float | None = None  # the Cancel-After it was submitted with, in seconds

    def expired(self, now: float) -> bool:
        """Finished and past its time to live. An unfinished job never expires: it ends first (FAILED
        "expired in queue" when it waits too long), so every accepted request ends COMPLETED or FAILED."""
        return self.status.terminal and self.expires_at <= now

    @property
    def low_priority(self) -> bool:
        return self.params.get("priority") == "low"

    def past_deadline(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def deadline_failure(self) -> tuple[Failure, str]:
        """How a job past its Cancel-After ends: expired when it never started, else cancelled."""
        limit = f"{self.cancel_after:g}s" if self.cancel_after is not None else "its deadline"
        if self.started_at is None:
            return Failure.EXPIRED, f"expired: not started within its Cancel-After ({limit})"
        return Failure.CANCELLED, f"cancelled: not finished within its Cancel-After ({limit})"

    @property
    def inputs_at(self) -> str:
        """The InputBlobs key of its image and mask (the job id for records made before keys had a token)."""
        return self.inputs_key or self.id

    @property
    def samples(self) -> int:
        return int(self.params.get("samples", 1))

    def metrics(self) -> dict[str, float | int | None]:
        queue_time = (self.started_at - self.created_at) if self.started_at else None
        total_time = (self.finished_at - self.created_at) if self.finished_at else None
        return {
            "inference_time": _round(self.inference_time),
            "mask_time": _round(self.mask_time),
            "queue_time": _round(queue_time),
            "total_time": _round(total_time),
            "overhead_time": _round(self.overhead_time),
            "gpu_seconds": _round(self.gpu_seconds),
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 8),
            "batch_size": self.batch_size,
            "cold_start_time": _round(self.cold_start_time),
        }

    @property
    def overhead_time(self) -> float | None:
        """The service's own seconds for a completed job: taking the request in (intake_time) plus the worker's
        time outside the model call (total_time - queue_time - inference_time). Waiting in the queue and
        fetching URL inputs are not counted."""
        if self.inference_time is None or self.started_at is None or self.finished_at is None:
            return None
        running = self.finished_at - self.started_at - self.inference_time - (self.mask_time or 0.0)
        return max(0.0, running) + (self.intake_time or 0.0)


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 4)


def apply_changes(record: JobRecord, changes: dict[str, Any]) -> JobRecord | None:
    """The record after `changes`, or None when they are not allowed (status backwards, job finished)."""
    if record.status.terminal:
        return None
    new_status = changes.get("status")
    if new_status is not None and JobStatus(new_status).rank < record.status.rank:
        return None
    return record.model_copy(update=changes)



@dataclass
class JobOutcome:
    """A job's record once it has ended, with a completed job's image bytes when they are at hand."""
    record: JobRecord
    files: list[tuple[bytes, str]] = field(default_factory=list)  # (bytes, content type) per image

    def to_wire(self) -> dict:
        """Plain, picklable data, for another process (Modal's GPU call, the embedded worker process)."""
        return {"record": self.record.model_dump(mode="json"), "files": self.files}

    @classmethod
    def from_wire(cls, value: dict) -> "JobOutcome":
        return cls(JobRecord.model_validate(value["record"]), [tuple(f) for f in value["files"]])


@dataclass(frozen=True)
class PendingWebhook:
    """A finished job's webhook still to be delivered: attempts made so far, and when to try next."""
    job_id: str
    owner: str
    url: str
    attempts: int
    next_at: float


@dataclass(frozen=True)
class ExpiredJob:
    """What the housekeeping needs of a finished job past its expiry to forget it."""
    id: str
    files: list[str]  # its result objects in the result storage
    inputs_key: str  # where its inputs were kept (deleted when it ended, unless that failed)
    store_keys: tuple[str, ...] = ()  # what its store keeps beside the record (the store's own business)
