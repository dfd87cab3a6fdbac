"""The deployment's running totals, for GET /metrics and the spend cap: jobs ended by status and failure kind,
GPU seconds and their cost, the spend of each recent UTC day, refusals, cold starts, and the inference-time and
batch-size histograms.

They live in one document of the Counters port, so every process and container adds to and reads the same
totals (one SQLite file locally, the counters modal.Dict on Modal): one store call to add a job, one to read
them all. On Modal two containers ending jobs at the same instant can lose one of the two additions (the Dict
has no atomic increment; see service/stores/modal_dicts.py), so the totals can undercount a little, never
corrupt.
"""

import math
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from schemas import JobStatus
from service.jobs.errors import Throttled
from service.jobs.failures import Failure
from service.jobs.ports import Counters
from service.jobs.records import JobRecord

DOCUMENT = "tallies"
INFERENCE_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)  # seconds; +Inf beyond
BATCH_BUCKETS = (1, 2, 4, 8, 16)  # jobs per pipeline call; +Inf beyond
MASK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)  # seconds of the mask model; +Inf beyond
SPEND_DAYS = 2  # UTC days of spend kept: today and yesterday (a job that ends just after midnight)


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


def seconds_to_next_day(now: float) -> float:
    today = datetime.fromtimestamp(now, timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=1)).timestamp() - now


def _observe(histogram: dict | None, bounds: tuple, value: float) -> dict:
    """Add `value` to a histogram kept as counts per bucket (not cumulative; the last is +Inf) and a sum."""
    counts = list((histogram or {}).get("counts") or [0] * (len(bounds) + 1))
    counts[next((i for i, bound in enumerate(bounds) if value <= bound), len(bounds))] += 1
    return {"counts": counts, "sum": (histogram or {}).get("sum", 0.0) + value}


def _with_job(doc: dict | None, record: JobRecord) -> dict:
    doc = dict(doc or {})
    failure = (record.failure or Failure.INTERNAL).value
    kind = record.status.value if record.status == JobStatus.COMPLETED else f"FAILED:{failure}"
    doc["jobs"] = {**doc.get("jobs", {}), kind: doc.get("jobs", {}).get(kind, 0) + 1}
    if record.gpu_seconds is not None:
        doc["gpu_seconds"] = doc.get("gpu_seconds", 0.0) + record.gpu_seconds
    if record.cost_usd is not None:
        doc["cost_usd"] = doc.get("cost_usd", 0.0) + record.cost_usd
        day = day_of(record.finished_at or time.time())
        spend = {d: v for d, v in doc.get("spend", {}).items() if d >= day_of(time.time() - SPEND_DAYS * 86400)}
        spend[day] = spend.get(day, 0.0) + record.cost_usd
        doc["spend"] = spend
    if record.inference_time is not None:
        doc["inference"] = _observe(doc.get("inference"), INFERENCE_BUCKETS, record.inference_time)
    if record.batch_size is not None:
        doc["batch"] = _observe(doc.get("batch"), BATCH_BUCKETS, record.batch_size)
    if record.mask_time is not None:
        doc["mask"] = _observe(doc.get("mask"), MASK_BUCKETS, record.mask_time)
    if record.cold_start_time is not None:
        doc["cold_start_jobs"] = doc.get("cold_start_jobs", 0) + 1
    return doc


def count_ended(counters: Counters, record: JobRecord) -> None:
    """Add an ended job (its GPU seconds and cost, when it ran) to the totals: one store call."""
    counters.modify(DOCUMENT, lambda doc: (_with_job(doc, record), None))


def count_refused(counters: Counters, reason: str) -> None:
    """Count a request refused for `reason` ("credits", "spend_cap")."""
    def add(doc):
        doc = dict(doc or {})
        doc["refused"] = {**doc.get("refused", {}), reason: doc.get("refused", {}).get(reason, 0) + 1}
        return doc, None

    counters.modify(DOCUMENT, add)


def read(counters: Counters) -> dict[str, Any]:
    """The totals as stored (empty before the first job): one store call."""
    return counters.modify(DOCUMENT, lambda doc: (None, doc or {}))


def spend_on(totals: dict[str, Any], day: str) -> float:
    """USD the deployment's priced jobs that ended on `day` (UTC, YYYY-MM-DD) cost."""
    return totals.get("spend", {}).get(day, 0.0)


def spend_today(counters: Counters, now: float | None = None) -> float:
    return round(spend_on(read(counters), day_of(time.time() if now is None else now)), 8)


def check_spend_cap(counters: Counters, cap: float | None, now: float | None = None) -> None:
    """429 once the priced jobs that ended this UTC day cost `cap` USD or more (None: no cap). Jobs already
    taken in still run, and their cost counts; jobs without a price (no GPU type, e.g. on CPU) cost nothing
    here, so on CPU the cap never triggers."""
    if cap is None:
        return
    now = time.time() if now is None else now
    spent = spend_on(read(counters), day_of(now))
    if spent >= cap:
        wait = seconds_to_next_day(now)
        raise Throttled(f"the deployment's spend cap of {cap:g} USD per UTC day is reached ({spent:.4f} USD spent "
                        f"today); new jobs are refused until it resets at 00:00 UTC, in {math.ceil(wait)}s",
                        wait, now)
