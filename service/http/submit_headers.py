"""The optional headers of a submit (v1 and v2): `Idempotency-Key` and `Cancel-After`, checked before the body is
read. A bad value is a 400 naming the header."""

import re

from fastapi import Header, Request

from service.http.errors import ApiError

IDEMPOTENCY_KEY = "Idempotency-Key"
CANCEL_AFTER = "Cancel-After"
MAX_KEY_LENGTH = 255
VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
MAX_CANCEL_AFTER = 24 * 3600.0
# Go-style durations, as Replicate's Cancel-After: one or more <number><unit>, e.g. 30s, 5m, 1h30m, 500ms.
DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|h|m|s))+")
DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _one(request: Request, name: str) -> str | None:
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise ApiError(400, f"header '{name}': send it once (got {len(values)} values)")
    return values[0] if values else None


def idempotency_key(request: Request) -> str | None:
    key = _one(request, IDEMPOTENCY_KEY)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not VISIBLE_ASCII.fullmatch(key):
        raise ApiError(400, f"header '{IDEMPOTENCY_KEY}': must be 1 to {MAX_KEY_LENGTH} visible ASCII characters "
                            f"(no spaces), e.g. a UUID; got {len(key)} characters")
    return key


def cancel_after(request: Request) -> float | None:
    """Seconds, from a duration such as 30s, 5m, 1h30m or 500ms."""
    value = _one(request, CANCEL_AFTER)
    if value is None:
        return None
    if not DURATION.fullmatch(value):
        raise ApiError(400, f"header '{CANCEL_AFTER}': {value[:40]!r} is not a duration; use a number with a unit "
                            f"(ms, s, m, h), e.g. 30s, 5m, 1h30m or 500ms")
    seconds = sum(float(number) * UNIT_SECONDS[unit] for number, unit in DURATION_PART.findall(value))
    if not 0 < seconds <= MAX_CANCEL_AFTER:
        raise ApiError(400, f"header '{CANCEL_AFTER}': must be more than 0 and at most 24h, got {value}")
    return seconds


async def documented(
        key: str | None = Header(None, alias=IDEMPOTENCY_KEY, json_schema_extra={
            "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": "^[!-~]+$"},
            description="Extension: send the request again with the same key (and the same body) and get the same "
                        "request back, charged once; the same key with another body answers 422. Kept as long as "
                        "the job's results."),
        after: str | None = Header(None, alias=CANCEL_AFTER, json_schema_extra={
            "pattern": "^([0-9]+(\\.[0-9]+)?(ms|h|m|s))+$"},
            description="Extension: a duration (e.g. 30s, 5m, 1h30m, 500ms; at most 24h) after which a job that "
                        "has not finished ends FAILED: `expired` when it never started (credits given back), "
                        "`cancelled` when it was running.")) -> None:
    """A dependency of the submit routes that only puts the two headers into OpenAPI; `accept` reads them."""
