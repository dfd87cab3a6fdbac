"""Why a job failed, as a stable code, and whether its credits are given back.

The worker and the job rules say *why* (a `Failure`); the HTTP layer gives each reason its v1 status code
(service/http/errors.py) instead of reading the error's wording.
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
    MASK_NOT_FOUND = "mask_not_found"  # the mask came out empty on the image (a mask_prompt that found nothing)
    INTERNAL = "internal"  # anything else


CHARGED = {Failure.BLOCKED}  # the caller's content was the cause: the credits stay spent


def refunded(failure: Failure | None) -> bool:
    return (failure or Failure.INTERNAL) not in CHARGED
