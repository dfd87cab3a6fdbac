"""What the job layer raises. No HTTP here: service/http/errors.py gives each kind its status code, in one table.

`JobError` and its kinds are refusals of a request (the caller can do something about them); the rest are
failures of the parts underneath (a store, the result storage, a worker).
"""

import math
import time


def size_text(size: int) -> str:
    """A byte count for people: '32 MiB (33,554,432 bytes)'."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit} ({size:,} bytes)"
    return f"{size:,} bytes"


class JobError(Exception):
    """A request the job rules refuse, with a message for the caller."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field  # the request parameter at fault, when there is one


class BadInput(JobError):
    """A parameter or an input image is invalid (also an input URL the SSRF guard refuses)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"parameter '{field}': {message}", field=field)


class NotFound(JobError):
    """Unknown, expired, or another key's job (the three read alike)."""


class OutOfCredits(JobError):
    """The key's credit budget cannot pay for the request."""

    def __init__(self, message: str, remaining: int):
        super().__init__(message)
        self.remaining = remaining


class Throttled(JobError):
    """Try again later: the key's rate limit, a full queue, or the deployment's daily cap."""

    def __init__(self, message: str, retry_after: float, now: float | None = None):
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))
        self.reset_at = (time.time() if now is None else now) + self.retry_after


class NoWorker(JobError):
    """No worker can take the job right now (the model failed to load, or dispatch failed). Nothing was charged."""

    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class KeyReused(JobError):
    """An Idempotency-Key this API key already used for a request with another body."""


class KeyInUse(JobError):
    """The request first sent with this Idempotency-Key is still being taken in; retry shortly."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(RuntimeError):
    """The store cannot take writes right now (disk full, database gone, network down). Callers answer 503 and
    try again later; nothing that was accepted is dropped."""


class StorageError(RuntimeError):
    """Result storage kept failing after retries."""


class WorkerFailed(Exception):
    """The worker running a job is gone (its call failed, expired or was cut off)."""


class CallStateUnknown(Exception):
    """How a job's worker call stands cannot be learnt right now (the platform is unreachable)."""
