"""Rate limits, queue cap, credit budgets and the daily image cap.

State lives in the job store (`store.modify`), so the limits hold across
processes: one SQLite file locally, the modal.Dict across Modal web containers.
"""

import math
import time
from datetime import datetime, timedelta, timezone

from service.errors import ApiError
from service.jobs import JobRecord, JobStore


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def too_many(message: str, wait: float, now: float) -> ApiError:
    wait = max(1, math.ceil(wait))
    return ApiError(429, message, headers={"Retry-After": str(wait), "x-rate-limit-reset-at-utc": _utc(now + wait)})


def check_rate(store: JobStore, owner: str, rate: float, burst: int, now: float | None = None) -> None:
    """Token bucket per key: `rate` requests/s sustained, `burst` at once. rate <= 0 turns it off."""
    if rate <= 0:
        return
    now = time.time() if now is None else now

    def take(doc):
        tokens = float(burst) if doc is None else min(burst, doc["tokens"] + (now - doc["t"]) * rate)
        if tokens >= 1:
            return {"tokens": tokens - 1, "t": now}, 0.0
        return {"tokens": tokens, "t": now}, (1 - tokens) / rate

    wait = store.modify(f"bucket:{owner}", take)
    if wait > 0:
        raise too_many(f"rate limit exceeded ({rate:g} requests/s, burst {burst}); retry in {math.ceil(wait)}s",
                       wait, now)


def check_queue(store: JobStore, max_depth: int, now: float | None = None) -> None:
    """Refuse new work while `max_depth` jobs are queued or running. max_depth <= 0 turns it off."""
    if max_depth > 0 and store.count_unfinished() >= max_depth:
        raise too_many(f"the queue is full ({max_depth} jobs waiting or running); retry shortly", 5,
                       time.time() if now is None else now)


def spend_credits(store: JobStore, owner: str, images: int, budget: int | None) -> int | None:
    """Charge `images` against the key's budget; the credits left, or None when there is no budget. 406 if short."""
    if budget is None:
        return None

    def spend(doc):
        used = (doc or {}).get("used", 0)
        if used + images > budget:
            return None, None
        return {"used": used + images}, budget - used - images

    left = store.modify(f"credits:{owner}", spend)
    if left is None:
        remaining = remaining_credits(store, owner, budget)
        raise ApiError(406, f"credit budget exhausted: this key has {remaining} of {budget} image credits left "
                            f"and the request needs {images}", headers={"x-remaining-credits": str(remaining)})
    return left


def remaining_credits(store: JobStore, owner: str, budget: int) -> int:
    return store.modify(f"credits:{owner}", lambda doc: (None, budget - (doc or {}).get("used", 0)))


def refund_credits(store: JobStore, record: JobRecord) -> None:
    """Give back the credits of a job that failed through no fault of the caller's content."""
    images = int(record.params.get("samples", 1))

    def refund(doc):
        if doc is None:
            return None, None
        return {"used": max(0, doc.get("used", 0) - images)}, None

    store.modify(f"credits:{record.owner}", refund)


def spend_daily(store: JobStore, images: int, cap: int, now: float | None = None) -> None:
    """Global ceiling on images per UTC day (the hard cost cap). cap <= 0 turns it off. Not refunded."""
    if cap <= 0:
        return
    now = time.time() if now is None else now
    day = datetime.fromtimestamp(now, timezone.utc)

    def spend(doc):
        used = (doc or {}).get("images", 0)
        if used + images > cap:
            return None, False
        return {"images": used + images}, True

    if not store.modify(f"daily:{day:%Y-%m-%d}", spend):
        midnight = (day + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        raise too_many(f"the deployment's daily cap of {cap} images is reached; it resets at 00:00 UTC",
                       midnight.timestamp() - now, now)
