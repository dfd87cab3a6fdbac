"""Why a job failed, as a stable code, and what each reason means for the caller: one table.

The worker and the job service say *why* (a `Failure`); the HTTP layer looks the
reason up here instead of reading the error's wording.
"""

from enum import Enum


class Failure(str, Enum):
    CANCELLED = "cancelled"  # the owner cancelled it
    BLOCKED = "blocked"  # the safety checker flagged the output
    TIMED_OUT = "timed_out"  # ran past the job timeout
    STORAGE = "storage"  # the result could not be stored
    UNAVAILABLE = "unavailable"  # no worker could take it (model failed to load, GPU container failed to start)
    WORKER_LOST = "worker_lost"  # the worker went silent twice
    EXPIRED = "expired"  # still queued when its time to live ran out
    INTERNAL = "internal"  # anything else


# (v1 HTTP status, credits given back). v2 answers every FAILED job with 422 and this code in `failure`.
FAILURE_TABLE: dict[Failure, tuple[int, bool]] = {
    Failure.CANCELLED: (422, True),
    Failure.BLOCKED: (422, False),  # the caller's content was the cause: the credits stay spent
    Failure.TIMED_OUT: (504, True),
    Failure.STORAGE: (502, True),
    Failure.UNAVAILABLE: (503, True),
    Failure.WORKER_LOST: (502, True),
    Failure.EXPIRED: (504, True),
    Failure.INTERNAL: (500, True),
}


def v1_status(failure: Failure | None) -> int:
    return FAILURE_TABLE[failure or Failure.INTERNAL][0]


def refunded(failure: Failure | None) -> bool:
    return FAILURE_TABLE[failure or Failure.INTERNAL][1]
