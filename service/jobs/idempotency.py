"""Idempotency-Key: a request sent again with the same key by the same API key, with the same body, gets the job
the first one made, and is charged once. The binding of a key to its job is one atomic step in the store
(`JobRecords.bind_key`), so two submits arriving together make one job."""

import hashlib
import json
import time
from typing import Any

from service.jobs.errors import KeyInUse, KeyReused
from service.jobs.ports import JobRecords
from service.jobs.records import JobRecord

WAIT_SECONDS = 10.0  # how long a repeat waits for the first submit with its key to store its job
PENDING_SECONDS = 60.0  # a key bound by a submit that died before storing its job is free again after this long


def key_name(owner: str, key: str) -> str:
    """The store's name for an API key's Idempotency-Key (the key's own text is not kept)."""
    return hashlib.sha256(f"{owner}\n{key}".encode()).hexdigest()


def fingerprint(params: dict[str, Any], cancel_after: float | None, image: bytes, mask: bytes) -> str:
    """A hash of what makes two requests the same: the canonical parameters, Cancel-After and the input bytes."""
    digest = hashlib.sha256(json.dumps([params, cancel_after], sort_keys=True, separators=(",", ":")).encode())
    for data in (image, mask):
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def bind(records: JobRecords, name: str, job_id: str, request: str) -> JobRecord | None:
    """None when the key is now this job's (go on and store it); else the job it was first sent for. KeyReused
    when that request had another body; KeyInUse when its job is still not stored after WAIT_SECONDS."""
    give_up = time.monotonic() + WAIT_SECONDS
    pause = 0.01
    while True:
        bound_id, bound_request = records.bind_key(name, job_id, request, time.time() - PENDING_SECONDS)
        if bound_id == job_id:
            return None
        if bound_request != request:
            raise KeyReused("header 'Idempotency-Key': this key was already used for a request with another body; "
                            "use a new key for a new request")
        if (first := records.get(bound_id)) is not None:
            return first
        # Bound a moment ago by a submit still storing its job (or refused: then the key is free next time).
        if time.monotonic() > give_up:
            raise KeyInUse("header 'Idempotency-Key': the request first sent with this key is still being taken "
                           "in; retry shortly")
        time.sleep(pause)
        pause = min(pause * 2, 0.5)
