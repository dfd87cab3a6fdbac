"""Rate limits, credit budgets, the daily image cap, and what each key used per day (GPU seconds, cost).

State lives in the Counters port (`counters.modify`), so the limits hold across
processes: one SQLite file locally, a modal.Dict across Modal web containers.
"""

import math
import time
from datetime import datetime, timedelta, timezone

from service.jobs.errors import OutOfCredits, Throttled
from service.jobs.identity import key_owner
from service.jobs.records import JobRecord
from service.jobs.ports import Counters


def _day(ts: float) -> str:
    """The UTC day of a timestamp, YYYY-MM-DD: the key of per-day counters."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


def credit_budget(settings, owner: str) -> int | None:
    """The key's image budget: its KEY_CREDITS entry, else DEFAULT_KEY_CREDITS (None: unlimited)."""
    for key, budget in settings.key_credits.items():
        if key_owner(key) == owner:
            return budget
    return settings.default_key_credits


def check_rate(counters: Counters, owner: str, rate: float, burst: int, now: float | None = None) -> None:
    """Token bucket per key: `rate` requests/s sustained, `burst` at once. rate <= 0 turns it off."""
    if rate <= 0:
        return
    now = time.time() if now is None else now

    def take(doc):
        tokens = float(burst) if doc is None else min(burst, doc["tokens"] + (now - doc["t"]) * rate)
        if tokens >= 1:
            return {"tokens": tokens - 1, "t": now}, 0.0
        return {"tokens": tokens, "t": now}, (1 - tokens) / rate

    wait = counters.modify(f"bucket:{owner}", take)
    if wait > 0:
        raise Throttled(f"rate limit exceeded ({rate:g} requests/s, burst {burst}); retry in {math.ceil(wait)}s",
                       wait, now)


def spend_credits(counters: Counters, owner: str, images: int, budget: int | None) -> int | None:
    """Charge `images` against the key's budget; the credits left, or None when there is no budget. 406 if short."""
    if budget is None:
        return None

    def spend(doc):
        used = (doc or {}).get("used", 0)
        if used + images > budget:
            return None, None
        return {"used": used + images}, budget - used - images

    left = counters.modify(f"credits:{owner}", spend)
    if left is None:
        remaining = remaining_credits(counters, owner, budget)
        raise OutOfCredits(f"credit budget exhausted: this key has {remaining} of {budget} image credits left "
                           f"and the request needs {images}", remaining)
    return left


def remaining_credits(counters: Counters, owner: str, budget: int) -> int:
    return counters.modify(f"credits:{owner}", lambda doc: (None, budget - (doc or {}).get("used", 0)))


def refund_credits(counters: Counters, record: JobRecord) -> None:
    """Give back the credits of a job that failed through no fault of the caller's content."""
    images = record.samples

    def refund(doc):
        if doc is None:
            return None, None
        return {"used": max(0, doc.get("used", 0) - images)}, None

    counters.modify(f"credits:{record.owner}", refund)


def spend_daily(counters: Counters, images: int, cap: int, now: float | None = None) -> None:
    """Global ceiling on images per UTC day (the hard cost cap). cap <= 0 turns it off. It counts what runs: a job
    that ends without having run (cancelled or expired while queued, never dispatched) gives its images back."""
    if cap <= 0:
        return
    now = time.time() if now is None else now
    day = datetime.fromtimestamp(now, timezone.utc)

    def spend(doc):
        used = (doc or {}).get("images", 0)
        if used + images > cap:
            return None, False
        return {"images": used + images}, True

    if not counters.modify(f"daily:{_day(now)}", spend):
        midnight = (day + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        raise Throttled(f"the deployment's daily cap of {cap} images is reached; it resets at 00:00 UTC",
                       midnight.timestamp() - now, now)


def refund_daily(counters: Counters, images: int, cap: int, now: float | None = None) -> None:
    """Give back images charged to the day of `now` (a job's submission) for a request that was then refused, or
    for a job that ended without running."""
    if cap <= 0:
        return
    counters.modify(f"daily:{_day(time.time() if now is None else now)}",
                    lambda doc: (None, None) if doc is None else ({"images": max(0, doc["images"] - images)}, None))


USAGE_DAYS = 31  # how far back GET /usage reaches (and what Modal's sweep keeps alive)


def add_usage(counters: Counters, record: JobRecord) -> None:
    """Count a job that used the GPU into its key's usage for the UTC day it ended: jobs, images delivered,
    GPU seconds and their cost. Failed jobs count their GPU seconds and cost but no images. A job with no price
    (cost_usd None: no GPU type set) makes its day's cost None too, as in the job's metrics: unknown, not free.
    One document per key holds its last USAGE_DAYS days (one store call to add, to read, or to keep alive)."""
    day, images = _day(record.finished_at or time.time()), len(record.images)

    def add(doc):
        days = {d: v for d, v in (doc or {}).get("days", {}).items() if d >= _day(time.time() - USAGE_DAYS * 86400)}
        totals = dict(days.get(day) or {"jobs": 0, "images": 0, "gpu_seconds": 0.0, "cost_usd": 0.0})
        totals["jobs"] += 1
        totals["images"] += images
        totals["gpu_seconds"] += record.gpu_seconds or 0.0
        known = record.cost_usd is not None and totals["cost_usd"] is not None
        totals["cost_usd"] = totals["cost_usd"] + record.cost_usd if known else None
        days[day] = totals
        return {"days": days}, None

    counters.modify(f"usage:{record.owner}", add)


def daily_usage(counters: Counters, owner: str, days: int, now: float | None = None) -> list[dict]:
    """The key's usage per UTC day, newest first: `days` entries, zeros for days without jobs."""
    now = time.time() if now is None else now
    recorded = counters.modify(f"usage:{owner}", lambda doc: (None, (doc or {}).get("days", {})))
    out = []
    for back in range(days):
        day = _day(now - back * 86400)
        totals = recorded.get(day, {})
        cost = totals.get("cost_usd", 0.0)
        out.append({"date": day, "jobs": totals.get("jobs", 0), "images": totals.get("images", 0),
                    "gpu_seconds": round(totals.get("gpu_seconds", 0.0), 4),
                    "cost_usd": None if cost is None else round(cost, 8)})
    return out
