"""Who owns a job: a stable id for an API key that does not reveal it (stored on job records, safe to log)."""

import hashlib


def key_owner(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]
